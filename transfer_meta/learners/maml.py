"""MAML (Finn et al., 2017) and its variants as keywords: FOMAML, ANIL, MeLU.

    meta_params = model params (the meta-initialization)
    task_params = inner_steps SGD steps on the support loss, adapted leaves only
    task_grad   = d query_loss(task_params) / d meta_params   (through the inner loop)

Variants differ only in keywords: `first_order=True` (FOMAML) stops the gradient through the inner
gradients; ANIL adapts `model.head_regex` only; MeLU (Lee et al., KDD'19) adapts `model.adapt_regex`,
the decision layers, and keeps embeddings fixed in the inner loop.
"""

from __future__ import annotations

import jax

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask


def maml(
  model: Model,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  first_order: bool = False,
  adapt_regex: str = ".*",
  loss: str = "mse",
  remat: bool = False,
  inner_clip: float = 0.0,
  name: str = "maml",
) -> Learner:
  """Model-agnostic meta-learning, second order unless `first_order`.

  Args:
    model: the model whose parameters are meta-learned.
    inner_steps: SGD steps on the support per task (0: plain training on the query loss).
    inner_lr: inner SGD learning rate.
    first_order: drop second-order terms (FOMAML).
    adapt_regex: regex over parameter paths adapted in the inner loop; other leaves pass through.
    loss: 'mse' (ratings) or 'bce' (clicks), inner and outer.
    remat: `jax.checkpoint` each inner step (memory for second-order unrolls).
    inner_clip: > 0 clips each inner step's gradient to this global norm (`inner.clip_inner_grads`); 0 off.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)
  if inner_clip < 0:
    raise ValueError(f"inner_clip={inner_clip} must be >= 0 (0: no clipping)")

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    adapt_mask(model_params, adapt_regex)  # a regex that matches nothing fails here, not mid-training
    return model_params

  def inner_loop(params: Params, support: dict) -> tuple[Params, dict]:
    loss_fn = lambda p: inner.support_loss(model, loss, p, support)
    return inner.inner_sgd(
      loss_fn,
      params,
      adapt_mask(params, adapt_regex),
      inner_lr,
      inner_steps,
      first_order=first_order,
      remat=remat,
      clip=inner_clip,
    )

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key  # models are deterministic; kept for the contract
    return inner_loop(meta_params, support)[0]

  def task_loss(meta_params: Params, task: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """The outer (query) loss after the inner loop, and the task's metrics; `task_grad` is its gradient."""
    del key
    task_params, metrics = inner_loop(meta_params, task["support"])
    outer_loss = inner.query_loss(model, loss, task_params, task["query"], task["support"])
    return outer_loss, {**metrics, "outer_loss": outer_loss}

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta_params, task, key)
    return grads, metrics

  return Learner(name, model, init, adapt, task_grad, task_loss=task_loss)


def fomaml(model: Model, **kw) -> Learner:
  """First-order MAML: `maml(first_order=True)`."""
  return maml(model, **{"first_order": True, "name": "fomaml", **kw})


def anil(model: Model, **kw) -> Learner:
  """ANIL (Raghu et al., 2020): only the output head (`model.head_regex`) is adapted."""
  return maml(model, **{"adapt_regex": model.head_regex, "name": "anil", **kw})


def melu(model: Model, **kw) -> Learner:
  """MeLU's local update: the model's default adapt set (`model.adapt_regex`), embeddings fixed."""
  return maml(model, **{"adapt_regex": model.adapt_regex, "name": "melu", **kw})
