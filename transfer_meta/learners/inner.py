"""The inner loop every learner shares: masked SGD on one task, as `jax.grad` (the first step, then the rest
inside `lax.scan`).

Only the ADAPTED leaves (an `adapt_mask` over the model parameters) are differentiated and stepped;
the others pass through unchanged. Splitting the tree (`partition`) rather than masking a full gradient
keeps big frozen leaves — MeLU's embedding tables — out of the inner gradient altogether. Outer
gradients still reach frozen leaves, through the inner loss they feed.

The task losses are also here, so every learner scores a task the same way: the support is always the
context, `model.apply(params, support, support)` for the inner loss and
`model.apply(params, query, support)` for the outer one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from transfer_meta.losses import examples_loss
from transfer_meta.models.base import Model

Params = Any


def check_steps(inner_steps: int) -> int:
  """Validates a learner's `inner_steps` (a static Python int >= 0)."""
  if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
    raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
  return inner_steps


def partition(params: Params, mask: Params) -> tuple[Params, Params]:
  """Splits `params` by a bool `mask` tree into (adapted, frozen); each holds None where the other has a leaf."""
  adapted = jax.tree.map(lambda m, p: p if m else None, mask, params)
  frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
  return adapted, frozen


def combine(adapted: Params, frozen: Params, mask: Params) -> Params:
  """Inverse of `partition`: the full parameter tree."""
  return jax.tree.map(lambda m, a, f: a if m else f, mask, adapted, frozen)


def support_loss(model: Model, loss: str, params: Params, support: dict) -> jax.Array:
  """Inner loss: the support scored with itself as context. Scalar; 0 for an all-padded support."""
  return examples_loss(model.apply, params, support, support, loss)


def query_loss(model: Model, loss: str, params: Params, query: dict, support: dict) -> jax.Array:
  """Outer loss: the query scored with the support as context. Scalar."""
  return examples_loss(model.apply, params, query, support, loss)


def joint_loss(model: Model, loss: str, params: Params, support: dict, query: dict) -> jax.Array:
  """Masked mean over every real interaction of the task (support and query), support as context.

  Equals the mean of the per-interaction losses of the union, so each interaction weighs the same
  whatever the support/query sizes; 0 for a padded task.
  """
  n_s = jnp.sum(support["mask"].astype(jnp.float32))
  n_q = jnp.sum(query["mask"].astype(jnp.float32))
  total = n_s * support_loss(model, loss, params, support) + n_q * query_loss(model, loss, params, query, support)
  return total / jnp.maximum(n_s + n_q, 1.0)


def _is_scalar(lr) -> bool:
  return jax.tree_util.treedef_is_leaf(jax.tree.structure(lr)) and jnp.ndim(lr) == 0


def clip_inner_grads(grads: Params, clip: float) -> Params:
  """`grads` scaled by min(1, clip / global norm): clip / sqrt(max(|g|^2, clip^2)), smooth at g = 0 (no sqrt of
  zero, so second-order gradients stay finite).

  Args:
    grads: a gradient tree.
    clip: the largest global norm (> 0).
  Returns:
    The tree rescaled so its global norm is at most `clip`.
  """
  if not clip > 0:
    raise ValueError(f"inner gradient clip={clip} must be > 0")
  sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
  scale = clip / jnp.sqrt(jnp.maximum(sq, clip**2))
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def inner_sgd(
  loss_fn: Callable[[Params], jax.Array],
  params: Params,
  mask: Params,
  lr,
  steps: int,
  *,
  first_order: bool = False,
  remat: bool = False,
  clip: float = 0.0,
) -> tuple[Params, dict]:
  """`steps` plain SGD steps on the leaves of `params` that `mask` selects.

  Args:
    loss_fn: full parameter tree -> scalar inner loss (e.g. `support_loss` closed over a task).
    params: the starting point (the meta-initialization); differentiable, for second-order MAML.
    mask: tree of Python bools like `params` (`models.base.adapt_mask`): True leaves are stepped.
    lr: a scalar, or a tree like the adapted part of `params` (None at frozen leaves) of per-parameter
      rates (Meta-SGD). Differentiable.
    steps: number of steps, a static int >= 0 (0 returns `params` unchanged).
    first_order: stop the gradient through the inner gradients (FOMAML): d task_params / d params = I.
    remat: wrap each step in `jax.checkpoint`, trading recomputation for memory in second-order unrolls.
    clip: > 0 rescales each step's gradient (over the adapted leaves) to global norm at most `clip`
      (`clip_inner_grads`); 0 (default) leaves it as it is. A guard against inner loops that diverge on a tiny
      support (e.g. one rating at a high inner rate), differentiable for second-order MAML.
  Returns:
    (task params: same tree as `params`, metrics {'inner_loss_before', 'inner_loss_after'}: scalars).
  """
  adapted, frozen = partition(params, mask)
  lr = jax.tree.map(lambda _: lr, adapted) if _is_scalar(lr) else lr
  adapted_loss = lambda a: loss_fn(combine(a, frozen, mask))

  def step(a, _):
    loss, grads = jax.value_and_grad(adapted_loss)(a)
    if clip:
      grads = clip_inner_grads(grads, clip)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda p, g, r: p - r * g, a, grads, lr), loss

  if remat:
    step = jax.checkpoint(step)
  if check_steps(steps):
    # The first step runs outside the scan: under `vmap` over tasks its parameters are still the shared
    # meta-initialisation, so the support's forward and backward matmuls are one GEMM over every task's rows
    # instead of a batched GEMM against the weights broadcast per task (a scan carry is batched from the start).
    adapted, before = step(adapted, None)
  if steps > 1:
    adapted, _ = jax.lax.scan(step, adapted, None, length=steps - 1)
  after = adapted_loss(adapted)
  return combine(adapted, frozen, mask), {"inner_loss_before": before if steps else after, "inner_loss_after": after}
