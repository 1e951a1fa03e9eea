"""The meta-learner contract: a NamedTuple of pure functions for ONE task (like optax's
GradientTransformation). The trainer is the only place that vmaps over tasks.

    meta_params = learner.init(key, model_params)
    task_params = learner.adapt(meta_params, support, key)        # model params adapted to a task
    grads, metrics = learner.task_grad(meta_params, task, key)    # grads: same tree as meta_params

`support`/`query` are examples pytrees ([S] / [Q], with masks); `task = {"support": ..., "query": ...}`.
`metrics` is a dict of scalars (at least 'outer_loss'). Scoring after adaptation is
`model.apply(task_params, query, support)` — learners expose the model they were built with.

Optional fields (DESIGN.md "Learners with state or set-level losses"; `transfer_meta.learner_state` runs them):

    state = learner.init_state(key, meta_params)                          # non-differentiable (MAMO's memories)
    outputs = learner.task_outputs(meta_params, task, key[, state])       # per task, differentiable
    loss, metrics = learner.batch_loss(meta_params, outputs [T, ...], task_mask [T])   # couples the tasks
    state = learner.update_state(state, meta_params, outputs [T, ...], task_mask [T])  # after each outer step

A learner with `init_state` takes the state as a trailing argument everywhere:
`adapt(meta_params, support, key, state)`, `task_grad(meta_params, task, key, state)`,
`task_outputs(meta_params, task, key, state)`. A learner that sets none of them is the plain contract above,
and the trainer runs it exactly as before.

    loss, metrics = learner.task_loss(meta_params, task, key)   # optional: task_grad == grad(task_loss)

`task_loss` (None unless the learner's gradient IS the gradient of a per-task scalar, as for MAML and its
variants) lets the length-grouped step take the gradient of a chunk's masked loss sum at once
(`chunking.task_grad_sums(task_loss=...)`): the sum over tasks then happens inside the backward matmuls and
scatters instead of on materialised per-task gradients (`transfer_meta.length_groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from transfer_meta.models.base import Model

MetaParams = Any


class Learner(NamedTuple):
  name: str
  model: Model
  init: Callable[..., MetaParams]  # (key, model_params) -> meta_params
  adapt: Callable[..., Any]  # (meta_params, support, key[, state]) -> task (model) params
  task_grad: Callable[..., tuple[MetaParams, dict]]  # (meta_params, task, key[, state]) -> (grads, metrics)
  init_state: Callable[..., Any] | None = None  # (key, meta_params) -> state (None: a stateless learner)
  update_state: Callable[..., Any] | None = None  # (state, meta_params, outputs [T], task_mask [T]) -> state
  task_outputs: Callable[..., Any] | None = None  # (meta_params, task, key[, state]) -> per-task outputs pytree
  batch_loss: Callable[..., tuple[Any, dict]] | None = None  # (meta_params, outputs [T], mask [T]) -> (loss, metrics)
  task_loss: Callable[..., tuple[Any, dict]] | None = None  # (meta_params, task, key) -> (loss, metrics), see above


def has_extensions(learner: Learner) -> bool:
  """True when the learner uses any optional field (state, per-task outputs or a batch-level loss)."""
  fields = (learner.init_state, learner.update_state, learner.task_outputs, learner.batch_loss)
  return any(f is not None for f in fields)


def check_extensions(learner: Learner) -> None:
  """Raises ValueError on an inconsistent combination of the optional fields."""
  if learner.update_state is not None and learner.init_state is None:
    raise ValueError(f"learner {learner.name!r}: update_state needs init_state")
  needs_outputs = learner.batch_loss is not None or learner.update_state is not None
  if needs_outputs and learner.task_outputs is None:
    raise ValueError(f"learner {learner.name!r}: batch_loss / update_state read task_outputs, which is None")
