"""Meta-SGD (Li et al., 2017): MAML whose inner learning rates are per-parameter and meta-learned.

    meta_params = {"params": model params, "inner_lr": rates like the adapted leaves (None elsewhere)}
    task_params = inner_steps steps  p <- p - inner_lr * grad  on the support (elementwise rates)
    task_grad   = d query_loss(task_params) / d meta_params, rates included

The rates are unconstrained, as in the paper: the outer loop may flip a sign or switch a leaf off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask


def meta_sgd(
  model: Model,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  first_order: bool = False,
  adapt_regex: str = ".*",
  loss: str = "mse",
  remat: bool = False,
  name: str = "meta_sgd",
) -> Learner:
  """Meta-SGD.

  Args:
    model: the model whose parameters are meta-learned.
    inner_steps: SGD steps on the support per task.
    inner_lr: initial value of every per-parameter rate.
    first_order: stop gradients through the inner gradients (the rates still learn: d/d lr = -grad).
    adapt_regex: regex over parameter paths adapted in the inner loop (and given rates).
    loss: 'mse' or 'bce'.
    remat: `jax.checkpoint` each inner step.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are {'params': model params, 'inner_lr': per-parameter rates}.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)

  def init(key: jax.Array, model_params: Params) -> dict:
    del key
    adapted, _ = inner.partition(model_params, adapt_mask(model_params, adapt_regex))
    return {"params": model_params, "inner_lr": jax.tree.map(lambda p: jnp.full_like(p, inner_lr), adapted)}

  def inner_loop(meta_params: dict, support: dict) -> tuple[Params, dict]:
    params = meta_params["params"]
    loss_fn = lambda p: inner.support_loss(model, loss, p, support)
    return inner.inner_sgd(
      loss_fn,
      params,
      adapt_mask(params, adapt_regex),
      meta_params["inner_lr"],
      inner_steps,
      first_order=first_order,
      remat=remat,
    )

  def adapt(meta_params: dict, support: dict, key: jax.Array) -> Params:
    del key
    return inner_loop(meta_params, support)[0]

  def task_grad(meta_params: dict, task: dict, key: jax.Array) -> tuple[dict, dict]:
    del key

    def outer(meta):
      task_params, metrics = inner_loop(meta, task["support"])
      outer_loss = inner.query_loss(model, loss, task_params, task["query"], task["support"])
      return outer_loss, {**metrics, "outer_loss": outer_loss}

    (_, metrics), grads = jax.value_and_grad(outer, has_aux=True)(meta_params)
    return grads, metrics

  return Learner(name, model, init, adapt, task_grad)
