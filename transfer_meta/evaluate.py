"""Evaluation: adapt the meta-parameters to every task of a set, score its query, reduce to metrics.

    eval_step = make_eval_step(learner, split.metrics, split.params.get("relevance"), mesh)
    metrics = evaluate_tasks(eval_step, meta_params, task_data, batch_size=64, key=key)  # {name: mean}
    table = summarize([metrics_seed0, metrics_seed1, ...])  # {scenario: {metric: {mean, std, per_seed}}}

Per task: `task_params = learner.adapt(meta_params, support, key)`, then
`scores = model.apply(task_params, query, support)` and `metrics.evaluate_task` on the query. The
tasks of a batch are vmapped (the evaluation's one vmap over tasks) and split over the 'tasks' mesh axis;
padded tasks are dropped by `metrics.aggregate` through the task mask. Task randomness is
`fold_in(key, task_id)`, so a task's result does not depend on which batch it lands in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from transfer_meta import dispatch, sharding
from transfer_meta import metrics as metrics_lib
from transfer_meta.learners.base import Learner


def score_task(learner: Learner, meta_params, support: dict, query: dict, key: jax.Array) -> jax.Array:
  """Adapts to one task's support and scores its query. support x[S], query x[Q] -> f32 [Q]."""
  task_params = learner.adapt(meta_params, support, key)
  return learner.model.apply(task_params, query, support)


def make_eval_step(
  learner: Learner, metric_names: Sequence[str], relevance: str | None, mesh: Mesh | None = None
) -> Callable:
  """A jitted `(meta_params, batch, key) -> {metric: f32 [T]}` over one task batch.

  Args:
    learner: adapts and scores (its model).
    metric_names: metric names (`metrics.parse_metric`), static.
    relevance: relevance spec for binary metrics ('threshold:4', 'top:5') or None.
    mesh: when given, tasks are split over its 'tasks' axis and parameters replicated.
  Returns:
    eval_step(meta_params, batch, key) with batch = {"support": x[T, S], "query": x[T, Q],
    "task_mask": bool[T], "task_id": int32[T]}; per-task metrics f32 [T] (padded tasks included).
  """
  names = tuple(metric_names)
  # e.g. the text tail's catalogue table (text.catalogue_tail): computed outside the jitted step, once per
  # meta-parameters (an evaluation passes the same ones for every batch), and read by it as a parameter.
  share = (learner.model.aux or {}).get("share_params")
  shared: list = []  # [(meta_params, their shared form)] of the last call

  def one_task(meta_params, support, query, key):
    scores = score_task(learner, meta_params, support, query, key)
    return metrics_lib.evaluate_task(names, scores, query["target"], query["mask"], relevance)

  def eval_step(meta_params, batch, key):
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(batch["task_id"])
    return jax.vmap(one_task, in_axes=(None, 0, 0, 0))(meta_params, batch["support"], batch["query"], keys)

  if mesh is None:
    jitted = jax.jit(eval_step)
  else:
    rep = sharding.replicated(mesh)
    jitted = jax.jit(eval_step, in_shardings=(rep, sharding.task_sharding(mesh, 0), rep), out_shardings=rep)
    jitted = dispatch.bounded(jitted, mesh)  # several CPU devices: at most 8 calls in flight (transfer_meta.dispatch)

  def ordered(meta_params, batch, key):  # jit returns dicts with sorted keys; keep the declared metric order
    if share is not None:
      if not shared or shared[0][0] is not meta_params:
        shared[:] = [(meta_params, share(learner, meta_params, batch["support"], key))]
      meta_params = shared[0][1]
    out = jitted(meta_params, batch, key)
    return {name: out[name] for name in names}

  return ordered


def evaluate_tasks(eval_step: Callable, meta_params, batches, key: jax.Array, mesh: Mesh | None = None) -> dict:
  """Mean metrics over every real task of a task set.

  Args:
    eval_step: from `make_eval_step`.
    meta_params: the (unstacked) meta-parameters to adapt.
    batches: iterable of task batches covering the set once (`data.tasks.eval_batches`).
    key: evaluation key (per-task keys are folded from it by task id).
    mesh: place batches on this mesh (tasks split) before the call.
  Returns:
    {metric: float} means over real tasks (`metrics.aggregate`).
  """
  per_task, masks = [], []
  for batch in batches:
    placed = sharding.shard_batch(batch, mesh, 0) if mesh is not None else batch
    out = eval_step(meta_params, placed, key)
    per_task.append({name: jax.device_get(v) for name, v in out.items()})  # per leaf: a pytree would sort keys
    masks.append(np.asarray(batch["task_mask"], bool))
  if not per_task:
    raise ValueError("evaluate_tasks got no batches (empty task set)")
  stacked = {name: np.concatenate([p[name] for p in per_task]) for name in per_task[0]}
  return metrics_lib.aggregate(stacked, np.concatenate(masks))


def summarize(per_seed: Sequence[dict]) -> dict:
  """Per-seed results -> mean, std and the per-seed values.

  Args:
    per_seed: one `{scenario: {metric: float}}` per seed, same keys in each.
  Returns:
    {scenario: {metric: {"mean": float, "std": float, "per_seed": [float, ...]}}}; std is the population
    standard deviation over seeds (numpy's default, ddof=0), 0 for one seed.
  """
  if not per_seed:
    raise ValueError("summarize needs at least one seed")
  out = {}
  for scenario in per_seed[0]:
    out[scenario] = {}
    for metric in per_seed[0][scenario]:
      values = [float(r[scenario][metric]) for r in per_seed]
      out[scenario][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": values}
  return out


def seed_mean(per_seed_values: dict) -> dict:
  """{name: [N] per-seed values} -> {name: float mean over seeds} (for logging)."""
  return {k: float(np.mean(v)) for k, v in per_seed_values.items()}
