"""Transfer-learning baselines behind the meta-learner interface, so tables hold them side by side.

All three pretrain ONE global model the same way: task_grad is the plain gradient of the task's loss
on support and query together (`inner.joint_loss`: the query scored with the support as context), so
the optimizer sees every training interaction once per task. They differ only in `adapt`:

  none       identity: the global model scores new users as they are.
  finetune   inner_steps SGD steps on the support over ALL parameters (default budget = MAML's).
  head_only  inner_steps SGD steps on the output head (`model.head_regex`) only: frozen features.

Metrics match the meta-learners' ('outer_loss' is the query loss after `adapt`, the inner losses are
on the support before/after), plus 'pretrain_loss', the objective actually minimized. The adapted
parameters are computed without gradient, so they cost forward/backward passes but no second order.
"""

from __future__ import annotations

import jax

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask


def finetune(
  model: Model,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  adapt_regex: str = ".*",
  loss: str = "mse",
  name: str = "finetune",
) -> Learner:
  """Pretrain a global model, then fine-tune the `adapt_regex` leaves on each task's support.

  Args:
    model: the model to pretrain.
    inner_steps: fine-tuning SGD steps on the support (0: no adaptation).
    inner_lr: fine-tuning learning rate.
    adapt_regex: regex over parameter paths fine-tuned (default all).
    loss: 'mse' or 'bce'.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    if inner_steps:
      adapt_mask(model_params, adapt_regex)
    return model_params

  def inner_loop(params: Params, support: dict) -> tuple[Params, dict]:
    loss_fn = lambda p: inner.support_loss(model, loss, p, support)
    if not inner_steps:  # no adapt set needed: `none` works with any regex
      before = loss_fn(params)
      return params, {"inner_loss_before": before, "inner_loss_after": before}
    return inner.inner_sgd(loss_fn, params, adapt_mask(params, adapt_regex), inner_lr, inner_steps)

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key
    return inner_loop(meta_params, support)[0]

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    del key
    support, query = task["support"], task["query"]
    pretrain_loss, grads = jax.value_and_grad(lambda p: inner.joint_loss(model, loss, p, support, query))(meta_params)
    adapted, metrics = inner_loop(jax.lax.stop_gradient(meta_params), support)
    metrics["outer_loss"] = inner.query_loss(model, loss, adapted, query, support)
    return grads, {**metrics, "pretrain_loss": pretrain_loss}

  return Learner(name, model, init, adapt, task_grad)


def none(model: Model, loss: str = "mse", name: str = "none") -> Learner:
  """One global model, no per-task adaptation."""
  return finetune(model, inner_steps=0, loss=loss, name=name)


def head_only(model: Model, **kw) -> Learner:
  """Pretrain, then fit only the output head (`model.head_regex`) on each task's support."""
  return finetune(model, **{"adapt_regex": model.head_regex, "name": "head_only", **kw})
