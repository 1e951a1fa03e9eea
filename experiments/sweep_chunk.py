"""Does `chunk_size=-1` (automatic) pick the fastest chunk? A sweep of chunk sizes at large task batches.

    python -m experiments.sweep_chunk                                  # fo1, so1 at 256 and 466 tasks
    python -m experiments.sweep_chunk --cases=so5:466 --chunks=16,32,64,0 --reps=3

Same model and data as experiments/bench_throughput.py (MeLU 16 / 64-64, the 466 recbole_metarec ML-100K
training tasks, supports padded to 100). For each case and chunk size C the trainer's own step
(`train.meta_step_fn(chunk_size=C)` + `train.jit_meta_step`, batches already placed) runs on ceil(T / C) * C
task slots, the extra slots masked tasks (as `chunking.auto_chunk_size` pads 466 -> 480), so tasks/s counts the
T real tasks only; C = 0 is the plain vmap over T. Repetitions are interleaved across the chunk sizes (load hits
all alike); the median per C is compared with the chunk the automatic rule picks
(`chunking.auto_chunk_size(T)`). Appends one row per case to experiments/results/bench.csv (bench 'chunk_sweep').
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common, bench_throughput

DEFAULT_CASES = "fo1:256,so1:256,fo1:466,so1:466"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default=DEFAULT_CASES, help="comma list of variant:batch (fo1, so1, so5)")
  p.add_argument("--chunks", default="8,16,32,64,128,0", help="comma list of chunk sizes (0: plain vmap)")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--steps", type=int, default=2, help="steps per repetition")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def slots_for(n_tasks: int, chunk: int) -> int:
  """Task slots for chunks of `chunk` (0: the plain vmap over `n_tasks`): the next multiple of the chunk."""
  return n_tasks if not chunk else -(-n_tasks // chunk) * chunk


def run_case(args: argparse.Namespace, case: str) -> dict:
  import jax

  from transfer_meta import chunking, sharding, train

  variant, batch_size = case.split(":")
  batch_size = int(batch_size)
  first_order, inner_steps = bench_throughput.VARIANTS[variant]
  task_data, learner, tx, example, _ = bench_throughput.setup(bench_throughput.parse_args([]), first_order, inner_steps)
  auto, auto_slots = chunking.auto_chunk_size(batch_size)
  chunks = sorted({int(c) for c in args.chunks.split(",")} | {auto or 0}, key=lambda c: (c == 0, c))
  mesh = sharding.make_mesh(jax.devices()[:1])
  keys, _ = train.seed_keys([0])
  init = train.make_init(learner, tx, example, mesh)[1]
  rng = np.random.default_rng(0)
  draws = [rng.permutation(len(task_data))[:batch_size] if batch_size <= len(task_data) else None for _ in range(2)]
  draws = [d if d is not None else rng.integers(0, len(task_data), batch_size) for d in draws]
  runs = {}
  for chunk in chunks:
    slots = slots_for(batch_size, chunk)
    placed = [sharding.shard_batch(train.stack_seed_batches([task_data.batch(d, slots)]), mesh, 1) for d in draws]
    step = train.jit_meta_step(train.meta_step_fn(learner, tx, chunk or None), mesh)
    state = init(keys)
    for p in placed:  # compile (one support width per draw at most) before timing
      state, _ = step(state, p, keys)
    runs[chunk] = {"step": step, "placed": placed, "state": jax.block_until_ready(state), "slots": slots, "t": []}
  load0 = bench_common.load_avg()
  for _ in range(args.reps):
    for r in runs.values():
      s = r["state"]
      t0 = time.perf_counter()
      for i in range(args.steps):
        s, _ = r["step"](s, r["placed"][i % len(r["placed"])], keys)
      r["state"] = jax.block_until_ready(s)
      r["t"].append((time.perf_counter() - t0) / args.steps)
  rate = {c: batch_size / float(np.median(r["t"])) for c, r in runs.items()}
  best = max(rate, key=rate.get)
  figures = {
    **{f"chunk_{c or 'none'}_tasks_per_s": v for c, v in rate.items()},
    **{f"chunk_{c or 'none'}_slots": r["slots"] for c, r in runs.items()},
    "auto_chunk": auto or 0,
    "auto_slots": auto_slots,
    "best_chunk": best,
    "auto_over_best": rate[auto or 0] / rate[best],
    "load_avg_1m_start": load0,
  }
  print(
    f"{case:>8}  "
    + "  ".join(f"C={c or 'vmap'}({runs[c]['slots']}) {v:7.0f}" for c, v in rate.items())
    + f"  tasks/s | auto C={auto or 'vmap'}: {figures['auto_over_best']:.2f} of the best (C={best or 'vmap'})"
    + f"  load {load0} -> {bench_common.load_avg()}",
    flush=True,
  )
  params = {"variant": variant, "batch": batch_size, "chunks": chunks, "reps": args.reps, "steps": args.steps}
  if not args.no_csv:
    bench_common.append_row("chunk_sweep", case, figures["auto_over_best"], "auto / best", figures, params)
  return figures


def main(argv=None) -> int:
  args = parse_args(argv)
  m = bench_common.machine()
  print(f"chunk sweep on {m['cpu']}, {m['cores']} cores, load {bench_common.load_avg()}", flush=True)
  for case in args.cases.split(","):
    run_case(args, case)
  return 0


if __name__ == "__main__":
  sys.exit(main())
