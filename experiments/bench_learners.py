"""Meta-training throughput of registered learners on the ML-100K melu-protocol training tasks (tasks/s).

    python -m experiments.bench_learners                                  # melu, fomaml, none, mamo, tanp
    python -m experiments.bench_learners --learners=mamo,tanp --batch=32 --reps=5

Each learner is built exactly as `configs/melu_ml100k.py` trains it (MeLU backbone, residual over item mean + user
offset, the config's inner loop; `tanp` with its own `tanp` model, `mamo` with the config's inner loop), seed 0.
What is timed is the trainer's own jitted step (`train.meta_step_fn` + `train.jit_meta_step`, a 1-device 'tasks'
mesh) on `--batches` prebuilt task batches of the training set, after a compile + warm-up call: the median over
`--reps` repetitions of `--steps` steps, timed to `block_until_ready`. The learners' repetitions are interleaved
(round robin), so a change in machine load hits every learner alike; the load is printed and lands in the CSV
rows (experiments/results/bench.csv, bench 'learner_throughput'), with the CPU model and core count.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common

LEARNERS = {  # name -> (model_name, model kwargs ({}: the config's), learner kwargs ({}: the factory's))
  "melu": ("melu", None, None),
  "fomaml": ("melu", None, {"inner_steps": 2, "inner_lr": 0.05, "adapt_regex": r"decision_|output"}),
  "none": ("melu", None, {}),
  "mamo": ("melu", None, {"inner_steps": 2, "inner_lr": 0.05}),
  "tanp": ("tanp", {}, {}),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--learners", default=",".join(LEARNERS), help=f"comma list of {sorted(LEARNERS)}")
  p.add_argument("--batch", type=int, default=32, help="tasks per step (the config's 32)")
  p.add_argument("--steps", type=int, default=10, help="steps per repetition")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--batches", type=int, default=4, help="distinct prebuilt batches cycled through")
  p.add_argument("--no_csv", action="store_true", help="print only, append nothing to bench.csv")
  return p.parse_args(argv)


def build(name: str, data, batch_size: int, n_batches: int):
  """(jitted step, state, keys, placed batches) of learner `name` as the melu_ml100k config trains it."""
  import importlib.util
  import os

  import jax

  from transfer_meta import sharding, train
  from transfer_meta.data.tasks import TaskIterator
  from transfer_meta.learners import get_learner

  spec = importlib.util.spec_from_file_location(
    "melu_ml100k", os.path.join(bench_common.ROOT, "configs", "melu_ml100k.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  model_name, model_kw, learner_kw = LEARNERS[name]
  with config.unlocked():
    config.seeds, config.batch_size, config.model_name = 1, batch_size, model_name
    if model_kw is not None:
      config.model = type(config.model)(model_kw)
  exp = train.build_experiment(config, data)
  kwargs = config.learner.to_dict() if learner_kw is None else learner_kw
  learner = get_learner(name, exp.model, **kwargs)
  tx = train.make_optimizer(config)
  tasks = exp.seeds[0].tasks["train"]
  first = tasks.batch(np.arange(1))
  example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
  mesh = sharding.make_mesh(jax.devices()[:1])
  keys, _ = train.seed_keys([0])
  state = train.make_init(learner, tx, example, mesh)[1](keys)
  it = TaskIterator(tasks, batch_size, 0, drop_remainder=True, resample=config.resample_train)
  host = [train.stack_seed_batches([next(it)]) for _ in range(n_batches)]
  width = max(b["support"]["mask"].shape[2] for b in host)
  host = [b for b in host if b["support"]["mask"].shape[2] == width]  # one shape: one compile
  placed = [sharding.shard_batch(b, mesh, 1) for b in host]
  step = train.jit_meta_step(train.meta_step_fn(learner, tx), mesh)
  return step, state, keys, placed, width


def main(argv=None) -> int:
  import jax

  import transfer_meta as tm

  args = parse_args(argv)
  names = args.learners.split(",")
  unknown = sorted(set(names) - set(LEARNERS))
  if unknown:
    raise SystemExit(f"unknown learners {unknown}; valid: {sorted(LEARNERS)}")
  data = tm.load_dataset("ml-100k")
  runs, compile_s, times = {}, {}, {n: [] for n in names}
  for name in names:
    step, state, keys, placed, width = build(name, data, args.batch, args.batches)
    t0 = time.perf_counter()
    state, _ = step(state, placed[0], keys)
    jax.block_until_ready(state)
    compile_s[name] = time.perf_counter() - t0
    runs[name] = {"step": step, "state": state, "keys": keys, "placed": placed, "width": width}
  for _ in range(args.reps):
    for name in names:
      r = runs[name]
      t0 = time.perf_counter()
      s = r["state"]
      for i in range(args.steps):
        s, _ = r["step"](s, r["placed"][i % len(r["placed"])], r["keys"])
      r["state"] = jax.block_until_ready(s)
      times[name].append(time.perf_counter() - t0)
  facts = bench_common.machine()
  print(f"{facts['cpu']}, {facts['cores']} cores, load {bench_common.load_avg()}, commit {facts['commit']}")
  for name in names:
    step_s = float(np.median(times[name])) / args.steps
    figures = {"tasks_per_s": args.batch / step_s, "ms_per_step": step_s * 1e3, "compile_s": compile_s[name]}
    figures["support_width"] = runs[name]["width"]
    print(
      f"{name:8s} {figures['tasks_per_s']:8.0f} tasks/s  {figures['ms_per_step']:7.1f} ms/step  "
      f"compile {compile_s[name]:5.1f} s"
    )
    if not args.no_csv:
      params = {"batch": args.batch, "steps": args.steps, "reps": args.reps, "config": "melu_ml100k"}
      bench_common.append_row("learner_throughput", name, figures["tasks_per_s"], "tasks/s", figures, params)
  return 0


if __name__ == "__main__":
  sys.exit(main())
