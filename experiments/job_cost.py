"""Where the main job's CPU goes: phase accounting of one run, and the meta-step's CPU per learner.

    python -m experiments.job_cost phases --workdir=/tmp/jc            # the whole `make run` job, phases timed
    python -m experiments.job_cost steps --groups=0:16,2:50,3:50       # CPU per meta-step, ungrouped vs grouped

`phases` runs `train.train_and_evaluate` on configs/melu_ml100k.py (progress off, compilation cache in the
workdir, as `transfer_meta.main` sets it) with the trainer's phases wrapped: user and system CPU-seconds of the
whole process (every thread: XLA's pools included) while each phase ran, its wall time and call count, plus jax's
own compile events (backend compiles, tracing, lowering, persistent-cache hits). Phases nest (the batch builders
run inside `train_learner`), and the host-side batch builders overlap the asynchronously dispatched meta-step, so
their CPU includes XLA's work on the previous step; `steps` and a host-only timing separate them.

`steps` builds the job's experiment, draws `--steps` training batches of its 5 seeds with the trainer's
`TaskIterator`s, and per learner (the config's learner and comparisons) and per `G:width_step` setting of
`config.length_groups` / `length_group_step` (G=0: the trainer's ungrouped step) reports the first call's CPU
(compile) and the CPU-milliseconds per later step. Every line also prints the batch build CPU per step (host).
CPU-seconds are inflated by the machine's load (printed), so compare lines of one run only.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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
  compile_cache.enable(os.path.join(workdir, "jax_cache"))  # as transfer_meta.main sets it
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
      c1 = sum(cpu_times())
      for b in batches[1:]:
        state, metrics = meta_step(state, b, keys)
      jax.block_until_ready(metrics)
      c2 = sum(cpu_times())
      loss = np.round(np.asarray(metrics["outer_loss"]), 5).tolist()
      print(
        f"{name:8s} G={n_groups} step={width_step:3d}: first call {c1 - c0:6.2f} CPU-s, "
        f"{(c2 - c1) / (n_steps - 1) * 1e3:7.1f} CPU-ms/step, host batch {build_ms:5.1f} CPU-ms/step, "
        f"outer loss {loss}",
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
  p.add_argument("mode", choices=("phases", "steps"))
  p.add_argument("--workdir", default="", help="phases: a fresh run directory")
  p.add_argument("--groups", default="0:16,2:50,3:50", help="steps: G:width_step settings (G=0: ungrouped)")
  p.add_argument("--steps", type=int, default=30, help="steps: timed meta-steps (the first compiles)")
  p.add_argument("--learners", default="", help="steps: comma list (default: the config's learners)")
  args = p.parse_args(argv)
  if args.mode == "phases":
    if not args.workdir or os.path.exists(os.path.join(args.workdir, "checkpoints")):
      p.error("phases needs --workdir=<a fresh directory> (an existing run would resume, not train)")
    run_phases(args.workdir)
  else:
    if args.steps < 2:
      p.error("--steps must be >= 2 (the first call compiles)")
    run_steps(parse_groups(args.groups), args.steps, [n for n in args.learners.split(",") if n] or None)
  return 0


if __name__ == "__main__":
  sys.exit(main())
