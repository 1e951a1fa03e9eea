"""Meta-training and evaluation of one experiment: `train_and_evaluate(config, workdir) -> results`.

    data -> per seed s: protocol split (seed s) and its padded task sets
         -> for the learner, then each comparison learner:
              every seed trained at once: ONE jitted meta_step vmapped over a leading seed axis of state and
              batch (each seed's batch padded to a common bucket), tasks split over the 'tasks' mesh axis;
              per seed, the meta-params with the best validation metric are kept
            -> the selected meta-params evaluated on 'valid' and every scenario
         -> reference baselines on the same splits
         -> DIR/results.json, metrics.jsonl, config.json, split_manifest.json, checkpoints/, a printed table,
            train.log, curves.png (per learner and seed), scenarios_<metric>.png (beside the baselines).

Exact resume: every bit of state that shapes the future (meta-params, optimiser state, best-so-far params and
metric, data-iterator positions, step) is checkpointed together; per-step randomness is
`fold_in(seed key, step)`; evaluation is deterministic. A rerun of the same command after SIGKILL restores
the latest readable checkpoint, rewinds metrics.jsonl to it and ends with the same results.json (timings
live only under "train").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from transfer_meta import (
  baselines,
  chunking,
  evaluate,
  learner_state,
  plots,
  precision,
  programs,
  ranking_eval,
  runlog,
  sharding,
)
from transfer_meta import learner_reuse as reuse_lib
from transfer_meta import length_groups as length_groups_lib
from transfer_meta import metrics as metrics_lib
from transfer_meta import results as results_lib
from transfer_meta.checkpoint import Checkpointer
from transfer_meta.data import categorical, load_dataset
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
from transfer_meta.data.interactions import Interactions
from transfer_meta.data.protocols import make_protocol
from transfer_meta.data.split import ColdStartSplit
from transfer_meta.data.tasks import DEFAULT_BUCKETS, TaskData, TaskIterator, eval_batches
from transfer_meta.learners import get_learner
from transfer_meta.learners.base import Learner
from transfer_meta.models import get_model, residual
from transfer_meta.models.base import Model
from transfer_meta.step import (  # noqa: F401  (re-exported: tests and tools call train.<name>)
  _masked_task_mean,
  _select,
  init_one,
  jit_meta_step,
  make_init,
  make_optimizer,
  meta_step_fn,
  seed_keys,
  stack_seed_batches,
  unstack,
)

log = logging.getLogger(__name__)

ARRAY_ITEMS = ("meta_params", "best_meta_params", "opt_state")
JSON_ITEMS = ("extra", "config")


def default_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; `configs/*.py` start from this, set fields and lock.

  Components are name + kwargs (`model_name` / `model`, ...). `seeds` is a count n (seeds 0..n-1): seed s
  fixes the protocol split, the initialisation and the data order. `support_cap` > 0 keeps the first K
  support interactions of every task (K-shot ablations). `select_metric` is 'valid/<metric>' and
  `select_mode` 'min' or 'max'. `grad_clip_norm` 0 disables clipping. `chunk_size` > 0 computes the task
  mean chunk by chunk (must divide `batch_size`), -1 chooses (`chunking.auto_chunk_size`: the plain vmap up to
  64 tasks, chunks of about 32 beyond, padded with masked tasks if no such chunk divides); `compute_dtype`
  'bfloat16' computes the model in bf16. `length_groups` G > 0 sorts each batch's tasks by support length into
  G fixed-size groups, each padded only to its own width (multiples of `length_group_step`; `length_groups`).
  `eval_ranking` adds 'catalogue' / 'sampled' ranking of every scenario (`ranking_eval`; `ranking` holds its knobs).
  `plots` False skips the PNGs (e.g. the runs of a sweep that `experiments.ablate` plots itself).
  Training protocol (DESIGN.md): `resample_train` draws a fresh support/query split of every training task
  each pass; `outer_support` adds the support to the outer loss; `residual` ('global_mean', 'item_mean',
  'item_user_offset') makes the model predict the offset from that reference (`models/residual.py`);
  `oov_min_count` >= 2 maps unseen and rare categorical values to a trained OOV row (`data/categorical.py`);
  `ordinal_features` names categorical features also fed as a standardised number (e.g. 'release_year').
  """
  c = ml_collections.ConfigDict()
  c.dataset_name, c.dataset = "synthetic", ml_collections.ConfigDict()
  c.protocol_name, c.protocol = "melu", ml_collections.ConfigDict()
  c.model_name, c.model = "melu", ml_collections.ConfigDict()
  c.learner_name, c.learner = "maml", ml_collections.ConfigDict()
  c.compare_learners = ("none",)
  c.compare_kwargs = ml_collections.ConfigDict()
  c.strategy_name, c.strategy = "", ml_collections.ConfigDict()  # a transfer strategy trained beside ("": none)
  c.baselines = ("random", "constant", "global_mean", "item_mean", "item_user_offset", "popularity")
  # Ranking protocols (`ranking`, `ranking_eval`): 'query' (each task's own query), 'catalogue', 'sampled'.
  c.eval_ranking = ("query",)
  c.ranking = ml_collections.ConfigDict(
    dict(
      metrics=("recall@10", "ndcg_bin@10", "hr@10", "mrr@10", "auc"),
      relevance="",  # '' = the protocol's binary spec, else threshold:4 (threshold:1 on clicks)
      negatives=99,  # N of the sampled protocol (1 relevant + N unrated)
      chunk=1024,  # catalogue entries scored per step (bounds memory)
      beyond_k=10,  # list length of coverage/gini/ild/novelty and of the popularity breakdown
      support_bins=(1, 6, 21),  # breakdown bins by support size: 1-5, 6-20, 21+
      popularity_bins=(0, 1, 11, 101),  # by training rows of the relevant entry: 0, 1-10, 11-100, 101+
    )
  )
  c.optimizer_name, c.optimizer = "adam", ml_collections.ConfigDict({"learning_rate": 1e-3})
  c.grad_clip_norm = 0.0
  c.seeds = 5
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 1000
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.select_metric, c.select_mode = "valid/mae", "min"
  c.support_cap = 0
  c.min_tasks = 20  # warn when a protocol task set has fewer tasks (0: never); the warning says how to fix it
  c.chunk_size = -1  # > 0: tasks per chunk (lax.scan over chunks; bounds memory); 0: plain vmap; -1: automatic
  c.length_groups = 0  # 0: off; G > 0: G support-length groups per meta-step (same result, less padding)
  c.length_group_step = 16  # the groups' width grid (multiples of this, capped at the batch width)
  c.compute_dtype = "float32"  # "bfloat16": model compute in bf16, meta-parameters stay float32
  c.buckets = DEFAULT_BUCKETS
  c.progress = True
  c.plots = True  # curves.png and scenarios_<metric>.png in the workdir (`plots.write_run_plots`)
  c.resample_train = False  # episodic: a fresh support/query split of every training task at each pass
  c.outer_support = False  # the outer loss scores the support too (query = support + query in training)
  c.residual = ""  # '' or a reference: 'global_mean', 'item_mean', 'item_user_offset'
  c.residual_lam = 5.0  # shrinkage of the reference's means and support offset (baselines' lam)
  c.oov_min_count = 0  # 0 off; >= 2: values on fewer training entities (and unseen ones) share a trained OOV row
  c.ordinal_features = ()  # categorical features with numeric vocabularies, also fed as numbers
  return c


# ---------------------------------------------------------------------------------------------------------------
# The experiment: data, splits and task sets of every seed, built once and shared by every learner.


@dataclasses.dataclass(frozen=True)
class SeedTasks:
  """One seed's split and its padded task sets."""

  seed: int
  split: ColdStartSplit
  tasks: dict  # set name ('train', 'valid', scenario) -> TaskData
  prior: np.ndarray | None = None  # f32 [N] the residual reference per row (config.residual), which tasks carry


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  data: Interactions
  feats: FeatureMatrices
  spec: FeatureSpec
  model: Model
  seeds: tuple[SeedTasks, ...]
  mesh: Mesh

  @property
  def eval_sets(self) -> tuple[str, ...]:
    return ("valid", *self.seeds[0].split.scenarios)


def seed_list(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The run's seeds: `config.seeds` is a count n (seeds 0..n-1) or an explicit sequence."""
  seeds = config.seeds
  seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"config.seeds={config.seeds!r}: want a count >= 1 or distinct seeds >= 0")
  return seeds


def _cap(split: ColdStartSplit, k: int) -> ColdStartSplit:
  """The split with every task set's support capped at k (K-shot ablations); k <= 0 keeps all."""
  if k <= 0:
    return split
  return dataclasses.replace(split, tasks={n: ts.cap_support(k) for n, ts in split.tasks.items()})


def seed_split(config: ml_collections.ConfigDict, data: Interactions, seed: int) -> ColdStartSplit:
  """Seed `seed`'s split of `data` as a run of `config` makes it: the protocol, then `config.support_cap`."""
  split = make_protocol(config.protocol_name, data, seed=seed, min_tasks=config.min_tasks, **config.protocol.to_dict())
  return _cap(split, config.support_cap)


def build_experiment(config: ml_collections.ConfigDict, data: Interactions | None = None) -> Experiment:
  """Loads the dataset, makes each seed's split and task sets, builds the model and the mesh."""
  data = load_dataset(config.dataset_name, **config.dataset.to_dict()) if data is None else data
  if config.ordinal_features:
    data = categorical.ordinal_as_dense(data, tuple(config.ordinal_features))
  feats = FeatureMatrices.from_interactions(data)
  spec = FeatureSpec.from_interactions(data)
  spec = categorical.oov_spec(spec) if config.oov_min_count else spec
  model = build_model(config, spec, data)
  buckets = tuple(config.buckets)
  seeds = []
  for s in seed_list(config):
    split = seed_split(config, data, s)
    names = ("train", "valid", *split.scenarios)
    sf = categorical.with_oov(feats, data, split, config.oov_min_count) if config.oov_min_count else feats
    prior = baselines.reference_prior(config.residual, data, split, config.residual_lam) if config.residual else None
    tasks = {n: TaskData.from_split(data, split, n, sf, buckets, prior) for n in names}
    seeds.append(SeedTasks(s, split, tasks, prior))
  mesh = sharding.make_mesh()
  chunk, slots = chunking.resolve_chunk_size(config.chunk_size, config.batch_size, mesh.devices.size)
  if chunk:
    sharding.check_batch_size(chunk, mesh, "config.chunk_size")
  if length_groups_lib.check_length_groups(config.length_groups, config.length_group_step):
    length_groups_lib.group_sizes(slots, config.length_groups, chunk or mesh.devices.size)  # fails early if too many
  sharding.check_batch_size(config.batch_size, mesh, "config.batch_size")
  sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  exp = Experiment(config, data, feats, spec, model, tuple(seeds), mesh)
  _check_metrics(exp)
  ranking_eval.RankingConfig.from_config(config)  # fails early on a bad config.eval_ranking / config.ranking
  return exp


def build_model(config: ml_collections.ConfigDict, spec: FeatureSpec, data: Interactions | None = None) -> Model:
  """The run's model as training, evaluation and serving all use it: the backbone with its keywords (and a
  trainable last text-encoder layer when `config.dataset.text_finetune_last_layer`, which needs `data`), in its
  compute dtype, wrapped as a residual over `config.residual` when set.

  The same object for the same arguments within a process (`programs.reused`: built from exactly the arguments of
  `_model`, which reads nothing else), so the programs built over it are reused by later runs; a text tail holds
  the dataset and reads the encoder's files, so it is built afresh each time."""
  tail = config.dataset.get("text_finetune_last_layer", False)
  text = (data, config.dataset.text_template, config.dataset.get("cache_dir")) if tail else None
  build = _model.__wrapped__ if tail else _model
  return build(
    config.model_name, config.model.to_dict(), spec, text, config.compute_dtype, config.residual, config.residual_lam
  )


@programs.reused
def _model(
  name: str, kwargs: dict, spec: FeatureSpec, text: tuple | None, compute_dtype: str, kind: str, lam: float
) -> Model:
  """`build_model` from its inputs (text: None, or the tail's (data, template, cache_dir))."""
  if kind:
    residual.check_kind(kind)
    # The network predicts the offset from the reference, so its output bias starts at 0; the backbone's
    # rating-scale default (which the config's keyword filling writes into config.model) does not apply.
    kwargs = {**kwargs, "global_bias": 0.0}
  model = get_model(name, spec, **kwargs)
  if text is not None:
    from transfer_meta.text import last_layer

    model = last_layer.with_dataset_tail(model, *text)
  if compute_dtype != "float32":
    model = precision.with_compute_dtype(model, compute_dtype)
  return residual.with_residual(model, kind, lam) if kind else model


def _check_metrics(exp: Experiment) -> None:
  """Fails early on a selection metric the protocol does not report, or cutoffs >= query sizes."""
  split = exp.seeds[0].split
  set_name, _, metric = exp.config.select_metric.partition("/")
  if set_name != "valid" or metric not in split.metrics:
    raise ValueError(
      f"config.select_metric={exp.config.select_metric!r}: want 'valid/<metric>' with <metric> in "
      f"the protocol's metrics {list(split.metrics)}"
    )
  if exp.config.select_mode not in ("min", "max"):
    raise ValueError(f"config.select_mode={exp.config.select_mode!r}: want 'min' or 'max'")
  for st in exp.seeds:
    for name in exp.eval_sets:
      metrics_lib.check_cutoffs(st.split.metrics, st.tasks[name].query_sizes)


# ---------------------------------------------------------------------------------------------------------------
# Training one learner on every seed, with selection and checkpoints.


@dataclasses.dataclass
class Selection:
  """Per seed, the best meta-params so far on the validation metric (host bookkeeping + device params)."""

  params: object  # seed-stacked [N, ...] meta-params
  value: list  # [N] best metric value, None before the first evaluation
  step: list  # [N] step it was reached at
  metric: str  # metric name inside 'valid', e.g. 'mae'
  mode: str  # 'min' or 'max'

  def update(self, values: Sequence[dict], meta_params, step: int) -> None:
    """Takes seed n's `meta_params` where `values[n][metric]` beats its best so far (strictly)."""
    better = lambda v, b: b is None or (v < b if self.mode == "min" else v > b)
    improved = np.array([better(v[self.metric], b) for v, b in zip(values, self.value)])
    for n in np.flatnonzero(improved):
      self.value[n], self.step[n] = float(values[n][self.metric]), step
    if improved.any():
      self.params = _select(self.params, meta_params, jnp.asarray(improved))


@dataclasses.dataclass
class Trained:
  """What training one learner leaves: selected meta-params per seed and bookkeeping."""

  learner: Learner
  selection: Selection
  seconds: float  # training wall time (all processes that worked on it)
  # The validation's `evaluate.make_eval_step(learner, ...)`, reused by `evaluate_trained` (already traced).
  eval_step: Callable | None = None


def _learner_specs(config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
  """[(name, kwargs)] for the learner and each comparison learner, in training order."""
  specs = [(config.learner_name, config.learner.to_dict())]
  kwargs = config.compare_kwargs.to_dict()
  unknown = sorted(set(kwargs) - set(config.compare_learners))
  if unknown:
    raise ValueError(f"config.compare_kwargs names {unknown}, not in config.compare_learners {config.compare_learners}")
  specs += [(name, kwargs.get(name, {})) for name in config.compare_learners]
  names = [n for n, _ in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"learner names must be distinct (learner and compare_learners): {names}")
  return specs


def _check_finite(metrics: dict, step: int, learner: str, ckpt: Checkpointer) -> None:
  """Stops the run on a non-finite loss, gradient or parameter norm, naming step, quantity and seeds."""
  for name, values in metrics.items():
    bad = np.flatnonzero(~np.isfinite(np.asarray(values)))
    if bad.size:
      last = ckpt.latest_step()
      kept = (
        f"the last good checkpoint (step {last}) is kept in {ckpt.directory}"
        if last is not None
        else "no checkpoint had been written yet"
      )
      raise FloatingPointError(
        f"learner {learner!r}: non-finite train/{name} at step {step} (seed positions "
        f"{bad.tolist()}); training stopped; {kept}. Lower the learning rates or clip "
        "gradients (config.grad_clip_norm)."
      )


def _validate(exp: Experiment, eval_step: Callable, meta_params, valid: list, eval_keys: jax.Array) -> list[dict]:
  """Every seed's meta-params on its 'valid' batches: [{metric: float}] per seed."""
  return [
    evaluate.evaluate_tasks(eval_step, unstack(meta_params, n), valid[n], eval_keys[n], exp.mesh)
    for n in range(len(exp.seeds))
  ]


# Process-level reuse (`programs.reused`): a later run whose builders get equal arguments (the model from
# `build_model`, the optimiser from `make_optimizer`, both reused too) gets the same objects, so the same jitted
# functions, already traced and lowered. The smoke config's second run in a process: see `programs.reused`.
_learner = programs.reused(lambda name, model, kwargs: get_learner(name, model, **kwargs))
_make_init = programs.reused(make_init)
_eval_learner = programs.reused(learner_state.eval_learner)
_eval_step = programs.reused(lambda *args: evaluate.make_eval_step(*args))  # looked up per miss
_step_parts = programs.reused(length_groups_lib.step_parts)
_jit_meta_step = programs.reused(jit_meta_step)


def train_learner(exp: Experiment, name: str, kwargs: dict, workdir: str, mlog: runlog.MetricsLog) -> Trained:
  """Trains learner `name` on every seed of `exp` (resuming from its checkpoints), selecting on valid.

  Returns:
    `Trained` with the selected seed-stacked meta-params.
  """
  config, mesh = exp.config, exp.mesh
  learner = _learner(name, exp.model, kwargs)
  tx = make_optimizer(config)
  seeds = [st.seed for st in exp.seeds]
  train_keys, eval_keys = seed_keys(seeds)
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": unstack(first["support"], 0), "query": unstack(first["query"], 0)}
  abstract_state, init = _make_init(learner, tx, example, mesh)
  abstract = abstract_state(train_keys)
  chunk, slots = chunking.resolve_chunk_size(config.chunk_size, config.batch_size, mesh.devices.size)
  iterators = [
    TaskIterator(
      st.tasks["train"],
      config.batch_size,
      st.seed,
      drop_remainder=config.batch_size <= len(st.tasks["train"]),
      resample=config.resample_train,
      outer_support=config.outer_support,
      slots=slots,
    )
    for st in exp.seeds
  ]
  valid = [list(eval_batches(st.tasks["valid"], config.eval_batch_size)) for st in exp.seeds]
  # A stateful learner is evaluated, selected and checkpointed as the bundle of its meta-params and state.
  view, evaluated = learner_state.params_view, _eval_learner(learner)
  eval_step = _eval_step(evaluated, tuple(exp.seeds[0].split.metrics), _relevance(exp), mesh)
  metric = config.select_metric.split("/", 1)[1]

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), ARRAY_ITEMS, JSON_ITEMS, keep=config.keep_checkpoints)
  items = {"meta_params": view(abstract), "best_meta_params": view(abstract)}
  restored = ckpt.restore_latest({**items, "opt_state": abstract["opt_state"]}, ("extra",))
  if restored is None:
    start, seconds = 0, 0.0
    state = init(train_keys)
    # A separate copy: the state's buffers are donated to the step.
    best = Selection(view(init(train_keys)), [None] * len(seeds), [0] * len(seeds), metric, config.select_mode)
  else:
    start, items = restored
    extra = items["extra"]
    if extra["learner"] != name or extra["seeds"] != seeds:
      raise ValueError(
        f"checkpoint {ckpt.directory} holds learner {extra['learner']!r} seeds {extra['seeds']}, "
        f"not {name!r} {seeds}: use a fresh workdir"
      )
    step0 = jax.device_put(np.int32(start), sharding.replicated(mesh))  # host value: multi-process safe
    stateful = learner_state.is_stateful(learner)
    state = {**learner_state.from_view(items["meta_params"], stateful), "opt_state": items["opt_state"], "step": step0}
    best = Selection(items["best_meta_params"], extra["best_value"], extra["best_step"], metric, config.select_mode)
    seconds = float(extra["seconds"])
    for it, s in zip(iterators, extra["iterators"]):
      it.restore(s)
    log.info("%s: resumed from step %d", name, start)
  mlog.rewind(name, start)

  raw_step, build, bypassed = _step_parts(
    learner, tx, chunk, mesh.devices.size, slots, config.length_groups, config.length_group_step
  )
  if bypassed:
    log.warning("%s: config.length_groups=%d not applied (ungrouped step): %s", name, config.length_groups, bypassed)
  meta_step = _jit_meta_step(raw_step, mesh)
  bar = tqdm(
    total=config.num_steps, initial=start, desc=name, unit="step", disable=not (config.progress and runlog.is_writer())
  )
  show, postfix = ("train/outer_loss", "train/grad_norm", config.select_metric), {}
  next_batch = lambda: sharding.shard_batch(build([next(it) for it in iterators]), mesh, 1)
  t0 = time.time()
  batch = next_batch() if start < config.num_steps else None
  for step in range(start, config.num_steps):
    state, metrics = meta_step(state, batch, train_keys)  # dispatched asynchronously
    # Prefetch: the next batch is built on the host while the step runs. Checkpoints keep the iterator
    # positions of the batch not yet consumed, so a resumed run draws exactly the batches this one would.
    positions = [it.state() for it in iterators]
    batch = next_batch() if step + 1 < config.num_steps else None
    metrics = jax.device_get(metrics)
    done, last = step + 1, step + 1 == config.num_steps
    _check_finite(metrics, done, name, ckpt)
    record, per_seed = {"learner": name, "step": done}, {}
    if done % config.log_every == 0 or last:
      record.update({f"train/{k}": float(np.mean(v)) for k, v in metrics.items()})
      per_seed.update({f"train/{k}": np.asarray(v, float).tolist() for k, v in metrics.items()})
    if done % config.eval_every == 0 or last:
      values = _validate(exp, eval_step, view(state), valid, eval_keys)
      best.update(values, view(state), done)
      record.update({f"valid/{k}": float(np.mean([v[k] for v in values])) for k in values[0]})
      per_seed.update({f"valid/{k}": [float(v[k]) for v in values] for k in values[0]})
    if per_seed:
      record["per_seed"] = per_seed  # seed order: results.json's "seeds"
      mlog.write(record)
      postfix.update({k.removeprefix("train/"): f"{v:.4f}" for k, v in record.items() if k in show})
      bar.set_postfix(postfix, refresh=False)
    bar.update(1)
    if done % config.checkpoint_every == 0 or last:
      extra = {
        "learner": name,
        "step": done,
        "seeds": seeds,
        "iterators": positions,
        "best_value": best.value,
        "best_step": best.step,
        "seconds": seconds + time.time() - t0,
      }
      arrays = {"meta_params": view(state), "best_meta_params": best.params, "opt_state": state["opt_state"]}
      ckpt.save(done, arrays, {"extra": extra, "config": json.loads(config.to_json())})
  bar.close()
  ckpt.close()
  return Trained(evaluated, best, seconds + time.time() - t0, eval_step)


def _relevance(exp: Experiment) -> str | None:
  return exp.seeds[0].split.params.get("relevance")


def evaluate_trained(exp: Experiment, trained: Trained) -> list[dict]:
  """Selected meta-params of every seed on 'valid' and every scenario: [{set: {metric: float}}] per seed."""
  _, eval_keys = seed_keys([st.seed for st in exp.seeds])
  eval_step = trained.eval_step or evaluate.make_eval_step(
    trained.learner, exp.seeds[0].split.metrics, _relevance(exp), exp.mesh
  )
  out = []
  for n, st in enumerate(exp.seeds):
    params = unstack(trained.selection.params, n)
    batches = {name: eval_batches(st.tasks[name], exp.config.eval_batch_size) for name in exp.eval_sets}
    out.append(
      {name: evaluate.evaluate_tasks(eval_step, params, b, eval_keys[n], exp.mesh) for name, b in batches.items()}
    )
  params_of = lambda n: unstack(trained.selection.params, n)  # noqa: E731
  return ranking_eval.rank_seeds(exp, out, ranking_eval.rank_learner(exp, trained.learner, params_of, eval_keys))


# ---------------------------------------------------------------------------------------------------------------
# The entry point.


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  data: Interactions | None = None,
  reuse_from: Sequence[str] | None = None,
) -> dict:
  """Trains the learner and its comparisons on every seed, evaluates them and the baselines, writes the run.

  Args:
    config: an experiment config (`configs/*.py`).
    workdir: output directory; rerunning into the same one resumes from its checkpoints.
    data: optional preloaded `Interactions` (else `load_dataset(config.dataset_name, **config.dataset)`).
    reuse_from: None, or workdirs of other runs whose identically trained learners are copied instead of trained
      again (`learner_reuse`; the results are the same bit for bit); a sequence, even empty, also records this
      run's learner keys so that later runs can reuse its learners.
  Returns:
    The results dict written to `workdir/results.json` (see DESIGN.md). The workdir also gets `train.log`
    (every log record and warning of the run, appended) and the plots of `plots.write_run_plots`.
  """
  os.makedirs(workdir, exist_ok=True)
  with runlog.log_file(os.path.join(workdir, "train.log")):
    return _train_and_evaluate(config, workdir, data, reuse_from)


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, data: Interactions | None, reuse_from: Sequence[str] | None
) -> dict:
  exp = build_experiment(config, data)
  results_lib.write_run_files(exp, workdir)
  log.info("%s; %s", exp.data.summary(), {n: ts.stats() for n, ts in exp.seeds[0].split.tasks.items()})
  specs = _learner_specs(config)
  order = [n for n, _ in specs] + ([config.strategy_name] if config.strategy_name else [])
  mlog = runlog.MetricsLog(os.path.join(workdir, "metrics.jsonl"), order)
  trained, evaluated = {}, {}
  reuse = reuse_lib.Reuse(exp, workdir, reuse_from, mlog)  # does nothing when reuse_from is None
  for name, kwargs in specs:
    reuse.take(name, kwargs)  # a finished identical learner of another run: train_learner restores its last step
    trained[name] = train_learner(exp, name, kwargs, workdir, mlog)
    reuse.record(name, kwargs)
    copied = reuse.evaluation(name)  # the donor's evaluation of the same learner (then nothing is traced again)
    evaluated[name] = copied if copied is not None else evaluate_trained(exp, trained[name])
    reuse.record_evaluation(name, kwargs, evaluated[name])
  if config.strategy_name:  # transfer strategies (stages) run after the learners, as one more table row
    from transfer_meta import strategies  # noqa: PLC0415 (strategies build on this module)

    strategy_run = strategies.run(exp, workdir, mlog)
    trained[config.strategy_name], evaluated[config.strategy_name] = strategy_run.trained, strategy_run.evaluated
  mlog.canonicalize()
  base = results_lib.run_baselines(exp)
  comparisons = {n: evaluated[n] for n in order[1:]}
  stages_run = {config.strategy_name: strategy_run.info["stages"]} if config.strategy_name else None
  results = results_lib.build_results(exp, evaluated[config.learner_name], comparisons, base, trained, stages_run)
  results["train"].update(reuse.results_entry())
  if config.strategy_name:
    results["strategy"] = strategy_run.info
    results["train"]["stage_seconds"] = strategy_run.seconds
  runlog.atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
  table = results_lib.results_table(results)
  runlog.atomic_write(os.path.join(workdir, "results.md"), table)
  if runlog.is_writer() and config.plots:
    log.info("plots: %s", plots.write_run_plots(workdir, results, config.select_metric))
  if runlog.is_writer():
    print(
      f"\n{config.dataset_name} / {results['protocol']} v{results['protocol_version']}, {len(exp.seeds)} seeds, "
      f"mean ± std over seeds (selected on {config.select_metric}):\n{table}"
    )
  return results
