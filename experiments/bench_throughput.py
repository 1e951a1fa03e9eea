"""Meta-training throughput of MeLU on the ML-100K recbole_metarec training tasks (tasks/s, ms/step, peak RSS).

    python -m experiments.bench_throughput                                  # CPU-friendly default cases
    python -m experiments.bench_throughput --variants=fo1,so1,so5 --batches=32,256,1024,4096
    python -m experiments.bench_throughput --variants=so5 --batches=1024 --chunk=128 --dtype=bfloat16

Model: MeLU at the peer's size (embedding 16, decision MLP 64-64), learner `melu` (decision layers and output
adapted, inner lr 0.05). Variants: fo1 = first order, 1 inner step; so1 / so5 = second order, 1 / 5 steps.
A case is variant:batch[:chunk][:gG]; each runs in its own process (so peak RSS is the case's own). A trailing
`gG` (e.g. fo1:256:g2, fo1:1024:32:g4) runs the length-grouped step (`transfer_meta.length_groups`: the batch's
tasks sorted by support length into G fixed-size groups, each padded to its own multiple of 16):

  step      the trainer's own jitted step (`train.meta_step_fn` + `train.jit_meta_step`, one seed, a 1-device
            'tasks' mesh), batches already on the device: median over `--reps` repetitions of `--steps` steps,
            timed to `block_until_ready`, after a compile + warm-up call. The headline tasks/s. With
            --devices >= 2 the step keeps at most 8 calls in flight (`transfer_meta.dispatch`: the 50 un-synced
            steps of a 32-task repetition used to deadlock XLA's CPU client, experiments/README.md).
  host      building one batch on the host (`TaskData.batch`: fancy indexing + feature gather,
            `stack_seed_batches`, `shard_batch`): median ms per batch.
  e2e       host + step in the same loop, no prefetching (not for grouped cases: new group widths compile).
  loop      our own loop-over-tasks variant of the same step: a Python loop calling a jitted single-task
            `task_grad`, summing the gradients, then the optimiser update (batches <= --loop_max only).

  ops       with --op_profile=K, one more repetition is traced after the timed ones and the K kinds of HLO op
            with the most exclusive time are printed (`experiments/op_profile.py`; shares land in the CSV row).
  flops     each case also reports the machine's matmul peak, measured in the same process between the timed
            repetitions (`bench_flops.peak_matmul_flops`: a 2048^2 f32 matmul on CPU, 8192^2 on a GPU,
            at JAX's default precision like the step), and the step's useful FLOP/s
            (matmul FLOPs of the real tasks at their real support/query lengths, counted on the jaxpr by
            `bench_flops.TaskFlops`) and executed FLOP/s (every task slot at the padded widths), each as a
            fraction of that peak. CPU model, cores and load land in the CSV row (`bench_common.machine`).

Tasks are drawn uniformly (with replacement past the 466 training tasks), so every batch has the ML-100K mix of
support sizes; supports pad to bucket 100 (the largest train support is 90), queries are 10.
`--chunk=C` maps over chunks of C tasks (`transfer_meta.chunking`); `--dtype=bfloat16` computes the model in
bf16 with f32 meta-parameters (`transfer_meta.precision`). Each case appends a row to experiments/results/bench.csv.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common, bench_flops, op_profile

VARIANTS = {"fo1": (True, 1), "so1": (False, 1), "so5": (False, 5)}  # name -> (first_order, inner_steps)
DEFAULT_CASES = "fo1:32,fo1:256,fo1:1024,fo1:1024:32,so1:32,so1:256,so1:1024:32,so5:32,so5:256,so5:256:32"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default=None, help="comma list of fo1,so1,so5 (with --batches: all pairs)")
  p.add_argument("--batches", default=None, help="comma list of task batch sizes, e.g. 32,256,1024,4096")
  p.add_argument(
    "--cases", default=DEFAULT_CASES, help="comma list of variant:batch[:chunk] (used without --variants/--batches)"
  )
  p.add_argument("--case", default=None, help="run one variant:batch[:chunk] case in this process")
  p.add_argument("--steps", type=int, default=0, help="steps per repetition (0: about 8192 tasks, 4..50 steps)")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--chunk", type=int, default=0, help="task chunk size for cases that name none (0: plain vmap)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--inner_lr", type=float, default=0.05)
  p.add_argument("--loop_max", type=int, default=64, help="largest batch timed with the loop-over-tasks baseline")
  p.add_argument("--emb_dim", type=int, default=16)
  p.add_argument("--hidden", default="64,64")
  p.add_argument("--devices", type=int, default=1, help="host devices on the 'tasks' mesh axis (fake CPU devices)")
  p.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for the case processes (e.g. thread settings)")
  op_profile.add_flag(p, "one more repetition")
  p.add_argument("--no_csv", action="store_true", help="print only, append nothing to bench.csv")
  return p.parse_args(argv)


def cases_of(args: argparse.Namespace) -> list[str]:
  if args.variants or args.batches:
    variants = (args.variants or "fo1,so1,so5").split(",")
    batches = (args.batches or "32,256,1024").split(",")
    return [f"{v}:{b}" for v in variants for b in batches]
  return args.cases.split(",")


def setup(args: argparse.Namespace, first_order: bool, inner_steps: int):
  """(task_data, learner, tx, example, seconds to load + split + pad)."""
  import jax
  import jax.numpy as jnp
  import optax

  import transfer_meta as tm
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
  from transfer_meta.data.protocols import make_protocol
  from transfer_meta.data.tasks import TaskData
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model
  from transfer_meta.precision import with_compute_dtype

  t0 = time.perf_counter()
  data = tm.load_dataset("ml-100k")
  split = make_protocol("recbole_metarec", data, seed=0)
  task_data = TaskData.from_split(data, split, "train", FeatureMatrices.from_interactions(data))
  seconds = time.perf_counter() - t0
  hidden = tuple(int(h) for h in args.hidden.split(","))
  model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=args.emb_dim, hidden=hidden)
  if args.dtype != "float32":
    model = with_compute_dtype(model, getattr(jnp, args.dtype))
  learner = get_learner("melu", model, inner_steps=inner_steps, inner_lr=args.inner_lr, first_order=first_order)
  first = task_data.batch(np.arange(1))
  example = {
    "support": jax.tree.map(lambda x: x[0], first["support"]),
    "query": jax.tree.map(lambda x: x[0], first["query"]),
  }
  return task_data, learner, optax.adam(1e-3), example, seconds


def chunked_meta_step_fn(learner, tx, chunk_size: int, groups: int = 1):
  """The trainer's own meta-step with the task mean computed chunk by chunk (`train.meta_step_fn(chunk_size=)`)."""
  from transfer_meta import train

  return train.meta_step_fn(learner, tx, chunk_size=chunk_size, groups=groups), "train.meta_step_fn(chunk_size)"


def loop_baseline(learner, tx, host_batch: dict, meta_params, opt_state, reps: int) -> float:
  """Median seconds of one meta-step done as a Python loop over the batch's real tasks."""
  import jax
  import optax

  grad_one = jax.jit(learner.task_grad)
  add = jax.jit(lambda a, b: jax.tree.map(lambda x, y: x + y, a, b))

  @jax.jit
  def update(grad_sum, n, opt_state, params):
    grads = jax.tree.map(lambda g: g / n, grad_sum)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  real = np.flatnonzero(host_batch["task_mask"])
  tasks = [
    jax.device_put(
      {
        "support": jax.tree.map(lambda x, t=t: x[t], host_batch["support"]),
        "query": jax.tree.map(lambda x, t=t: x[t], host_batch["query"]),
      }
    )
    for t in real
  ]
  keys = list(jax.random.split(jax.random.key(0), len(tasks)))  # split once: indexing a key array costs ~1 ms
  # uncommitted single-device copies: the loop's outputs then have the inputs' placement (no recompiles)
  state = {"params": jax.device_put(jax.device_get(meta_params)), "opt": jax.device_put(jax.device_get(opt_state))}

  def step():
    total = None
    for task, key in zip(tasks, keys):
      grads, _ = grad_one(state["params"], task, key)
      total = grads if total is None else add(total, grads)
    state["params"], state["opt"] = update(total, float(len(tasks)), state["opt"], state["params"])
    jax.block_until_ready(state["params"])

  return float(np.median(bench_common.time_calls(step, reps, warmup=2)))


def run_case(args: argparse.Namespace, case: str) -> dict:
  """Measures one variant:batch case; returns its figures (and appends the CSV row)."""
  import os

  flags = [args.xla_flags] + ([f"--xla_force_host_platform_device_count={args.devices}"] if args.devices > 1 else [])
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()  # before jax's backend
  import jax

  from transfer_meta import length_groups, sharding, train

  variant, batch_size, *rest = case.split(":")
  n_groups = int(rest.pop()[1:]) if rest and rest[-1].startswith("g") else 0
  batch_size, chunk = int(batch_size), int(rest[0]) if rest else args.chunk
  if variant not in VARIANTS:
    raise SystemExit(f"unknown variant {variant!r}; valid: {sorted(VARIANTS)}")
  first_order, inner_steps = VARIANTS[variant]
  task_data, learner, tx, example, load_s = setup(args, first_order, inner_steps)
  mesh = sharding.make_mesh(jax.devices()[: args.devices])
  if len(mesh.devices.ravel()) != args.devices or batch_size % args.devices or (chunk and chunk % args.devices):
    raise SystemExit(f"--devices={args.devices}: need that many devices dividing the batch and chunk ({case})")
  partial = args.devices if chunk else 1  # per-device partial sums in a chunked step (`chunking`)
  rng = np.random.default_rng(0)
  n_batches = 4

  sizes = length_groups.group_sizes(batch_size, n_groups, chunk or args.devices) if n_groups else None

  def host_batch():  # what the trainer builds per step: the seed-stacked batch, or its length groups
    idx = rng.choice(len(task_data), batch_size, replace=batch_size > len(task_data))
    if n_groups:  # the trainer's path: one packed buffer per dtype, cut into groups inside the step
      return length_groups.pack_groups([task_data.batch(idx)], sizes, args.devices)
    return train.stack_seed_batches([task_data.batch(idx)])

  t0 = time.perf_counter()
  host = [host_batch() for _ in range(n_batches)]
  build_s = (time.perf_counter() - t0) / n_batches
  placed = [sharding.shard_batch(b, mesh, 1) for b in host]
  jax.block_until_ready(placed)
  parts = lambda b: length_groups.unpack_groups(b)["groups"] if n_groups else (b,)  # (group) pieces [1, T_g, ...]
  widths = lambda b: tuple(g["support"]["mask"].shape[2] for g in parts(b))
  width = {widths(b)[-1] for b in host}
  host = [b for b in host if widths(b)[-1] == max(width)]  # ungrouped: one shape, one compile
  placed = [sharding.shard_batch(b, mesh, 1) for b in host]
  signatures = sorted({widths(b) for b in host})  # grouped: one compile per tuple of group widths

  if n_groups:
    fn = length_groups.packed_meta_step_fn(learner, tx, chunk or None, partial)
    step_source = f"length_groups.packed_meta_step_fn G={n_groups}"
  elif chunk:
    fn, step_source = chunked_meta_step_fn(learner, tx, chunk, partial)
  else:
    fn, step_source = train.meta_step_fn(learner, tx), "train.meta_step_fn"
  step = train.jit_meta_step(fn, mesh)
  keys, _ = train.seed_keys([0])
  init = train.make_init(learner, tx, example, mesh)[1]
  state = init(keys)
  t0 = time.perf_counter()
  state, metrics = step(state, placed[0], keys)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  steps = args.steps or int(np.clip(8192 // batch_size, 4, 50))
  box = {"state": state}

  def run_steps():
    s = box["state"]
    for i in range(steps):
      s, _ = step(s, placed[i % len(placed)], keys)
    box["state"] = jax.block_until_ready(s)

  # The matmul peak is measured between the repetitions (same machine load as the steps it is compared with).
  run_steps()  # warm-up
  peaks, rep_s, cpu_s, wall_s = [], [], 0.0, 0.0
  for _ in range(args.reps):
    peaks.append(bench_flops.peak_matmul_flops(reps=3))
    cpu0, wall0 = bench_common.cpu_seconds(), time.perf_counter()
    run_steps()
    rep_s.append(time.perf_counter() - wall0)
    cpu_s, wall_s = cpu_s + bench_common.cpu_seconds() - cpu0, wall_s + rep_s[-1]
  cpu_share = cpu_s / (wall_s * bench_common.cores())
  step_s = float(np.median(rep_s)) / steps

  def e2e():
    s = box["state"]
    for _ in range(steps):
      b = sharding.shard_batch(host_batch(), mesh, 1)
      s, _ = step(s, b, keys)
    box["state"] = jax.block_until_ready(s)

  # Grouped: fresh batches bring group-width tuples not yet compiled (each compiles once per run), which a
  # short e2e loop would time as compiles; the grouped e2e figure is left out (host_ms covers the grouping).
  e2e_s = np.nan if n_groups else float(np.median(bench_common.time_calls(e2e, max(1, args.reps // 2), 0))) / steps
  host_s = float(
    np.median(
      bench_common.time_calls(lambda: jax.block_until_ready(sharding.shard_batch(host_batch(), mesh, 1)), 5, warmup=1)
    )
  )

  # FLOPs (experiments/bench_flops.py): matmul FLOPs of one task as a line in its lengths, counted on the jaxpr;
  # useful = real tasks at their real lengths, executed = every slot at the padded widths. Peak: the median of
  # the large f32 matmuls timed between the repetitions, in this process.
  one_task = {"support": example["support"], "query": example["query"]}
  one_params = jax.tree.map(lambda x: x[0], init(keys)["meta_params"])
  line = bench_flops.TaskFlops.fit(learner.task_grad, one_params, one_task, keys[0])
  useful, executed = np.mean([np.sum([line.batch(g) for g in parts(b)], axis=0) for b in host], axis=0)
  peak = float(np.median(peaks))
  figures = {
    "tasks_per_s": batch_size / step_s,
    "ms_per_step": step_s * 1e3,
    "e2e_tasks_per_s": batch_size / e2e_s,
    "host_ms_per_batch": host_s * 1e3,
    "compile_s": compile_s,
    "load_split_s": load_s,
    "first_batch_build_s": build_s,
    "support_width": max(width),
    "length_groups": n_groups,
    "group_width_signatures": len(signatures),
    "mean_group_widths": np.mean([widths(b) for b in host], axis=0).round(1).tolist(),
    "steps_per_rep": steps,
    "cpu_share": cpu_share,
    "peak_gflop_s": peak / 1e9,
    "peak_matmul_n": bench_flops.peak_matmul_size(),
    "matmul_precision": bench_common.matmul_precision(),
    "useful_gflop_s": useful / step_s / 1e9,
    "executed_gflop_s": executed / step_s / 1e9,
    "useful_frac_of_peak": useful / step_s / peak,
    "executed_frac_of_peak": executed / step_s / peak,
    "useful_frac_of_executed": useful / executed,
  }
  if batch_size <= args.loop_max and not n_groups:
    params = jax.tree.map(lambda x: x[0], init(keys)["meta_params"])
    loop_s = loop_baseline(
      learner, tx, jax.tree.map(lambda x: x[0], host[0]), params, tx.init(params), max(1, args.reps // 2)
    )
    figures["loop_tasks_per_s"] = batch_size / loop_s
  figures["peak_rss_mib"] = bench_common.peak_rss_mib()
  figures["final_outer_loss"] = float(np.asarray(metrics["outer_loss"])[0])
  params = {
    "variant": variant,
    "first_order": first_order,
    "inner_steps": inner_steps,
    "batch": batch_size,
    "chunk": chunk or None,
    "length_groups": n_groups,
    "devices": args.devices,
    "xla_flags": args.xla_flags,
    "dtype": args.dtype,
    "emb_dim": args.emb_dim,
    "hidden": args.hidden,
    "inner_lr": args.inner_lr,
    "step": step_source,
    "data": "ml-100k recbole_metarec train (466 tasks)",
  }
  print(
    f"{case:>10}  {figures['tasks_per_s']:9.0f} tasks/s  {figures['ms_per_step']:8.2f} ms/step  "
    f"e2e {figures['e2e_tasks_per_s']:8.0f} tasks/s  host {figures['host_ms_per_batch']:7.2f} ms/batch  "
    f"loop {figures.get('loop_tasks_per_s', float('nan')):6.0f} tasks/s  compile {compile_s:5.1f} s  "
    f"groups {n_groups} widths {figures['mean_group_widths']}  peak RSS {figures['peak_rss_mib']:.0f} MiB  "
    f"cpu share {cpu_share:.2f}  load {bench_common.load_avg()}  "
    f"useful {figures['useful_gflop_s']:.1f} GFLOP/s = {figures['useful_frac_of_peak']:.0%} of the measured "
    f"{figures['peak_gflop_s']:.0f} GFLOP/s matmul peak (executed {figures['executed_frac_of_peak']:.0%})",
    flush=True,
  )
  if args.op_profile > 0:  # after the timed repetitions: the tracer's overhead stays out of every figure above
    rows, traced_s = op_profile.profile(run_steps, steps, args.op_profile)
    print(
      f"{case:>10}  op time by kind over {steps} traced steps ({traced_s * 1e3:.2f} ms/step under the tracer, "
      f"{step_s * 1e3:.2f} untraced; ops on the intra-op pool overlap):\n{op_profile.format_rows(rows)}",
      flush=True,
    )
    figures["op_profile"] = {r["kind"]: round(r["share"], 4) for r in rows}
    figures["op_ms_per_step"] = sum(r["ms_per_step"] for r in rows)
    figures["traced_ms_per_step"] = traced_s * 1e3
  if not args.no_csv:
    name = (
      f"{variant}:{batch_size}" + (f" chunk={chunk}" if chunk else "") + (f" groups={n_groups}" if n_groups else "")
    )
    name += f" {args.dtype}" if args.dtype != "float32" else ""
    name += f" devices={args.devices}" if args.devices > 1 else ""
    name += f" xla_flags={args.xla_flags}" if args.xla_flags else ""
    bench_common.append_row("throughput", name, figures["tasks_per_s"], "tasks/s", figures, params)
  return figures


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.case:
    run_case(args, args.case)
    return 0
  cases = cases_of(args)
  print(f"MeLU meta-training throughput, {len(cases)} cases, one process each: {', '.join(cases)}", flush=True)
  return int(
    bench_common.run_cases_isolated(
      "experiments.bench_throughput", cases, drop=("--cases", "--variants", "--batches"), argv=argv
    )
    > 0
  )


if __name__ == "__main__":
  sys.exit(main())
