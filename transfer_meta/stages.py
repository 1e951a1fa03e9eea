"""Stages: training phases that are not (only) a per-task meta-step, run generically for every strategy.

    strategy = Strategy(name, stages=(stage, stage, ...), learner)     # transfer_meta/strategies/<name>.py
    stage    = Stage(name, grad_fn, stream, steps, tx, batch_size, trainable)
    grad_fn(params, batch, key) -> (grads, metrics)                    # ONE seed; from an objective or task_grad
    trained, info = run_strategy(exp, strategy, workdir, mlog)        # -> train.evaluate_trained, the same tables

A stage is an objective's gradient (`objective_grad(loss(params, batch, key) -> (loss, metrics))`) or the
meta-step's (`meta_stage`: `step.task_batch_grad_fn`, the trainer's one vmap of `task_grad` over tasks), a data
stream (`STREAMS`: 'interactions' minibatches of every training interaction, 'sampled_pairs', 'labelled_interactions'
or 'tasks' batches; each with the seed's OOV-remapped features and residual prior, as its task sets; cross-domain
splits add 'source_interactions' and 'source_tasks', with the seed's features but no prior), an optimiser and
a trainable regex: leaves whose path does not match are frozen INSIDE the optimiser (`freeze`: optax
`multi_transform` with `set_to_zero`), never copied. Its output params feed the next stage; the last stage's are
what `strategy.learner.adapt` adapts per task at evaluation, selected (best so far on `config.select_metric`) every
`config.eval_every` steps of the last stage like a learner's meta-params; an optional closed-form `strategy.fit` on
the validation tasks (fusion weights) then maps the selected params of each seed.

Every stage runs the same way as the meta-step: every seed at once (state [N, ...], batch [N, B, ...]), jitted by
`step.jit_meta_step` (batch axis 1 split over the 'tasks' mesh axis, state replicated and donated), per-step keys
`fold_in(fold_in(train key of seed n, stage index), step)`, an Orbax checkpoint directory per stage
(DIR/checkpoints/<strategy>/<k>_<stage>/) holding params, best params, optimiser state, data-iterator states and
selection bookkeeping, so a SIGKILLed run resumes mid-stage bit-identically; a finished stage is not rerun, its
output params are restored from its last checkpoint. metrics.jsonl records carry 'learner' (the strategy),
'stage' and a step counted across stages. Its programs (initialiser, optimiser init, stage steps, eval step) are
built once per value of what they close over (`programs.cached`), so a later run of an equal strategy in the same
process (a sweep, a clean and a poisoned run) traces nothing again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import optax

from transfer_meta import baselines, evaluate, programs, runlog, sharding, step, xla_options
from transfer_meta import train as train_lib
from transfer_meta.checkpoint import Checkpointer
from transfer_meta.data.labels import aux_labels
from transfer_meta.data.streams import InteractionIterator, SampledPairIterator
from transfer_meta.data.tasks import PRIOR, TaskData, TaskIterator, eval_batches
from transfer_meta.learners.base import Learner
from transfer_meta.losses import examples_loss, get_loss
from transfer_meta.models.base import Model, adapt_mask

log = logging.getLogger(__name__)


class Stage(NamedTuple):
  name: str
  grad_fn: Callable  # (params, batch, key) -> (grads like params, {name: scalar}) for ONE seed
  stream: str  # a key of STREAMS
  steps: int  # optimiser steps (>= 1)
  tx: optax.GradientTransformation  # before freezing
  batch_size: int  # interactions or tasks per step and seed
  trainable: str = ".*"  # regex over parameter paths; the other leaves are frozen


class Strategy(NamedTuple):
  name: str
  stages: tuple[Stage, ...]
  learner: Learner  # initialises the params (learner.init) and adapts the last stage's per task at evaluation
  describe: Callable | None = None  # (one seed's final params) -> dict for results.json (e.g. parameter counts)
  fit: Callable | None = None  # (one seed's selected params, its valid batches, eval key) -> params: closed-form fits
  report: Callable | None = None  # (exp, SeedTasks, one seed's selected params) -> {set: {metric: float}} (extra heads)


def objective_grad(objective: Callable) -> Callable:
  """grad_fn of a pure objective `(params, batch, key) -> (loss, metrics)`; metrics gain 'loss'."""

  def grad_fn(params, batch, key):
    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, key)
    return grads, {"loss": loss, **metrics}

  return grad_fn


def supervised_objective(model: Model, loss: str = "mse") -> Callable:
  """Masked mean loss of an interaction minibatch x[B], scored without context: `(params, x, key) -> (loss, {})`."""
  get_loss(loss)

  def objective(params, batch, key):
    del key
    return examples_loss(model.apply, params, batch, None, loss), {}

  return objective


def meta_stage(
  name: str, learner: Learner, steps: int, tx: optax.GradientTransformation, batch_size: int, trainable: str = ".*"
) -> Stage:
  """The meta-step as a stage: task batches, the masked mean of `learner.task_grad` over tasks."""
  return Stage(name, step.task_batch_grad_fn(learner), "tasks", steps, tx, batch_size, trainable)


def stage_optimizer(
  config: ml_collections.ConfigDict, learning_rate: float | None = None
) -> optax.GradientTransformation:
  """The experiment's optimiser (`step.make_optimizer`: name, kwargs, clipping), its learning rate replaced
  when `learning_rate` is given."""
  if learning_rate is None:
    return step.make_optimizer(config)
  c = ml_collections.ConfigDict(
    {
      "optimizer_name": config.optimizer_name,
      "optimizer": {**config.optimizer.to_dict(), "learning_rate": float(learning_rate)},
      "grad_clip_norm": config.grad_clip_norm,
    }
  )
  return step.make_optimizer(c)


def freeze(tx: optax.GradientTransformation, params, trainable: str) -> optax.GradientTransformation:
  """`tx` on the leaves whose path matches `trainable` (re.search), zero updates on the others.

  Args:
    tx: the optimiser of the trainable leaves.
    params: a parameter tree (arrays or ShapeDtypeStructs) giving the paths.
    trainable: regex; '.*' returns `tx` itself. A regex matching nothing raises ValueError listing the paths.
  """
  mask = adapt_mask(params, trainable)
  if all(jax.tree.leaves(mask)):
    return tx
  labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _task_stream(exp, st, batch_size: int):
  tasks, c = st.tasks["train"], exp.config  # the training protocol's episodic resampling, as the meta-step's
  drop = batch_size <= len(tasks)
  return TaskIterator(tasks, batch_size, st.seed, drop, resample=c.resample_train, outer_support=c.outer_support)


def _interaction_stream(exp, st, batch_size: int, extra: dict | None = None):
  # The seed's own feature matrices and reference prior, exactly those of its task sets (OOV remap, residual).
  prior = {} if st.prior is None else {PRIOR: st.prior}
  feats = st.tasks["train"].feats
  return InteractionIterator.from_split(exp.data, st.split, feats, batch_size, st.seed, {**prior, **(extra or {})})


def _source_interaction_stream(exp, st, batch_size: int):
  return InteractionIterator.from_source(exp.data, st.split, st.tasks["train"].feats, batch_size, st.seed)


def _source_task_stream(exp, st, batch_size: int):
  from transfer_meta.data.cross_domain import SOURCE_SET, require_cross_domain  # noqa: PLC0415

  split = require_cross_domain(st.split, "the source-tasks stream")
  tasks = TaskData.from_split(exp.data, split, SOURCE_SET, st.tasks["train"].feats, tuple(exp.config.buckets))
  return TaskIterator(tasks, batch_size, st.seed, drop_remainder=batch_size <= len(tasks))


def _pair_stream(exp, st, batch_size: int):
  sampled_prior = None
  if st.prior is not None:  # a sampled pair is no training row: it gets the reference of an unseen row
    ref = baselines.entity_prior(exp.config.residual, exp.data, st.split, exp.config.residual_lam)
    by_item = st.split.task_kind == "user"  # the reference is per query-side entity
    sampled_prior = lambda users, items: ref[items if by_item else users]  # noqa: E731
  return SampledPairIterator(_interaction_stream(exp, st, batch_size), st.seed, sampled_prior=sampled_prior)


def _labelled_stream(exp, st, batch_size: int):
  return _interaction_stream(exp, st, batch_size, aux_labels(exp.data, st.split))


def _domain(kind: str):
  """A cross-domain method stream (`data.domain_streams.<kind>_stream`) as a STREAMS maker."""
  from transfer_meta.data import domain_streams  # noqa: PLC0415 (domain_streams imports cross_domain, which imports split)

  fn = getattr(domain_streams, f"{kind}_stream")
  return lambda exp, st, batch_size: fn(exp.data, st.split, exp.feats, batch_size, st.seed)


def _stack(batches: list[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


# name -> (make(exp, seed_tasks, batch_size) -> resumable iterator, stack(per-seed batches) -> [N, ...] batch).
# Every stream carries the seed's OOV-remapped features and, with config.residual, the reference 'prior'.
STREAMS = {
  "tasks": (_task_stream, step.stack_seed_batches),  # task batches (support/query), the meta-step's
  "interactions": (_interaction_stream, _stack),  # minibatches of every training interaction x[B]
  "sampled_pairs": (_pair_stream, _stack),  # {"observed": x[B], "sampled": x[B]}: + an unrated item per pair
  "labelled_interactions": (_labelled_stream, _stack),  # x[B] + `data.labels.aux_labels` keys ('click', 'week')
  # Cross-domain splits only (`data.cross_domain`): the source domain's rows / user tasks.
  "source_interactions": (_source_interaction_stream, _stack),  # minibatches of every source row x[B]
  "source_tasks": (_source_task_stream, step.stack_seed_batches),  # task batches of split.tasks['source']
  "domain_pairs": (_domain("paired"), _stack),  # {"source": x[B], "target": x[B], "step": int32 [B]}
  "overlap_users": (_domain("overlap"), _stack),  # one target training row per overlapping training user
  "overlap_target": (_domain("overlap_target"), _stack),  # the target training rows of those users
}


def check_strategy(strategy: Strategy) -> None:
  """Refuses an empty strategy, duplicate stage names, unknown streams and step counts < 1, naming them."""
  names = [s.name for s in strategy.stages]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"strategy {strategy.name!r}: want >= 1 stages with distinct names, got {names}")
  for s in strategy.stages:
    if s.stream not in STREAMS:
      raise ValueError(f"stage {s.name!r}: unknown stream {s.stream!r}; valid streams: {sorted(STREAMS)}")
    if isinstance(s.steps, bool) or not isinstance(s.steps, int) or s.steps < 1:
      raise ValueError(f"stage {s.name!r}: steps={s.steps!r} must be an int >= 1")


def stage_info(strategy: Strategy) -> list[dict]:
  """What results.json records of the stages run (no timings: they live under 'train')."""
  return [
    {"name": s.name, "stream": s.stream, "steps": s.steps, "batch_size": s.batch_size, "trainable": s.trainable}
    for s in strategy.stages
  ]


def _host_copy(tree, mesh):
  """A fresh replicated copy (the state's buffers are donated to the step)."""
  return jax.device_put(jax.device_get(tree), sharding.replicated(mesh))


def run_strategy(exp, strategy: Strategy, workdir: str, mlog: runlog.MetricsLog) -> tuple[train_lib.Trained, dict]:
  """Runs every stage of `strategy` on every seed of `exp` (resuming from checkpoints), selecting on valid.

  Args:
    exp: a `train.Experiment`.
    strategy: the stages and the evaluation learner.
    workdir: the run directory (checkpoints under checkpoints/<strategy>/).
    mlog: the run's metrics log.
  Returns:
    (`train.Trained` whose selection holds the selected last-stage params of every seed, {stage name: seconds}).
  """
  check_strategy(strategy)
  config, mesh = exp.config, exp.mesh
  rep = sharding.replicated(mesh)
  seeds = [st.seed for st in exp.seeds]
  train_keys, eval_keys = step.seed_keys(seeds)
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": step.unstack(first["support"], 0), "query": step.unstack(first["query"], 0)}
  learner = strategy.learner
  # Each program once per value of its closures (`programs.cached`): a later run of an equal strategy (a sweep, a
  # clean and a poisoned run) reuses the traced programs, bit for bit those a fresh build would trace.
  abstract_state, init = programs.cached(
    "init",
    (learner, example, mesh, xla_options.rare_options()),  # make_init's compile options, read when it is built
    lambda: step.make_init(learner, optax.identity(), example, mesh),
  )
  abstract_params = abstract_state(train_keys)["meta_params"]
  one_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract_params)
  valid = [list(eval_batches(st.tasks["valid"], config.eval_batch_size)) for st in exp.seeds]
  names, relevance = tuple(exp.seeds[0].split.metrics), train_lib._relevance(exp)
  eval_step = programs.cached(
    "eval", (learner, names, relevance, mesh), lambda: evaluate.make_eval_step(learner, names, relevance, mesh)
  )
  metric = config.select_metric.split("/", 1)[1]
  params, best, seconds, offset = None, None, {}, 0
  for k, stage in enumerate(strategy.stages):
    last_stage = k == len(strategy.stages) - 1
    tx = freeze(stage.tx, one_params, stage.trainable)
    opt_init = programs.cached("opt_init", (tx, mesh), lambda tx=tx: jax.jit(jax.vmap(tx.init), out_shardings=rep))
    abstract_opt = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), jax.eval_shape(opt_init, abstract_params)
    )
    where = os.path.join(workdir, "checkpoints", strategy.name, f"{k}_{stage.name}")
    ckpt = Checkpointer(where, train_lib.ARRAY_ITEMS, train_lib.JSON_ITEMS, keep=config.keep_checkpoints)
    items = {"meta_params": abstract_params, "best_meta_params": abstract_params, "opt_state": abstract_opt}
    restored = ckpt.restore_latest(items, ("extra",))
    make, stack = STREAMS[stage.stream]
    iterators = [make(exp, st, stage.batch_size) for st in exp.seeds]
    if restored is None:
      start, spent = 0, 0.0
      params = init(train_keys)["meta_params"] if params is None else params
      state = {"meta_params": params, "opt_state": opt_init(params), "step": jax.device_put(np.int32(0), rep)}
      if last_stage:
        best = train_lib.Selection(
          _host_copy(params, mesh), [None] * len(seeds), [0] * len(seeds), metric, config.select_mode
        )
    else:
      start, got = restored
      extra = got["extra"]
      if extra["learner"] != strategy.name or extra["stage"] != stage.name or extra["seeds"] != seeds:
        raise ValueError(
          f"checkpoint {ckpt.directory} holds {extra['learner']!r}/{extra['stage']!r} seeds {extra['seeds']}, "
          f"not {strategy.name!r}/{stage.name!r} {seeds}: use a fresh workdir"
        )
      state = {
        "meta_params": got["meta_params"],
        "opt_state": got["opt_state"],
        "step": jax.device_put(np.int32(start), rep),
      }
      if last_stage:
        best = train_lib.Selection(
          got["best_meta_params"], extra["best_value"], extra["best_step"], metric, config.select_mode
        )
      spent = float(extra["seconds"])
      for it, s in zip(iterators, extra["iterators"]):
        it.restore(s)
      log.info("%s/%s: resumed from stage step %d", strategy.name, stage.name, start)
    if start < stage.steps:
      mlog.rewind(strategy.name, offset + start)
    stage_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_keys, k)
    jstep = programs.cached(
      "stage", (stage.grad_fn, tx, mesh), lambda g=stage.grad_fn, tx=tx: step.jit_meta_step(step.step_fn(g, tx), mesh)
    )
    t0 = time.time()
    for s in range(start, stage.steps):
      batch = sharding.shard_batch(stack([next(it) for it in iterators]), mesh, 1)
      state, metrics = jstep(state, batch, stage_keys)
      metrics = jax.device_get(metrics)
      done, glob = s + 1, offset + s + 1
      end = done == stage.steps
      train_lib._check_finite(metrics, glob, f"{strategy.name}/{stage.name}", ckpt)
      record = {"learner": strategy.name, "stage": stage.name, "step": glob}
      if done % config.log_every == 0 or end:
        record.update({f"train/{n}": float(np.mean(v)) for n, v in metrics.items()})
      if last_stage and (done % config.eval_every == 0 or end):
        values = train_lib._validate(exp, eval_step, state["meta_params"], valid, eval_keys)
        best.update(values, state["meta_params"], glob)
        record.update({f"valid/{n}": float(np.mean([v[n] for v in values])) for n in values[0]})
      if len(record) > 3:
        mlog.write(record)
      if done % config.checkpoint_every == 0 or end:
        extra = {
          "learner": strategy.name,
          "stage": stage.name,
          "step": done,
          "seeds": seeds,
          "iterators": [it.state() for it in iterators],
          "best_value": best.value if last_stage else [],
          "best_step": best.step if last_stage else [],
          "seconds": spent + time.time() - t0,
        }
        kept = best.params if last_stage else state["meta_params"]
        arrays = {"meta_params": state["meta_params"], "best_meta_params": kept, "opt_state": state["opt_state"]}
        ckpt.save(done, arrays, {"extra": extra, "config": json.loads(config.to_json())})
    ckpt.close()
    seconds[stage.name] = round(spent + time.time() - t0, 3)
    params, offset = state["meta_params"], offset + stage.steps
  if strategy.fit is not None:  # deterministic in the selected params, so recomputed (not checkpointed) on resume
    t0 = time.time()
    fitted = [strategy.fit(step.unstack(best.params, n), valid[n], eval_keys[n]) for n in range(len(seeds))]
    best.params = _host_copy(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(fitted)), mesh)
    seconds["fit"] = round(time.time() - t0, 3)
  return train_lib.Trained(strategy.learner, best, sum(seconds.values()), eval_step), seconds
