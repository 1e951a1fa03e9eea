"""Where the main job's CPU goes: phase accounting of one run, and the meta-step's CPU per learner.

    python -m experiments.job_cost phases --workdir=/tmp/jc            # the whole `make run` job, phases timed
    python -m experiments.job_cost steps --groups=0:16,2:50,3:50       # CPU per meta-step, ungrouped vs grouped
    PJRT_NPROC=1 python -m experiments.job_cost steps --groups=0:16    # the same on a 1-thread XLA pool
    python -m experiments.job_cost options [--small]                   # init compile: default vs jit_rare level

`phases` runs `train.train_and_evaluate` on configs/melu_ml100k.py (progress off, a compilation cache of its own in
the workdir, so compiles are measured) with the trainer's phases wrapped: user and system CPU-seconds of the
whole process (every thread: XLA's pools included) while each phase ran, its wall time and call count, plus jax's
own compile events (backend compiles, tracing, lowering, persistent-cache hits). Phases nest (the batch builders
run inside `train_learner`), and the host-side batch builders overlap the asynchronously dispatched meta-step, so
their CPU includes XLA's work on the previous step; `steps` and a host-only timing separate them.

`steps` builds the job's experiment, draws `--steps` training batches of its 5 seeds with the trainer's
`TaskIterator`s, and per learner (the config's learner and comparisons) and per `G:width_step` setting of
`config.length_groups` / `length_group_step` (G=0: the trainer's ungrouped step) reports the first call's CPU
(compile) and the CPU-milliseconds per later step. Every line also prints the batch build CPU per step (host).
Each line ends with the CPU per step of each thread family (`/proc/self/task/*/comm`: `tf_XLAEigen` is XLA's
intra-op pool, whose size XLA's CPU client takes from the environment's PJRT_NPROC (else NPROC), default the core
count; `python` the interpreter's threads) and a hash of the final state, so two runs (e.g. PJRT_NPROC=1 and
unset) can be checked for bit-identical results. CPU-seconds are inflated by the machine's load (printed), so
compare lines of one run only.

`options` compiles the job's per-seed initialiser (`step.init_one`) with XLA's default options and with
`xla_options.RARE_PROGRAM`, alternating `--repeats` times, and prints each compile's CPU and whether the initial
states of every seed are bit-identical to the default level's (the check behind `step.make_init`'s level,
`transfer_meta/xla_options.py`); `--small` does the same for a small MeLU on synthetic data.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from experiments import bench_common


def cpu_times() -> tuple[float, float]:
  """(user, system) CPU-seconds of this process so far, all threads."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime


@dataclasses.dataclass
class Phase:
  user: float = 0.0
  sys: float = 0.0
  wall: float = 0.0
  calls: int = 0


class PhaseTimer:
  """Accumulates CPU and wall time of wrapped functions by label."""

  def __init__(self):
    self.phases: dict[str, Phase] = collections.defaultdict(Phase)

  def wrap(self, fn: Callable, label: str) -> Callable:
    """`fn` with its calls timed under `label` (return values and exceptions pass through)."""

    def timed(*args, **kwargs):
      (u0, s0), t0 = cpu_times(), time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        (u1, s1), p = cpu_times(), self.phases[label]
        p.user, p.sys, p.wall, p.calls = (
          p.user + u1 - u0,
          p.sys + s1 - s0,
          p.wall + time.perf_counter() - t0,
          p.calls + 1,
        )

    return timed

  def patch(self, owner, name: str, label: str | None = None) -> None:
    """Replaces attribute `name` of `owner` (a module or class) by its timed version."""
    setattr(owner, name, self.wrap(getattr(owner, name), label or f"{getattr(owner, '__name__', owner)}.{name}"))

  def lines(self) -> list[str]:
    rows = sorted(self.phases.items(), key=lambda kv: -(kv[1].user + kv[1].sys))
    return [f"{k:40s} calls {p.calls:5d}  user {p.user:7.1f}  sys {p.sys:6.1f}  wall {p.wall:7.1f}" for k, p in rows]


def thread_cpu() -> dict[str, float]:
  """CPU-seconds (user + system) per thread family of this process: {thread name (comm): seconds, summed}."""
  tick, out = os.sysconf("SC_CLK_TCK"), collections.Counter()
  for task in glob.glob(f"/proc/{os.getpid()}/task/*"):
    try:
      with open(os.path.join(task, "comm")) as f:
        comm = f.read().strip()
      with open(os.path.join(task, "stat")) as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the parenthesised name: state, ppid, ...
    except OSError:  # the thread ended between the listing and the read
      continue
    out[comm] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of proc(5))
  return dict(out)


def thread_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
  """Per thread family, CPU-seconds spent between two `thread_cpu` readings (families that spent none left out;
  threads that ended in between are not counted)."""
  out = {k: v - before.get(k, 0.0) for k, v in after.items()}
  return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def tree_hash(tree) -> str:
  """A short hash of a pytree's leaves' bytes (bit-identity of two runs' states)."""
  import jax

  leaves = [np.ascontiguousarray(np.asarray(x)) for x in jax.tree.leaves(jax.device_get(tree))]
  return hashlib.sha1(b"".join(x.tobytes() for x in leaves)).hexdigest()[:12]


def job_config(overrides: dict | None = None):
  """configs/melu_ml100k.py as `make run` uses it, progress off, with dotted-key `overrides`."""
  sys.path.insert(0, bench_common.ROOT)
  from configs import melu_ml100k

  config = melu_ml100k.get_config()
  with config.unlocked():
    config.progress = False
    for key, value in (overrides or {}).items():
      node, parts = config, key.split(".")
      for p in parts[:-1]:
        node = node[p]
      node[parts[-1]] = value
  return config


def run_phases(workdir: str) -> None:
  from jax import monitoring

  from transfer_meta import checkpoint, compile_cache, evaluate, results, sharding, step, train
  from transfer_meta.data import tasks

  events, counts = collections.Counter(), collections.Counter()

  def listener(event, duration, **_):
    if event.startswith(("/jax/core/compile", "/jax/compilation_cache")):
      events[event] += duration
      counts[event] += 1

  monitoring.register_event_duration_secs_listener(listener)
  timer = PhaseTimer()
  for owner, name in [
    (train, "build_experiment"),
    (train, "train_learner"),
    (train, "evaluate_trained"),
    (train, "_validate"),
    (results, "run_baselines"),
    (sharding, "shard_batch"),
    (evaluate, "evaluate_tasks"),
  ]:
    timer.patch(owner, name)
  timer.patch(step, "stack_seed_batches")
  train.stack_seed_batches = step.stack_seed_batches
  timer.patch(tasks.TaskIterator, "__next__", "TaskIterator.__next__")
  timer.patch(tasks.TaskData, "resampled", "TaskData.resampled")
  timer.patch(checkpoint.Checkpointer, "save", "Checkpointer.save")
  compile_cache.enable(os.path.join(workdir, "jax_cache"))  # its own (a fresh workdir: cold), so compiles are measured
  (u0, s0), t0 = cpu_times(), time.perf_counter()
  train.train_and_evaluate(job_config(), workdir)
  (u1, s1) = cpu_times()
  print(f"\nload average {os.getloadavg()}; cpu {bench_common.machine()['cpu']}")
  print(f"train_and_evaluate: user {u1 - u0:.1f}  sys {s1 - s0:.1f}  wall {time.perf_counter() - t0:.1f}")
  print("\n".join(timer.lines()))
  for k in sorted(events):
    print(f"{k:60s} n {counts[k]:4d}  {events[k]:7.1f} s (wall)")


def run_steps(groups: list[tuple[int, int]], n_steps: int, learners: list[str] | None) -> None:
  import jax

  from transfer_meta import length_groups, sharding, train
  from transfer_meta.data.tasks import TaskIterator
  from transfer_meta.learners import get_learner

  config = job_config()
  exp = train.build_experiment(config)
  iterators = [
    TaskIterator(st.tasks["train"], config.batch_size, st.seed, True, resample=config.resample_train)
    for st in exp.seeds
  ]
  for it in iterators:  # warm-up (the first pass's resampling key): untimed, then restarted
    next(it)
    it.restore({"epoch": 0, "position": 0})
  host0 = time.process_time()
  raw = [[next(it) for it in iterators] for _ in range(n_steps)]
  host_ms = (time.process_time() - host0) / n_steps * 1e3
  specs = dict(train._learner_specs(config))
  keys, _ = train.seed_keys([st.seed for st in exp.seeds])
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
  print(f"load average {os.getloadavg()}; {n_steps} steps of {len(exp.seeds)} seeds x {config.batch_size} tasks")
  for name in learners or list(specs):
    learner = get_learner(name, exp.model, **specs[name])
    tx = train.make_optimizer(config)
    init = train.make_init(learner, tx, example, exp.mesh)[1]
    for n_groups, width_step in groups:
      fn, build, _ = length_groups.step_parts(learner, tx, None, 1, config.batch_size, n_groups, width_step)
      meta_step = train.jit_meta_step(fn, exp.mesh)
      b0 = time.process_time()
      batches = [sharding.shard_batch(build(b), exp.mesh, 1) for b in raw]
      build_ms = (time.process_time() - b0) / n_steps * 1e3 + host_ms
      state = init(keys)
      c0 = sum(cpu_times())
      state, metrics = meta_step(state, batches[0], keys)
      jax.block_until_ready(metrics)
      c1, t1 = sum(cpu_times()), thread_cpu()
      for b in batches[1:]:
        state, metrics = meta_step(state, b, keys)
      jax.block_until_ready(metrics)
      c2, per_thread = sum(cpu_times()), thread_delta(t1, thread_cpu())
      loss = np.round(np.asarray(metrics["outer_loss"]), 5).tolist()
      threads = ", ".join(f"{k} {v / (n_steps - 1) * 1e3:.1f}" for k, v in per_thread.items())
      print(
        f"{name:8s} G={n_groups} step={width_step:3d}: first call {c1 - c0:6.2f} CPU-s, "
        f"{(c2 - c1) / (n_steps - 1) * 1e3:7.1f} CPU-ms/step, host batch {build_ms:5.1f} CPU-ms/step, "
        f"outer loss {loss}; per thread CPU-ms/step: {threads}; state {tree_hash(state)} (PJRT_NPROC="
        f"{os.environ.get('PJRT_NPROC', 'unset')})",
        flush=True,
      )


def small_melu_example():
  """(learner, one-task example) of a small MeLU (embeddings 4, one hidden layer of 8) on synthetic data."""
  import transfer_meta as tm
  from transfer_meta import step
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  data = tm.load_dataset("synthetic", n_users=30, n_items=40, ratings_per_user=(5, 10), seed=0)
  model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=4, hidden=(8,))
  feats, rng = FeatureMatrices.from_interactions(data), np.random.default_rng(0)
  part = lambda n: step.unstack(  # noqa: E731
    make_examples(feats, np.full((1, n), 3), rng.integers(0, 40, (1, n)), np.ones((1, n), np.float32)), 0
  )
  return get_learner("melu", model, inner_steps=1, inner_lr=0.1), {"support": part(5), "query": part(3)}


def run_options(repeats: int, small: bool) -> None:
  import functools

  import jax

  from transfer_meta import step, train, xla_options
  from transfer_meta.learners import get_learner

  config = job_config()
  if small:
    learner, example = small_melu_example()
    keys, _ = train.seed_keys(list(range(config.seeds)))
  else:
    exp = train.build_experiment(config)
    specs = dict(train._learner_specs(config))
    learner = get_learner(config.learner_name, exp.model, **specs[config.learner_name])
    first = exp.seeds[0].tasks["train"].batch(np.arange(1))
    example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
    keys, _ = train.seed_keys([st.seed for st in exp.seeds])
  fn = functools.partial(step.init_one, learner, train.make_optimizer(config), example)
  which = "a small synthetic MeLU" if small else "the job's model"
  print(f"load average {os.getloadavg()}; cpu {bench_common.machine()['cpu']}; init_one of {learner.name}, {which}")
  reference = None
  for r in range(repeats):
    for label, options in (("default", None), ("RARE_PROGRAM", xla_options.RARE_PROGRAM)):
      jax.clear_caches()  # a real compile every time: jax keeps compiled executables in memory (no disk cache here)
      lowered = jax.jit(fn, compiler_options=options).lower(keys[0])
      c0 = sum(cpu_times())
      compiled = lowered.compile()
      c1 = sum(cpu_times())
      states = tree_hash([compiled(keys[n]) for n in range(keys.shape[0])])
      reference = reference or states
      print(
        f"repeat {r} {label:12s} {json.dumps(options or {})}: compile {c1 - c0:5.2f} CPU-s; states {states} "
        f"(bit-identical to the default level's: {states == reference})",
        flush=True,
      )


def parse_groups(text: str) -> list[tuple[int, int]]:
  """'0:16,3:50' -> [(0, 16), (3, 50)] (G:width_step pairs)."""
  try:
    out = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
  except ValueError:
    raise ValueError(f"--groups={text!r}: want comma-separated G:width_step pairs, e.g. 0:16,3:50") from None
  if any(len(p) != 2 or p[0] < 0 or p[1] < 1 for p in out):
    raise ValueError(f"--groups={text!r}: want G >= 0 and width_step >= 1 in each G:width_step pair")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("mode", choices=("phases", "steps", "options"))
  p.add_argument("--workdir", default="", help="phases: a fresh run directory")
  p.add_argument("--groups", default="0:16,2:50,3:50", help="steps: G:width_step settings (G=0: ungrouped)")
  p.add_argument("--steps", type=int, default=30, help="steps: timed meta-steps (the first compiles)")
  p.add_argument("--learners", default="", help="steps: comma list (default: the config's learners)")
  p.add_argument("--repeats", type=int, default=2, help="options: alternations of the two compiles")
  p.add_argument("--small", action="store_true", help="options: a small synthetic MeLU instead of the job's model")
  args = p.parse_args(argv)
  if args.mode == "phases":
    if not args.workdir or os.path.exists(os.path.join(args.workdir, "checkpoints")):
      p.error("phases needs --workdir=<a fresh directory> (an existing run would resume, not train)")
    run_phases(args.workdir)
  elif args.mode == "options":
    if args.repeats < 1:
      p.error("--repeats must be >= 1")
    run_options(args.repeats, args.small)
  else:
    if args.steps < 2:
      p.error("--steps must be >= 2 (the first call compiles)")
    run_steps(parse_groups(args.groups), args.steps, [n for n in args.learners.split(",") if n] or None)
  return 0


if __name__ == "__main__":
  sys.exit(main())
