"""Multi-task learning: one network, three heads, trained on every training interaction; the rating head is
adapted per task and scored by the rating tables.

    net      shared-bottom or MMoE over the shared feature encoders (`models.multitask`), heads:
               rating  regression of the rating (residual over config.residual's reference when set)    mse
               click   rating >= 4 (`data.labels.click_label`)                                         bce
               week    rated within 7 days of the user's first known rating (`data.labels`)            bce
    stage 1  multitask   labelled interaction minibatches   sum over heads of loss_weights[head] * loss_head
    eval                 learner.adapt per task             fine-tune the rating head's adapt set on the support

A single-task counterpart is the same strategy with one non-zero weight (e.g. `loss_weights={'click': 1,
'rating': 0, 'week': 0}`): the same backbone, stream, steps and selection. `report` scores every head on every
evaluation set (no per-task adaptation, the support as context for the residual's user offset):
'rating/mae', 'rating/rmse', and per binary head '<head>/auc' (pooled over the set's query rows, ties 1/2),
'<head>/logloss' and '<head>/positive_rate' (the label's base rate); results.json "strategy" "heads".
Selection (valid MAE of the adapted rating head) is the same for every weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.data.labels import aux_labels
from transfer_meta.data.tasks import TaskData, eval_batches
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import bce, mse
from transfer_meta.models import residual
from transfer_meta.models.base import Model
from transfer_meta.models.multitask import head_model, multitask_net

HEADS = {"rating": "mse", "click": "bce", "week": "bce"}  # head -> loss; the labels of 'click'/'week': aux_labels


def check_weights(loss_weights: dict | None) -> dict[str, float]:
  """{head: weight} for every head of `HEADS` (missing heads weigh 1); unknown heads, negative weights or all
  zero raise ValueError."""
  given = dict(loss_weights or {})
  unknown = sorted(set(given) - set(HEADS))
  if unknown:
    raise ValueError(f"multitask: loss_weights names unknown heads {unknown}; valid heads: {list(HEADS)}")
  weights = {h: float(given.get(h, 1.0)) for h in HEADS}
  if any(not np.isfinite(w) or w < 0 for w in weights.values()) or not any(weights.values()):
    raise ValueError(f"multitask: loss_weights={weights} must be finite, >= 0 and not all 0")
  return weights


def multitask_objective(apply_heads, rating_apply, weights: dict[str, float]):
  """`(params, x[B] with 'click' and 'week' labels, key) -> (weighted loss, {'<head>_loss'})`: every head's masked
  loss (rating: MSE of `rating_apply`, the residual-wrapped rating head; others: BCE on their logits)."""

  def objective(params, x, key):
    del key
    scores = apply_heads(params, x, None)
    losses = {"rating": mse(rating_apply(params, x, None), x["target"], x["mask"])}
    losses.update({h: bce(scores[h], x[h], x["mask"]) for h in HEADS if h != "rating"})
    total = sum(weights[h] * losses[h] for h in HEADS)
    return total, {f"{h}_loss": v for h, v in losses.items()}

  return objective


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x` [M] (float64), tied values sharing the average of their ranks; all NaN when `x` holds a
  NaN: what `scipy.stats.rankdata(x)` returns (the same integer formula, so the same bits), without importing
  scipy.stats, which cost ~0.75 CPU-s in every process that imports the strategies (each training launch)."""
  x = np.asarray(x, np.float64)
  if np.isnan(x).any():
    return np.full(x.shape, np.nan)
  order = np.argsort(x)
  ordered = x[order]
  first = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each group of equal values, in sorted order
  dense = np.empty(x.shape, np.intp)
  dense[order] = np.cumsum(first)  # each value's group, 1-based
  count = np.r_[np.flatnonzero(first), x.size]  # where each group starts, then M
  return 0.5 * (count[dense] + count[dense - 1] + 1)


def pooled_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC of `scores` [M] for binary `labels` [M] over every (positive, negative) pair, a tie counting 1/2
  (Mann-Whitney with average ranks); NaN when a class is absent."""
  labels = np.asarray(labels) > 0.5
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    return float("nan")
  ranks = average_ranks(scores)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean binary cross-entropy of `logits` [M] against `labels` [M] in {0, 1} (numerically stable)."""
  z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  return float(np.mean(np.logaddexp(0.0, z) - y * z))


def head_metrics(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """Every head's metrics from pooled query rows: scores/labels {head: [M]} -> {'<head>/<metric>': float}."""
  err = scores["rating"] - labels["rating"]
  out = {"rating/mae": float(np.mean(np.abs(err))), "rating/rmse": float(np.sqrt(np.mean(err**2)))}
  for h in HEADS:
    if h != "rating":
      out[f"{h}/auc"] = pooled_auc(scores[h], labels[h])
      out[f"{h}/logloss"] = logloss(scores[h], labels[h])
      out[f"{h}/positive_rate"] = float(np.mean(labels[h]))
  return out


def multitask(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  arch: str = "shared_bottom",
  n_experts: int = 4,
  emb_dim: int = 32,
  hidden: Sequence[int] = (64,),
  tower: Sequence[int] = (32,),
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
  loss_weights: dict | None = None,
  steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  adapt_regex: str | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  rating_bias: float | None = None,
) -> stages.Strategy:
  """A shared-bottom or MMoE network trained on the weighted sum of the heads' losses, its rating head fine-tuned
  per task.

  Args:
    model: the experiment's model (unused: the network is built here, on the same feature encoders).
    config: the experiment config (optimiser, `num_steps`, `residual`, `model.use_*_ids` defaults).
    spec: the dataset's feature sizes.
    arch: 'shared_bottom' or 'mmoe'; n_experts: K experts of MMoE (one softmax gate per head).
    emb_dim, hidden, tower: embedding width, bottom / expert widths, per-head tower widths.
    use_user_ids, use_item_ids: id embeddings (default: the experiment model's `config.model` switches).
    loss_weights: {head: weight} over 'rating', 'click', 'week' (missing: 1).
    steps, batch_size, learning_rate: the stage (default `config.num_steps`, the config optimiser's rate).
    adapt_regex: leaves fine-tuned per task (default the rating head's adapt set, `models.multitask.adapt_regex`).
    inner_steps, inner_lr: per-task fine-tuning SGD of the rating head (MSE on the support).
    rating_bias: the rating head's initial bias (default 0 with config.residual, else 3.5).
  """
  del model
  if config.compute_dtype != "float32":
    raise ValueError(f"multitask computes in float32; got config.compute_dtype={config.compute_dtype!r}")
  weights = check_weights(loss_weights)
  ids = lambda flag, key: bool(config.model.get(key, False)) if flag is None else bool(flag)  # noqa: E731
  bias = (0.0 if config.residual else 3.5) if rating_bias is None else float(rating_bias)
  init, apply_heads = multitask_net(
    spec, {"rating": bias, "click": 0.0, "week": 0.0}, arch, emb_dim, hidden, n_experts, tower,
    ids(use_user_ids, "use_user_ids"), ids(use_item_ids, "use_item_ids"),
  )  # fmt: skip
  rating = head_model(init, apply_heads, arch, "rating")
  if config.residual:
    rating = residual.with_residual(rating, config.residual, config.residual_lam)
  objective = multitask_objective(apply_heads, rating.apply, weights)
  stage = stages.Stage(
    "multitask", stages.objective_grad(objective), "labelled_interactions",
    int(config.num_steps if steps is None else steps), stages.stage_optimizer(config, learning_rate), int(batch_size),
  )  # fmt: skip
  regex = rating.adapt_regex if adapt_regex is None else adapt_regex
  learner = finetune(rating, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=regex, name="multitask")

  def all_heads(params, query, support):
    return {**apply_heads(params, query, support), "rating": rating.apply(params, query, support)}

  score = jax.jit(jax.vmap(all_heads, in_axes=(None, 0, 0)))

  def report(exp, st, params) -> dict:
    """{set: {'<head>/<metric>': float}} of one seed's selected params on every evaluation set."""
    labels = aux_labels(exp.data, st.split)
    out = {}
    for name in exp.eval_sets:
      tasks = st.tasks[name]
      aux = {h: TaskData.build(exp.data, st.split.tasks[name], labels[h], tasks.feats, tasks.buckets) for h in labels}
      got, want = {h: [] for h in HEADS}, {h: [] for h in HEADS}
      size = exp.config.eval_batch_size
      for batch, *aux_batches in zip(eval_batches(tasks, size), *(eval_batches(a, size) for a in aux.values())):
        scores = jax.device_get(score(params, batch["query"], batch["support"]))
        real = np.asarray(batch["query"]["mask"]) & np.asarray(batch["task_mask"])[:, None]
        for h in HEADS:
          got[h].append(np.asarray(scores[h])[real])
        want["rating"].append(np.asarray(batch["query"]["target"])[real])
        for h, b in zip(aux, aux_batches):
          same = np.array_equal(b["task_id"], batch["task_id"]) and np.array_equal(
            b["query"]["mask"], batch["query"]["mask"]
          )
          if not same:
            raise AssertionError(f"multitask report: {h} labels misaligned with the {name!r} task batches")
          want[h].append(np.asarray(b["query"]["target"])[real])
      out[name] = head_metrics(*({h: np.concatenate(v) for h, v in d.items()} for d in (got, want)))
    return out

  def describe(params) -> dict:
    return {"arch": arch, "loss_weights": weights, "params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}

  return stages.Strategy("multitask", (stage,), learner, describe, report=report)


__all__ = ["HEADS", "check_weights", "head_metrics", "logloss", "multitask", "multitask_objective", "pooled_auc"]
