"""XLA's memory estimate of the evaluation step on a config's widest cold-user batch, per learner (no training).

    python -m experiments.eval_memory --config=genre_split_ml100k --set protocol.beta=0.8 --set residual=''

The metrics compare every pair of a task's query items, so the step's temporaries grow with the square of the
padded query width; this prints, for seed 0's widest `cold_target` batch (`eval_batch_size` tasks), the padded
widths and the compiled step's temporary / argument bytes (`Compiled.memory_analysis()`) for each learner, which
tells whether a learner's evaluation (e.g. the source-only model's `finetune`) needs more than another's.
"""

from __future__ import annotations

import argparse
import sys

import jax

from experiments import bench_common, runner
from transfer_meta import evaluate, train
from transfer_meta.data.tasks import eval_batches
from transfer_meta.learners import get_learner

INNER = dict(inner_steps=2, inner_lr=0.05)
LEARNERS = {"none": {}, "finetune": dict(INNER, adapt_regex=r"decision_|output"), "melu": INNER}


def widest_batch(exp: train.Experiment, scenario: str = "cold_target") -> dict:
  """Seed 0's eval batch of `scenario` with the widest padded query."""
  batches = eval_batches(exp.seeds[0].tasks[scenario], exp.config.eval_batch_size)
  return max(batches, key=lambda b: b["query"]["mask"].shape[1])


def step_memory(exp: train.Experiment, name: str, kwargs: dict, batch: dict) -> dict:
  """{"temp_mib", "argument_mib"} of the compiled eval step of learner `name` on `batch`."""
  learner = get_learner(name, exp.model, **kwargs)
  params = exp.model.init(jax.random.key(0), jax.tree.map(lambda x: x[0], batch["query"]), None)
  meta_params = learner.init(jax.random.key(0), params)
  split = exp.seeds[0].split
  step = evaluate.make_eval_step(learner, split.metrics, split.params.get("relevance"))
  jitted = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))["jitted"]
  m = jitted.lower(meta_params, batch, jax.random.key(0)).compile().memory_analysis()
  return {"temp_mib": m.temp_size_in_bytes / 2**20, "argument_mib": m.argument_size_in_bytes / 2**20}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config spec (configs/<name>.py[:arg])")
  parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated, of {list(LEARNERS)}")
  parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value")
  args = parser.parse_args(argv)
  names = [n for n in args.learners.split(",") if n]
  unknown = [n for n in names if n not in LEARNERS]
  if unknown:
    parser.error(f"--learners {unknown}: valid {list(LEARNERS)}")
  config = runner.apply_overrides(runner.load_config(args.config), {"seeds": 1, **runner.parse_sets(args.sets)})
  exp = train.build_experiment(config)
  batch = widest_batch(exp)
  tasks, width = batch["query"]["mask"].shape
  support = batch["support"]["mask"].shape[1]
  print(f"{args.config} {args.sets}: {tasks} tasks, query padded to {width}, support {support}")
  print(f"machine: CPU {bench_common.machine()['cpu']}")
  for name in names:
    mem = step_memory(exp, name, LEARNERS[name], batch)
    print(f"{name}: temporaries {mem['temp_mib']:.1f} MiB, arguments {mem['argument_mib']:.1f} MiB", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
