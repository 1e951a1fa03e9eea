"""Cost growth with the number of users and items: synthetic data at MovieLens sizes, one meta-epoch each.

    python -m experiments.bench_scale                            # sizes 100k,1m,25m, one process per size
    python -m experiments.bench_scale --sizes=25m --max_steps=200

Sizes (users / items / ratings), matched by `tm.load_dataset("synthetic", n_users, n_items, ratings_per_user)`
with a uniform per-user count whose mean gives the rating total:
  100k  943 / 1,682 / ~100k      1m  6,040 / 3,706 / ~1M      25m  162,541 / 59,047 / ~25M
For each size, in its own process: data generation, the recbole_metarec protocol (users with 13..100 ratings are
tasks, 8:1:1), padding the training tasks (`TaskData`), then ONE meta-epoch over every training task (at least
`--min_steps`, at most `--max_steps`) with the trainer's jitted step (`train.meta_step_fn` + `jit_meta_step`,
MeLU embedding 16, MLP 64-64, `--variant`, `--chunk`), batches drawn by `TaskIterator` and gathered on the host
in the loop exactly as `train_learner` does. Reported: seconds per stage, epoch tasks/s (host gather + step),
step-only tasks/s (the same step on an already-placed batch), resident memory after each stage and the peak.
Each size appends a row to experiments/results/bench.csv. The ML-25M size peaks near 2 GiB: inside 24 GiB.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common

SIZES = {  # name -> (users, items, ratings)
  "100k": (943, 1682, 100_000),
  "1m": (6040, 3706, 1_000_209),
  "25m": (162_541, 59_047, 25_000_095),
}
LOW = 20  # fewest ratings per synthetic user (MovieLens keeps users with >= 20)
VARIANTS = {"fo1": (True, 1), "so1": (False, 1), "so5": (False, 5)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="100k,1m,25m")
  p.add_argument("--case", default=None, help="run one size in this process")
  p.add_argument("--variant", default="fo1", choices=sorted(VARIANTS))
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--chunk", type=int, default=32, help="task chunk size (0: plain vmap)")
  p.add_argument("--max_steps", type=int, default=0, help="cap on the epoch's steps (0: the whole epoch)")
  p.add_argument("--min_steps", type=int, default=30, help="small data: run on past the epoch to this many steps")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def rss_mib() -> float:
  """Current resident set size, MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return round(int(line.split()[1]) / 1024, 1)
  return float("nan")


def run_size(args: argparse.Namespace, size: str) -> dict:
  import jax
  import optax

  import transfer_meta as tm
  from experiments.bench_throughput import chunked_meta_step_fn
  from transfer_meta import sharding, train
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
  from transfer_meta.data.protocols import make_protocol
  from transfer_meta.data.tasks import TaskData, TaskIterator
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  if size not in SIZES:
    raise SystemExit(f"unknown size {size!r}; valid: {sorted(SIZES)}")
  n_users, n_items, n_ratings = SIZES[size]
  high = int(round(2 * n_ratings / n_users - LOW))
  figures, seconds = {}, {}
  t0 = time.perf_counter()
  data = tm.load_dataset("synthetic", n_users=n_users, n_items=n_items, ratings_per_user=(LOW, high), seed=0)
  seconds["generate"], figures["rss_after_generate_mib"] = time.perf_counter() - t0, rss_mib()
  t0 = time.perf_counter()
  split = make_protocol("recbole_metarec", data, seed=0)
  seconds["protocol"], figures["rss_after_protocol_mib"] = time.perf_counter() - t0, rss_mib()
  t0 = time.perf_counter()
  feats = FeatureMatrices.from_interactions(data)
  tasks = TaskData.from_split(data, split, "train", feats)
  seconds["task_data"], figures["rss_after_task_data_mib"] = time.perf_counter() - t0, rss_mib()

  first_order, inner_steps = VARIANTS[args.variant]
  model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=16, hidden=(64, 64))
  learner = get_learner("melu", model, inner_steps=inner_steps, inner_lr=0.05, first_order=first_order)
  tx = optax.adam(1e-3)
  mesh = sharding.make_mesh(jax.devices()[:1])
  fn, source = (
    chunked_meta_step_fn(learner, tx, args.chunk)
    if args.chunk
    else (train.meta_step_fn(learner, tx), "train.meta_step_fn")
  )
  step = train.jit_meta_step(fn, mesh)
  keys, _ = train.seed_keys([0])
  first = tasks.batch(np.arange(1))
  example = {
    "support": jax.tree.map(lambda x: x[0], first["support"]),
    "query": jax.tree.map(lambda x: x[0], first["query"]),
  }
  state = train.make_init(learner, tx, example, mesh)[1](keys)
  iterator = TaskIterator(tasks, args.batch, seed=0, drop_remainder=args.batch <= len(tasks))
  n_steps = max(1, len(tasks) // args.batch)
  n_steps = max(n_steps, args.min_steps)
  n_steps = min(n_steps, args.max_steps) if args.max_steps else n_steps

  # compile every support bucket the epoch will meet before timing (a run compiles once per bucket anyway)
  t0 = time.perf_counter()
  placed = sharding.shard_batch(train.stack_seed_batches([next(iterator)]), mesh, 1)
  state, _ = step(state, placed, keys)
  jax.block_until_ready(state)
  seconds["compile_first"] = time.perf_counter() - t0
  iterator.restore({"epoch": 0, "position": 0})

  compiles = step._cache_size()
  t0 = time.perf_counter()
  host_s = 0.0
  for _ in range(n_steps):
    h0 = time.perf_counter()
    batch = sharding.shard_batch(train.stack_seed_batches([next(iterator)]), mesh, 1)
    host_s += time.perf_counter() - h0
    state, metrics = step(state, batch, keys)
  jax.block_until_ready(state)
  seconds["epoch"] = time.perf_counter() - t0
  figures["compiles_during_epoch"] = step._cache_size() - compiles  # a new support bucket compiles mid-epoch

  box = {"state": state}

  def steps10():
    s = box["state"]
    for _ in range(10):
      s, _ = step(s, batch, keys)
    box["state"] = jax.block_until_ready(s)

  step_s = float(np.median(bench_common.time_calls(steps10, 3, warmup=1))) / 10
  n_tasks = n_steps * args.batch
  figures.update({f"{k}_s": v for k, v in seconds.items()})
  figures.update(
    {
      "epoch_tasks_per_s": n_tasks / seconds["epoch"],
      "step_tasks_per_s": args.batch / step_s,
      "host_ms_per_batch": host_s / n_steps * 1e3,
      "train_tasks": len(tasks),
      "epoch_steps": n_steps,
      "ratings": len(data),
      "users": data.n_users,
      "items": data.n_items,
      "support_width": int(tasks.support["mask"].shape[1]),
      "rss_end_mib": rss_mib(),
      "peak_rss_mib": bench_common.peak_rss_mib(),
      "final_outer_loss": float(np.asarray(metrics["outer_loss"])[0]),
    }
  )
  params = {
    "size": size,
    "ratings_per_user": [LOW, high],
    "protocol": "recbole_metarec",
    "variant": args.variant,
    "batch": args.batch,
    "chunk": args.chunk or None,
    "step": source,
    "max_steps": args.max_steps or None,
  }
  print(
    f"{size:>5}: {len(data):>10,} ratings {data.n_users:>7,} users {data.n_items:>6,} items | generate "
    f"{seconds['generate']:6.1f} s  protocol {seconds['protocol']:5.1f} s  tasks {seconds['task_data']:5.1f} s | "
    f"epoch {n_steps} steps x {args.batch} = {n_tasks:,} of {len(tasks):,} tasks in {seconds['epoch']:6.1f} s: "
    f"{figures['epoch_tasks_per_s']:6.0f} tasks/s (step only {figures['step_tasks_per_s']:6.0f}) | peak RSS "
    f"{figures['peak_rss_mib']:,.0f} MiB  load {bench_common.load_avg()}",
    flush=True,
  )
  if not args.no_csv:
    bench_common.append_row(
      "scale", f"synthetic-{size} {args.variant}:{args.batch}", figures["epoch_tasks_per_s"], "tasks/s", figures, params
    )
  return figures


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.case:
    run_size(args, args.case)
    return 0
  sizes = args.sizes.split(",")
  print(f"scale benchmark, one process per size: {', '.join(sizes)}", flush=True)
  return int(bench_common.run_cases_isolated("experiments.bench_scale", sizes, drop=("--sizes",), argv=argv) > 0)


if __name__ == "__main__":
  sys.exit(main())
