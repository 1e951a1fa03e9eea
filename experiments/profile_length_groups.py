"""Where a length-grouped meta-step's time goes: host grouping, host-to-device transfer, the step, the loop.

    python -m experiments.profile_length_groups                       # fo1:32 and fo1:256 (chunk 32), G = 0, 2, 4
    python -m experiments.profile_length_groups --cases=so1:32 --groups=0,4 --reps=9

Same model and data as experiments/bench_throughput.py (MeLU 16 / 64-64, the 466 recbole_metarec ML-100K
training tasks, supports padded to 100). Per case, a few fixed batches are drawn once (`TaskData.batch`, the
same for every variant, so not timed) and each variant's step is compiled on all of them before timing, so no
timed call compiles. Variants: `G0` the ungrouped step; `G<g> separate` groups placed as separate arrays
(`stack_seed_groups` + `meta_step_fn`: one transfer per leaf per group); `G<g> packed` the trainer's path
(`step_parts`: `pack_groups`, one transfer per dtype, cut into groups inside the step). Timed, interleaved
repetition by repetition (so load hits every variant alike), median and min over `--reps`:

  build   ms to turn the per-seed host batches into the step's batch (numpy: grouping, stacking, packing)
  put     ms to place it on the device (`shard_batch` + block)
  step    ms per step with batches already on the device (what bench_throughput / bench_torch time)
  loop    ms per step of the trainer's loop: dispatch the step, build + place the next batch while it runs,
          fetch the metrics (`train.train_learner`'s order)

Appends one row per variant to experiments/results/bench.csv (bench 'group_profile') with the machine and load.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common, bench_throughput

DEFAULT_CASES = "fo1:32,fo1:256"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default=DEFAULT_CASES, help="comma list of variant:batch (fo1, so1, so5)")
  p.add_argument("--groups", default="0,2,4", help="comma list of G (0: the ungrouped step)")
  p.add_argument("--chunk", default="auto", help="'auto', 0 or a divisor of the batch")
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--steps", type=int, default=0, help="steps per repetition (0: about 512 tasks, 2..20)")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def variants(learner, tx, chunk, slots: int, group_counts) -> dict:
  """{name: (unjitted step, build(per-seed batches) -> step batch)} for every G and layout."""
  from transfer_meta import length_groups

  out = {}
  for g in group_counts:
    fn, build, _ = length_groups.step_parts(learner, tx, chunk, 1, slots, g)
    if not g:
      out["G0"] = (fn, build)
      continue
    sizes = length_groups.group_sizes(slots, g, chunk or 1)

    def separate(batches, sizes=sizes):
      return length_groups.stack_seed_groups([length_groups.group_batch(b, sizes) for b in batches])

    out[f"G{g} separate"] = (length_groups.meta_step_fn(learner, tx, chunk), separate)
    out[f"G{g} packed"] = (fn, build)
  return out


def run_case(args: argparse.Namespace, case: str) -> list[dict]:
  import jax

  from transfer_meta import chunking, sharding, train

  variant, batch_size = case.split(":")
  batch_size = int(batch_size)
  first_order, inner_steps = bench_throughput.VARIANTS[variant]
  task_data, learner, tx, example, _ = bench_throughput.setup(bench_throughput.parse_args([]), first_order, inner_steps)
  chunk, slots = chunking.resolve_chunk_size(args.chunk, batch_size)
  rng = np.random.default_rng(0)
  host = [task_data.batch(rng.integers(0, len(task_data), batch_size), slots) for _ in range(6)]
  host = [b for b in host if b["support"]["mask"].shape[1] == 100][:4]  # one ungrouped shape, as in the issue
  mesh = sharding.make_mesh(jax.devices()[:1])
  keys, _ = train.seed_keys([0])
  init = train.make_init(learner, tx, example, mesh)[1]
  steps = args.steps or int(np.clip(512 // batch_size, 2, 20))
  group_counts = [int(g) for g in args.groups.split(",")]
  runs = {}
  for name, (fn, build) in variants(learner, tx, chunk, slots, group_counts).items():
    step = train.jit_meta_step(fn, mesh)
    placed = [sharding.shard_batch(build([b]), mesh, 1) for b in host]
    state = init(keys)
    for p in placed:  # compile every width signature before timing
      state, _ = step(state, p, keys)
    runs[name] = {"step": step, "build": build, "placed": placed, "state": jax.block_until_ready(state)}
    runs[name]["leaves"] = len(jax.tree.leaves(placed[0]))
    runs[name]["times"] = {k: [] for k in ("build", "put", "step", "loop")}

  def one_rep(r: dict, rep: int) -> None:
    t, step, build, placed, s = r["times"], r["step"], r["build"], r["placed"], r["state"]
    t0 = time.perf_counter()
    built = build([host[rep % len(host)]])
    t["build"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(sharding.shard_batch(built, mesh, 1))
    t["put"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(steps):
      s, _ = step(s, placed[i % len(placed)], keys)
    s = jax.block_until_ready(s)
    t["step"].append((time.perf_counter() - t0) / steps)
    t0 = time.perf_counter()
    batch = sharding.shard_batch(build([host[0]]), mesh, 1)
    for i in range(steps):
      s, metrics = step(s, batch, keys)
      batch = sharding.shard_batch(build([host[(i + 1) % len(host)]]), mesh, 1)
      jax.device_get(metrics)
    t["loop"].append((time.perf_counter() - t0) / steps)
    r["state"] = jax.block_until_ready(s)

  load0 = bench_common.load_avg()
  for rep in range(args.reps):
    for r in runs.values():
      one_rep(r, rep)
  rows = []
  for name, r in runs.items():
    med = {k: float(np.median(v)) * 1e3 for k, v in r["times"].items()}
    low = {k: float(np.min(v)) * 1e3 for k, v in r["times"].items()}
    figures = {
      **{f"{k}_ms": v for k, v in med.items()},
      **{f"{k}_ms_min": v for k, v in low.items()},
      "step_tasks_per_s": batch_size / med["step"] * 1e3,
      "loop_tasks_per_s": batch_size / med["loop"] * 1e3,
      "leaves": r["leaves"],
      "steps_per_rep": steps,
      "load_avg_1m_start": load0,
    }
    print(
      f"{case:>7} chunk {chunk} {name:>12}: leaves {r['leaves']:3d}  "
      + "  ".join(f"{k} {med[k]:6.2f} (min {low[k]:6.2f}) ms" for k in med)
      + f"  -> step {figures['step_tasks_per_s']:7.0f}, loop {figures['loop_tasks_per_s']:7.0f} tasks/s",
      flush=True,
    )
    params = {"variant": variant, "batch": batch_size, "chunk": chunk, "layout": name, "reps": args.reps}
    if not args.no_csv:
      bench_common.append_row(
        "group_profile", f"{case} {name}", figures["loop_tasks_per_s"], "tasks/s (loop)", figures, params
      )
    rows.append(figures)
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)
  m = bench_common.machine()
  print(f"length-group profile on {m['cpu']}, {m['cores']} cores, load {bench_common.load_avg()}", flush=True)
  for case in args.cases.split(","):
    run_case(args, case)
  print(f"load at the end {bench_common.load_avg()}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
