"""Frozen features, closed-form ridge head: the adapt of `pretrain_frozen_head`.

    theta* = argmin_theta  sum_i m_i (y_i - f(theta)_i)^2 + l2 * ||theta - theta0||^2
           = theta0 + (J^T M J + l2 I)^-1 J^T M (y - f(theta0))        J = d f / d theta  [S, P]

theta are the head leaves (`head_regex`, P numbers flattened), theta0 their pretrained values, f the model's
support scores with every other leaf frozen, m the support mask. The head is shrunk towards the pretrained
head, not towards zero, so an empty support (all m = 0) leaves the model as pretrained. Every model's head here
(an output Dense layer, MF/two-tower's task-side deltas) enters the score affinely, so J is exact and this is
the ridge solution; for a head that entered non-linearly it would be one Levenberg-Marquardt step.

Pretraining (task_grad) is `finetune`'s: the gradient of the task's joint support+query loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.learners.transfer import finetune
from transfer_meta.models.base import Model, Params, adapt_mask


def ridge_fit(score_fn, theta0: jax.Array, target: jax.Array, mask: jax.Array, l2: float) -> jax.Array:
  """The ridge solution for parameters `theta` [P] of an (affine) score function.

  Args:
    score_fn: theta [P] -> scores f32 [S].
    theta0: [P] the prior (pretrained) values the penalty shrinks towards.
    target: f32 [S] what to fit; mask: bool [S] (False entries do not count).
    l2: penalty weight > 0.
  Returns:
    theta* [P] (see the module docstring).
  """
  m = mask.astype(jnp.float32)
  jac = jax.jacfwd(score_fn)(theta0)  # [S, P]
  resid = m * (target - score_fn(theta0))
  gram = jac.T @ (m[:, None] * jac) + l2 * jnp.eye(theta0.shape[0], dtype=jac.dtype)
  return theta0 + jnp.linalg.solve(gram, jac.T @ resid)


def ridge_head(
  model: Model, l2: float = 1.0, head_regex: str | None = None, loss: str = "mse", name: str = "ridge_head"
) -> Learner:
  """Pretrain a global model; per task, fit its head on the support in closed form (ridge, penalty `l2`).

  Args:
    model: the model.
    l2: ridge penalty (> 0) towards the pretrained head.
    head_regex: regex over parameter paths of the head (default `model.head_regex`).
    loss: the pretraining loss ('mse'); the head fit is always least squares.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params.
  """
  if not l2 > 0:
    raise ValueError(f"ridge_head: l2={l2!r} must be > 0 (the normal equations need it)")
  regex = model.head_regex if head_regex is None else head_regex
  base = finetune(model, inner_steps=0, loss=loss, name=name)

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    adapt_mask(model_params, regex)  # a head regex matching nothing fails here
    return model_params

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key
    mask = adapt_mask(meta_params, regex)
    head, frozen = inner.partition(meta_params, mask)
    theta0, unravel = ravel_pytree(head)
    params_of = lambda theta: inner.combine(unravel(theta), frozen, mask)
    score_fn = lambda theta: model.apply(params_of(theta), support, support)
    return params_of(ridge_fit(score_fn, theta0, support["target"], support["mask"], l2))

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    grads, metrics = base.task_grad(meta_params, task, key)
    adapted = adapt(jax.lax.stop_gradient(meta_params), task["support"], key)
    metrics["inner_loss_after"] = inner.support_loss(model, "mse", adapted, task["support"])
    metrics["outer_loss"] = inner.query_loss(model, "mse", adapted, task["query"], task["support"])
    return grads, metrics

  return Learner(name, model, init, adapt, task_grad)
