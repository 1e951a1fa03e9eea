"""Per-task evaluation metrics over one task's query set, masked, jit- and vmap-able.

Every per-task function takes `scores` f32 [Q] (model predictions), `target` f32 [Q] (true ratings or
0/1 clicks) and `mask` bool [Q] (False marks padding) and returns a scalar. Padding never changes a value.
The evaluator vmaps `evaluate_task` over tasks and reduces with `aggregate` (mean over real tasks).

Metric names (what protocols declare in `ColdStartSplit.metrics`):
  mae, rmse           error per task over its masked items (RMSE is the root of the task's mean squared
                      error), then the mean over tasks; not pooled over all interactions.
  ndcg@k              graded gain 2^r - 1 (MeLU); the ideal DCG sorts the true ratings.
  ndcg_bin@k, precision@k, recall@k, hr@k, mrr@k
                      binary relevance (below). precision = hits / k, recall = hits / #relevant,
                      hr = 1 if any relevant item is in the top k, mrr = 1 / rank of the first relevant item
                      (0 past k), ndcg_bin = DCG / ideal DCG with gain 1 per relevant item.
  auc                 binary relevance, over (relevant, non-relevant) pairs; a score tie counts 1/2.
  <name>:index        the peer-compatible variant (RecBole-MetaRec ranks with `torch.topk`): every tie,
                      in predictions and in relevance, is broken by item index (lower index first, as a
                      stable sort). A constant predictor then ranks the query in index order.

Binary relevance comes from a spec string (a protocol's `params["relevance"]`):
  "threshold:4"  relevant iff target >= 4.
  "top:5"        the 5 highest-rated masked items; every item tied with the 5th-highest rating is relevant
                 too, so relevance is a function of the ratings alone. With ":index" exactly 5 items are
                 relevant, ties taken in index order (the peer's rule). Fewer than 5 masked items: all are.

Prediction ties (default, without ":index"): every metric is the EXACT expectation over uniformly random
tie-breaking, not a sample. For item i let g_i = #masked items with a strictly higher score and m_i = #masked
items with an equal score (itself included); i sits at positions g_i .. g_i + m_i - 1 with equal probability.
DCG, precision and recall are linear in the per-item position indicators, so they use the expected
discount/indicator. HR and MRR depend on the first relevant item only: it lies in the highest tie group that
holds a relevant item (start g, size m, r relevant); its offset j inside the group has probability
prod_{i<j} (m-r-i)/(m-i) * r/(m-j). A constant predictor therefore scores exactly the random-ranking value.

Undefined cases: a task with no relevant item scores 0 on every ranking metric (graded nDCG: all gains 0) and is
counted in the mean. AUC is NaN when a task's query is all one class; `aggregate` skips those tasks and reports
how many it averaged as '<name>/tasks'. A cutoff k must be below the query size (otherwise a ranking metric
can only be perfect): call `check_cutoffs` on the host; the per-task functions raise at trace time if k >= Q.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

POINTWISE = ("mae", "rmse")
RANKING = ("ndcg", "ndcg_bin", "precision", "recall", "hr", "mrr")
BINARY = ("ndcg_bin", "precision", "recall", "hr", "mrr", "auc")  # need a relevance spec
MAY_BE_UNDEFINED = ("auc",)  # NaN per task allowed; `aggregate` skips and counts
VALID = ("mae", "rmse", "auc", *(f"{b}@k" for b in RANKING))
_NAME = re.compile(r"^(?P<base>[a-z_]+)(@(?P<k>[0-9]+))?(?P<index>:index)?$")


class MetricSpec(NamedTuple):
  name: str  # as given, e.g. 'ndcg@3:index'
  base: str  # 'ndcg'
  k: int | None  # cutoff of ranking metrics
  index: bool  # break ties by item index (peer-compatible)


class Relevance(NamedTuple):
  kind: str  # 'threshold' or 'top'
  value: float  # rating threshold, or n of top-n


def parse_metric(name: str) -> MetricSpec:
  """Parses 'mae', 'ndcg@3', 'precision@5:index', 'auc:index'; unknown names list the valid ones."""
  match = _NAME.match(name)
  base = match["base"] if match else None
  k = int(match["k"]) if match and match["k"] else None
  index = bool(match and match["index"])
  ok = match is not None and (
    (base in RANKING and k is not None and k >= 1)
    or (base == "auc" and k is None)
    or (base in POINTWISE and k is None and not index)
  )
  if not ok:
    raise ValueError(
      f"unknown metric {name!r}; valid metrics: {list(VALID)} (k >= 1), ranking metrics and auc may end in ':index'"
    )
  return MetricSpec(name, base, k, index)


def parse_relevance(spec: str) -> Relevance:
  """Parses a relevance spec: 'threshold:<rating>' or 'top:<n>' (n >= 1)."""
  kind, _, value = str(spec).partition(":")
  try:
    if kind == "threshold":
      return Relevance(kind, float(value))
    if kind == "top" and int(value) >= 1:
      return Relevance(kind, int(value))
  except ValueError:
    pass
  raise ValueError(
    f"bad relevance spec {spec!r}; want 'threshold:<rating>' (e.g. 'threshold:4') or 'top:<n>' (e.g. 'top:5')"
  )


def check_cutoffs(metric_names: Sequence[str], query_sizes) -> None:
  """Refuses cutoffs that are not below every task's query size (host-side, before evaluating).

  Args:
    metric_names: metric names as in `parse_metric`.
    query_sizes: int [T] real (unpadded) query sizes of the tasks to evaluate.
  Raises:
    ValueError naming the metric, its k and the smallest query size; also for an empty query.
  """
  sizes = np.asarray(query_sizes)
  if sizes.size == 0:
    return
  smallest = int(sizes.min())
  if smallest == 0:
    raise ValueError(f"{int((sizes == 0).sum())} task(s) have an empty query set; no metric is defined")
  for name in metric_names:
    spec = parse_metric(name)
    if spec.k is not None and spec.k >= smallest:
      raise ValueError(
        f"metric {name!r}: cutoff k={spec.k} is not below the smallest query size {smallest} "
        "(a ranking metric with k >= query size can only be perfect); lower k or raise the query size"
      )


def _positions(scores: jax.Array, mask: jax.Array, index: bool) -> tuple[jax.Array, jax.Array]:
  """g [Q]: masked items ranked strictly above i; m [Q]: size of i's tie group (1 when ties break by index)."""
  valid = mask[None, :]
  higher = (scores[None, :] > scores[:, None]) & valid  # [i, j]: j strictly above i
  equal = (scores[None, :] == scores[:, None]) & valid
  if index:
    q = jnp.arange(scores.shape[0])
    g = jnp.sum(higher | (equal & (q[None, :] < q[:, None])), axis=1)
    return g, jnp.ones_like(g)
  return jnp.sum(higher, axis=1), jnp.maximum(jnp.sum(equal, axis=1), 1)


def _binary_relevance(target: jax.Array, mask: jax.Array, rel: Relevance, index: bool) -> jax.Array:
  """bool [Q]: relevant masked items (see the module docstring)."""
  if rel.kind == "threshold":
    return mask & (target >= rel.value)
  # top-n: fewer than n masked items rate strictly higher (tie-aware), or rank < n in index order.
  g, _ = _positions(target, mask, index)
  return mask & (g < rel.value)


def binary_relevance(target: jax.Array, mask: jax.Array, rel: Relevance) -> jax.Array:
  """bool [Q]: the masked items relevant under `rel` (tie-aware 'top:n'), for other evaluators (`ranking`)."""
  return _binary_relevance(target, mask, rel, False)


def _discount_prefix(q: int, k: int) -> jax.Array:
  """f32 [Q + 1]: D[p] = sum over positions < p of 1/log2(pos + 2), positions >= k contributing 0."""
  pos = jnp.arange(q)
  disc = jnp.where(pos < k, 1.0 / jnp.log2(pos + 2.0), 0.0)
  return jnp.concatenate([jnp.zeros(1), jnp.cumsum(disc)])


def _expected_dcg(gains: jax.Array, g: jax.Array, m: jax.Array, k: int) -> jax.Array:
  """E[DCG@k]: item i's discount averaged over its positions g_i..g_i+m_i-1. gains 0 where masked."""
  d = _discount_prefix(gains.shape[0], k)
  return jnp.sum(gains * (d[g + m] - d[g]) / m)


def _expected_hits(rel: jax.Array, g: jax.Array, m: jax.Array, k: int) -> jax.Array:
  """E[#relevant in the top k]: P(pos_i < k) = clip(k - g_i, 0, m_i) / m_i."""
  return jnp.sum(jnp.where(rel, jnp.clip(k - g, 0, m) / m, 0.0))


def _first_relevant(rel: jax.Array, mask: jax.Array, g: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Distribution of the first relevant item's position: (prob f32 [Q], position int [Q]); prob 0 if none."""
  q = rel.shape[0]
  start = jnp.min(jnp.where(rel, g, q))
  group = mask & (g == start)
  size = jnp.max(jnp.where(group, m, 1)).astype(jnp.float32)
  n_rel = jnp.sum(rel & group).astype(jnp.float32)
  j = jnp.arange(q, dtype=jnp.float32)
  left = jnp.maximum(size - j, 1.0)
  ratio = jnp.where(j < size, (size - n_rel - j) / left, 0.0)  # P(offset j not relevant | none before)
  none_before = jnp.concatenate([jnp.ones(1), jnp.cumprod(ratio)[:-1]])
  prob = jnp.where(j < size, none_before * n_rel / left, 0.0)
  return prob, start + jnp.arange(q)


def _check_k(spec: MetricSpec, q: int) -> None:
  if spec.k is not None and spec.k >= q:
    raise ValueError(f"metric {spec.name!r}: cutoff k={spec.k} is not below the query length Q={q}")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.sum(mask)  # NaN for an empty query: caught by aggregate


def _metric(spec: MetricSpec, scores, target, mask, ranked: Callable) -> jax.Array:
  """One metric; `ranked(index)` -> (g, m, relevant) is shared by the metrics of one tie mode."""
  if spec.base == "mae":
    return _masked_mean(jnp.abs(scores - target), mask)
  if spec.base == "rmse":
    return jnp.sqrt(_masked_mean(jnp.square(scores - target), mask))
  g, m, relevant = ranked(spec.index)
  if spec.base == "ndcg":
    gains = jnp.where(mask, jnp.exp2(target) - 1.0, 0.0)
    ideal = jnp.sort(jnp.where(mask, gains, -jnp.inf))[::-1]
    idcg = jnp.sum(jnp.where(jnp.isfinite(ideal), ideal, 0.0) * jnp.diff(_discount_prefix(gains.shape[0], spec.k)))
    return jnp.where(idcg > 0, _expected_dcg(gains, g, m, spec.k) / jnp.where(idcg > 0, idcg, 1.0), 0.0)
  n_rel = jnp.sum(relevant).astype(jnp.float32)
  if spec.base == "auc":
    neg = mask & ~relevant
    wins = (scores[:, None] > scores[None, :]).astype(jnp.float32)
    ties = (scores[:, None] == scores[None, :]).astype(jnp.float32)
    if spec.index:
      q = jnp.arange(scores.shape[0])
      wins += ties * (q[:, None] < q[None, :])
    else:
      wins += 0.5 * ties
    pairs = n_rel * jnp.sum(neg)
    total = jnp.sum(jnp.where(relevant[:, None] & neg[None, :], wins, 0.0))
    return jnp.where(pairs > 0, total / jnp.maximum(pairs, 1.0), jnp.nan)
  if spec.base in ("precision", "recall"):
    hits = _expected_hits(relevant, g, m, spec.k)
    return hits / spec.k if spec.base == "precision" else jnp.where(n_rel > 0, hits / jnp.maximum(n_rel, 1.0), 0.0)
  if spec.base == "ndcg_bin":
    d = _discount_prefix(scores.shape[0], spec.k)
    idcg = d[jnp.minimum(n_rel.astype(jnp.int32), spec.k)]
    dcg = _expected_dcg(relevant.astype(jnp.float32), g, m, spec.k)
    return jnp.where(n_rel > 0, dcg / jnp.where(n_rel > 0, idcg, 1.0), 0.0)
  prob, pos = _first_relevant(relevant, mask, g, m)
  inside = jnp.where(pos < spec.k, prob, 0.0)
  return jnp.sum(inside) if spec.base == "hr" else jnp.sum(inside / (pos + 1.0))


def evaluate_task(
  metric_names: Sequence[str], scores: jax.Array, target: jax.Array, mask: jax.Array, relevance_spec: str | None = None
) -> dict[str, jax.Array]:
  """All named metrics of one task's query set.

  Args:
    metric_names: names as in `parse_metric` (static).
    scores: f32 [Q] predictions.
    target: f32 [Q] true ratings (or 0/1 clicks).
    mask: bool [Q]; False marks padding.
    relevance_spec: 'threshold:<r>' or 'top:<n>' (static); required by the binary-relevance metrics.
  Returns:
    {name: f32 scalar}.
  """
  specs = [parse_metric(n) for n in metric_names]
  needs = [s.name for s in specs if s.base in BINARY]
  if needs and relevance_spec is None:
    raise ValueError(f"metrics {needs} need a relevance spec ('threshold:<r>' or 'top:<n>'), got None")
  rel = parse_relevance(relevance_spec) if needs else None
  scores = jnp.asarray(scores, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  mask = jnp.asarray(mask, bool)
  if scores.ndim != 1 or target.shape != scores.shape or mask.shape != scores.shape:
    raise ValueError(
      f"evaluate_task wants scores, target, mask of one shape [Q]; got {scores.shape}, "
      f"{target.shape}, {mask.shape} (vmap over tasks)"
    )
  for s in specs:
    _check_k(s, scores.shape[0])

  @functools.cache
  def ranked(index: bool):
    g, m = _positions(scores, mask, index)
    return g, m, (_binary_relevance(target, mask, rel, index) if rel else None)

  return {s.name: _metric(s, scores, target, mask, ranked) for s in specs}


@functools.lru_cache(maxsize=64)
def _batched(metric_names: tuple[str, ...], relevance_spec: str | None):
  return jax.jit(jax.vmap(lambda s, t, m: evaluate_task(metric_names, s, t, m, relevance_spec)))


def evaluate_batch(
  metric_names: Sequence[str], scores, target, mask, relevance_spec: str | None = None
) -> dict[str, jax.Array]:
  """`evaluate_task` vmapped over tasks and jitted: scores, target, mask [T, Q] -> {name: f32 [T]} (in the
  order of `metric_names`; jit alone would return the keys sorted)."""
  out = _batched(tuple(metric_names), relevance_spec)(scores, target, mask)
  return {name: out[name] for name in metric_names}


def aggregate(per_task: Mapping[str, jax.Array], task_mask) -> dict[str, float]:
  """Mean of each metric over real tasks.

  Args:
    per_task: {name: f32 [T]} from `evaluate_batch` (or stacked `evaluate_task` results).
    task_mask: bool [T]; False marks padded tasks.
  Returns:
    {name: mean over real tasks}. For metrics that may be undefined (AUC) NaN tasks are skipped and
    '<name>/tasks' holds how many tasks the mean is over.
  Raises:
    ValueError if any other metric is NaN on a real task (an empty query or non-finite scores).
  """
  task_mask = np.asarray(task_mask, bool)
  out = {}
  for name, values in per_task.items():
    values = np.asarray(values, np.float64)
    if values.shape != task_mask.shape:
      raise ValueError(f"metric {name!r} has shape {values.shape}, task_mask {task_mask.shape}")
    v = values[task_mask]
    defined = ~np.isnan(v)
    match = _NAME.match(name)
    if match and match["base"] in MAY_BE_UNDEFINED:
      out[name] = float(v[defined].mean()) if defined.any() else float("nan")
      out[f"{name}/tasks"] = float(defined.sum())
    elif not defined.all():
      raise ValueError(
        f"metric {name!r} is NaN on {int((~defined).sum())} of {v.size} real tasks (empty query or non-finite scores)"
      )
    else:
      out[name] = float(v.mean()) if v.size else float("nan")
  return out
