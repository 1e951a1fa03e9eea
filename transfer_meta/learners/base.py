"""The meta-learner contract: a NamedTuple of pure functions for ONE task (like optax's
GradientTransformation). The trainer is the only place that vmaps over tasks.

    meta_params = learner.init(key, model_params)
    task_params = learner.adapt(meta_params, support, key)        # model params adapted to a task
    grads, metrics = learner.task_grad(meta_params, task, key)    # grads: same tree as meta_params

`support`/`query` are examples pytrees ([S] / [Q], with masks); `task = {"support": ..., "query": ...}`.
`metrics` is a dict of scalars (at least 'outer_loss'). Scoring after adaptation is
`model.apply(task_params, query, support)` — learners expose the model they were built with.
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
  adapt: Callable[..., Any]  # (meta_params, support, key) -> task (model) params
  task_grad: Callable[..., tuple[MetaParams, dict]]  # (meta_params, task, key) -> (grads, metrics)
