"""Distillation's teacher and student: parameter counts and serving latency on ML-100K.

    python -m experiments.bench_distill                    # the strategies_ml100k teacher/student, 200 calls
    python -m experiments.bench_distill --calls=500 --batch=1682

Teacher and student are built exactly as `configs/strategies_ml100k.py`'s `distill` builds them (the two-tower
backbone with ids, default kwargs; the config's MeLU on side features) with fresh parameters: latency does not
depend on their values. Timed: one jitted `model.apply` scoring `--batch` (user, item) pairs (default the whole
catalogue for one user, 1,682 items), inputs already on the device, to `block_until_ready`; p50 / p99 over
`--calls` calls. Appends one row per model to experiments/results/bench.csv (machine and load recorded there).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from experiments import bench_common, runner
from transfer_meta.data import load_dataset
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.models import get_model


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="strategies_ml100k")
  p.add_argument("--calls", type=int, default=200)
  p.add_argument("--batch", type=int, default=0, help="pairs per call (0: the whole catalogue)")
  p.add_argument("--no_csv", action="store_true")
  args = p.parse_args(argv)
  module, _ = runner.config_module(args.config)
  config = module.get_config(None)
  kwargs = module.STRATEGY_KWARGS["distill"]
  data = load_dataset(config.dataset_name, **config.dataset.to_dict())
  spec, feats = FeatureSpec.from_interactions(data), FeatureMatrices.from_interactions(data)
  n = args.batch or data.n_items
  rng = np.random.default_rng(0)
  x = make_examples(feats, np.full(n, rng.integers(data.n_users)), rng.integers(data.n_items, size=n))
  x = jax.device_put(x)
  models = {
    "teacher": get_model(kwargs.get("teacher_name", "two_tower"), spec, **kwargs.get("teacher", {})),
    "student": get_model(config.model_name, spec, **config.model.to_dict()),
  }
  rows = []
  for role, model in models.items():
    params = model.init(jax.random.key(0), x, None)
    count = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
    score = jax.jit(model.apply)
    call = lambda score=score, params=params: score(params, x, None).block_until_ready()
    seconds = bench_common.time_calls(call, args.calls, warmup=3)
    p50, p99 = float(np.percentile(seconds, 50)) * 1e3, float(np.percentile(seconds, 99)) * 1e3
    row = {"role": role, "model": model.name, "params": count, "pairs": n, "p50_ms": p50, "p99_ms": p99}
    rows.append(row)
    if not args.no_csv:
      bench_common.append_row("distill", f"{role}:{model.name}", p50, "ms", row, {"calls": args.calls, "pairs": n})
  bench_common.print_table(rows, ["role", "model", "params", "pairs", "p50_ms", "p99_ms"])
  print(f"machine: {bench_common.machine()}, load {bench_common.load_avg()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
