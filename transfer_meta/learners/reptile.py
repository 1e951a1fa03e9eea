"""Reptile (Nichol et al., 2018): first-order meta-learning without an outer gradient.

    task_params = inner_steps SGD steps from meta_params (adapted leaves only)
    task_grad   = meta_params - phi      (a pseudo-gradient; no differentiation through the loop)

With `optax.sgd(epsilon)` the trainer's update  meta <- meta - epsilon * mean_T(meta - phi)  is
Reptile's interpolation toward the adapted weights, and any optax optimizer works on it too.

Which data the inner loop sees: `adapt` (evaluation, serving) has only the support and steps on
the support loss. `task_grad` computes phi on the whole task — support and query, each interaction
weighted equally (`inner.joint_loss`) — as Reptile trains on all of a task's data; `use_query=False`
computes phi on the support alone. Its 'outer_loss' metric is the query loss after adapting on the
support, the number every learner reports, so with `use_query=True` it costs a second inner loop.
"""

from __future__ import annotations

import jax

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask


def reptile(
  model: Model,
  inner_steps: int = 5,
  inner_lr: float = 0.01,
  adapt_regex: str = ".*",
  use_query: bool = True,
  loss: str = "mse",
  name: str = "reptile",
) -> Learner:
  """Reptile.

  Args:
    model: the model whose parameters are meta-learned.
    inner_steps: SGD steps per task (>= 1 for a non-zero pseudo-gradient).
    inner_lr: inner SGD learning rate.
    adapt_regex: regex over parameter paths adapted (others get a zero pseudo-gradient).
    use_query: phi is trained on support and query (True) or on the support only (False).
    loss: 'mse' or 'bce'.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params and whose task_grad is meta_params - phi.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    adapt_mask(model_params, adapt_regex)
    return model_params

  def sgd(params: Params, loss_fn) -> tuple[Params, dict]:
    return inner.inner_sgd(loss_fn, params, adapt_mask(params, adapt_regex), inner_lr, inner_steps)

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key
    return sgd(meta_params, lambda p: inner.support_loss(model, loss, p, support))[0]

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    del key
    support, query = task["support"], task["query"]
    adapted, metrics = sgd(meta_params, lambda p: inner.support_loss(model, loss, p, support))
    metrics["outer_loss"] = inner.query_loss(model, loss, adapted, query, support)
    if use_query:
      adapted, _ = sgd(meta_params, lambda p: inner.joint_loss(model, loss, p, support, query))
    grads = jax.tree.map(lambda m, p: m - p, meta_params, adapted)
    return jax.lax.stop_gradient((grads, metrics))

  return Learner(name, model, init, adapt, task_grad)
