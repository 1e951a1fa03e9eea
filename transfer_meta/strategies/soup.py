"""Weight averaging of fine-tuned copies that share one pretrained initialisation (a "model soup").

params = {"copies": model params with a leading copy axis [K, ...]}     (`soup_model`: scores with the MEAN of
                                                                        the copies' weights)
stage 1  pretrain   interaction minibatches   loss of the averaged model; the K copies start equal and get
                                              equal updates, so they stay one shared initialisation
stage 2  copies     interaction minibatches   copy k fits its own slice k of each batch (B / K interactions):
                                              K fine-tuned copies that differ only by the data they saw
eval                learner.adapt per task    fine-tune the averaged model's adapt set on the support
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import mse
from transfer_meta.models.base import Model


def average(copies):
  """The mean over the leading copy axis of every leaf: [K, ...] -> [...]."""
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), copies)


def soup_model(model: Model, n_copies: int) -> Model:
  """`model` over {"copies": [K, ...]} params, scoring with their average; adapt/head sets under 'copies/'."""
  if isinstance(n_copies, bool) or not isinstance(n_copies, int) or n_copies < 1:
    raise ValueError(f"soup: n_copies={n_copies!r} must be an int >= 1")

  def init(key, x, context=None):
    one = model.init(key, x, context)
    return {"copies": jax.tree.map(lambda p: jnp.broadcast_to(p, (n_copies, *p.shape)), one)}

  def apply(params, x, context=None):
    return model.apply(average(params["copies"]), x, context)

  under = lambda regex: f"^copies/.*(?:{regex})"
  return Model(f"soup{n_copies}({model.name})", init, apply, under(model.adapt_regex), under(model.head_regex))


def _averaged_objective(model: Model):
  def objective(params, batch, key):
    del key
    return mse(model.apply(average(params["copies"]), batch, None), batch["target"], batch["mask"]), {}

  return objective


def _copies_objective(model: Model, n_copies: int):
  """Mean over copies of copy k's loss on slice k of the batch x[B] (B divisible by K)."""

  def objective(params, batch, key):
    del key
    sliced = jax.tree.map(lambda x: x.reshape(n_copies, x.shape[0] // n_copies, *x.shape[1:]), batch)
    per_copy = jax.vmap(lambda p, x: mse(model.apply(p, x, None), x["target"], x["mask"]))(params["copies"], sliced)
    return jnp.mean(per_copy), {"copy_spread": jnp.max(per_copy) - jnp.min(per_copy)}

  return objective


def soup(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  n_copies: int = 4,
  pretrain_steps: int | None = None,
  copy_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """Shared pretraining, K copies fine-tuned on disjoint slices of the data stream, their weights averaged.

  Args:
    model, config, spec: the experiment's model, config and feature sizes (spec unused).
    n_copies: K copies (must divide `batch_size`).
    pretrain_steps, copy_steps: steps of the two stages (default `config.num_steps` each).
    batch_size, learning_rate: of both stages (interactions per step and seed).
    inner_steps, inner_lr: per-task fine-tuning of the averaged model's adapt set.
  """
  del spec
  both = soup_model(model, n_copies)
  if batch_size % n_copies:
    raise ValueError(f"soup: batch_size={batch_size} must be divisible by n_copies={n_copies}")
  tx = stages.stage_optimizer(config, learning_rate)
  steps = lambda n: int(config.num_steps if n is None else n)
  out = (
    stages.Stage("pretrain", stages.objective_grad(_averaged_objective(model)), "interactions",
                 steps(pretrain_steps), tx, batch_size),
    stages.Stage("copies", stages.objective_grad(_copies_objective(model, n_copies)), "interactions",
                 steps(copy_steps), tx, batch_size),
  )  # fmt: skip
  learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=both.adapt_regex, name="soup")
  return stages.Strategy("soup", out, learner)
