"""Does XLA:CPU spread a meta-step's per-task work over the cores? A probe on one batched per-task matmul chain.

    python -m experiments.cpu_concurrency                  # one CPU device, every core this process may use
    taskset -c 0 python -m experiments.cpu_concurrency     # the same pinned to one core
    python -m experiments.cpu_concurrency --devices=2      # the task axis sharded over 2 fake CPU devices
    python -m experiments.cpu_concurrency --weight_grads --tasks=32 --support=64   # per-task weight gradients

Under `vmap` over tasks, every layer after the inner step multiplies each task's rows by that task's own adapted
weights: a batched matmul [T, S, D] x [T, D, D]. This times `depth` such layers (with a tanh between) over T tasks
six ways on one device: the whole batch (also summed over tasks, as a meta-gradient is); half of it (T / 2 tasks);
both halves as two independent branches of ONE program; two calls of the half program dispatched back to back before
waiting (async dispatch); and two Python threads each calling the half program. If the runtime ran independent work
on two cores, the last three would take about one half's time; if it runs them one after the other, about two
halves'. `concurrency` = 2 x half / variant (2.0: two cores fully used; 1.0: one after the other). With
`--devices=D` it times the whole and the summed program with the task axis sharded over D fake devices instead (the
sum is then an all-reduce), to compare with one device's.
`--weight_grads` times instead the product XLA:CPU leaves outside YNNPACK in the meta-step, the per-task weight
gradient X_t^T D_t (x [T, S, I], d [T, S, O] -> [T, I, O], contracting the support rows, dimension 1 of both), four
ways: as written (`einsum`); with X already stored transposed [T, I, S] (`pretransposed`: the transpose outside the
timed program); transposed inside the program (`inline_swapaxes`); and that transpose forced into memory by an
`optimization_barrier` (`barrier_transpose`); T, S, I, O are `--tasks`, `--support`, `--width`, `--out_width`
(`--tasks=32 --support=64 --out_width=64`: the first decision layer of a 32-task length group of width 64).
`--op_profile=K` traces each variant's calls once more and prints
the K kinds of op with the most exclusive time and how many ops ran at once on average (op time / wall time).
Rows go to experiments/results/bench.csv (`bench=cpu_concurrency`) with the machine, its load and the cores the
process may use (`taskset` shows as `cores`).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable

from experiments import bench_common, op_profile


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tasks", type=int, default=64, help="tasks in the whole batch (T; even)")
  p.add_argument("--support", type=int, default=100, help="rows per task (S)")
  p.add_argument("--width", type=int, default=96, help="layer width (D)")
  p.add_argument("--depth", type=int, default=6, help="batched matmul layers in the chain")
  p.add_argument("--calls", type=int, default=30, help="calls per timed repetition")
  p.add_argument("--reps", type=int, default=5, help="timed repetitions (the best is reported)")
  p.add_argument("--weight_grads", action="store_true", help="time the per-task weight-gradient forms instead")
  p.add_argument("--out_width", type=int, default=64, help="--weight_grads: output width O of the layer")
  p.add_argument("--devices", type=int, default=1, help=">= 2: shard the task axis over that many fake CPU devices")
  op_profile.add_flag(p, "each variant's calls once more")
  p.add_argument("--no_csv", action="store_true", help="print only, append nothing to bench.csv")
  args = p.parse_args(argv)
  if args.tasks < 2 or args.tasks % 2 or min(args.support, args.width, args.depth, args.calls, args.reps) < 1:
    p.error("--tasks must be an even number >= 2 and every other size >= 1")
  if args.weight_grads and (args.devices > 1 or args.out_width < 1):
    p.error("--weight_grads runs on one device with --out_width >= 1")
  if args.devices < 1 or args.tasks % args.devices:
    p.error(f"--devices={args.devices} must be >= 1 and divide --tasks={args.tasks}")
  return args


def chain(x, w, depth: int):
  """`depth` per-task layers: x [T, S, D], w [T, D, D] -> tanh(x_t @ w_t), `depth` times; [T, S, D]."""
  import jax.numpy as jnp

  for _ in range(depth):
    x = jnp.tanh(jnp.einsum("tsd,tde->tse", x, w))
  return x


def programs(depth: int) -> tuple[Callable, Callable]:
  """The jitted chain (x, w) -> [T, S, D] and the same summed over tasks, (x, w) -> [S, D]."""
  import jax
  import jax.numpy as jnp

  return jax.jit(lambda a, b: chain(a, b, depth)), jax.jit(lambda a, b: jnp.sum(chain(a, b, depth), axis=0))


def single_device_variants(x, w, depth: int) -> dict[str, Callable[[], list]]:
  """Name -> zero-argument call that runs that variant to completion and returns its outputs, a list of device
  arrays (`rows` joins them): the whole batch's rows in task order, the first half's for `half`, the sum over
  tasks [S, D] for `whole_summed`. Nothing is copied to the host inside a call."""
  import jax

  one, summed = programs(depth)
  two = jax.jit(lambda a, b, c, d: (chain(a, b, depth), chain(c, d, depth)))
  h = x.shape[0] // 2
  xa, xb, wa, wb = x[:h], x[h:], w[:h], w[h:]

  def threads():
    out = [None, None]

    def run(i, a, b):
      out[i] = jax.block_until_ready(one(a, b))

    workers = [threading.Thread(target=run, args=(0, xa, wa)), threading.Thread(target=run, args=(1, xb, wb))]
    for t in workers:
      t.start()
    for t in workers:
      t.join()
    return out

  return {
    "whole": lambda: [jax.block_until_ready(one(x, w))],
    "whole_summed": lambda: [jax.block_until_ready(summed(x, w))],
    "half": lambda: [jax.block_until_ready(one(xa, wa))],
    "two_branches": lambda: list(jax.block_until_ready(two(xa, wa, xb, wb))),
    "two_async_calls": lambda: list(jax.block_until_ready((one(xa, wa), one(xb, wb)))),
    "two_threads": threads,
  }


def weight_grad_variants(x, d) -> dict[str, Callable[[], list]]:
  """Name -> zero-argument call computing the per-task weight gradient X_t^T D_t, [T, I, O], of x [T, S, I] and
  d [T, S, O] to completion (a one-element list of device arrays, as `single_device_variants`)."""
  import jax
  import jax.numpy as jnp

  xt = jax.block_until_ready(jnp.swapaxes(x, 1, 2))  # stored transposed, outside every timed program
  as_written = jax.jit(lambda a, b: jnp.einsum("tsi,tso->tio", a, b))
  transposed = jax.jit(lambda a, b: jnp.einsum("tis,tso->tio", a, b))
  inline = jax.jit(lambda a, b: jnp.einsum("tis,tso->tio", jnp.swapaxes(a, 1, 2), b))
  barrier = jax.jit(lambda a, b: jnp.einsum("tis,tso->tio", jax.lax.optimization_barrier(jnp.swapaxes(a, 1, 2)), b))
  return {
    "einsum": lambda: [jax.block_until_ready(as_written(x, d))],
    "pretransposed": lambda: [jax.block_until_ready(transposed(xt, d))],
    "inline_swapaxes": lambda: [jax.block_until_ready(inline(x, d))],
    "barrier_transpose": lambda: [jax.block_until_ready(barrier(x, d))],
  }


def rows(outputs: list):
  """A variant's outputs as one host array (the halves joined along the task axis)."""
  import numpy as np

  return np.concatenate([np.asarray(o) for o in outputs])


def best_ms(fn: Callable[[], object], calls: int, reps: int) -> float:
  """Best over `reps` repetitions of the mean wall milliseconds of `calls` calls of `fn`, after one warm-up
  repetition (`bench_common.time_calls`)."""
  return float(bench_common.time_calls(lambda: [fn() for _ in range(calls)], reps).min()) / calls * 1e3


def inputs(tasks: int, support: int, width: int):
  import jax

  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  return jax.random.normal(kx, (tasks, support, width)), jax.random.normal(kw, (tasks, width, width)) * 0.1


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.devices > 1:  # before jax creates its CPU backend
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  x, w = inputs(args.tasks, args.support, args.width)
  if args.weight_grads:
    d = inputs(args.tasks, args.support, args.out_width)[0]
    variants = {f"wgrad_{k}": v for k, v in weight_grad_variants(x, d).items()}
  elif args.devices > 1:
    mesh = Mesh(jax.devices()[: args.devices], ("tasks",))
    x, w = (jax.device_put(a, NamedSharding(mesh, PartitionSpec("tasks"))) for a in (x, w))
    one, summed = programs(args.depth)
    calls = {f"whole_on_{args.devices}_devices": one, f"whole_summed_on_{args.devices}_devices": summed}
    variants = {name: (lambda f=f: [jax.block_until_ready(f(x, w))]) for name, f in calls.items()}
  else:
    variants = single_device_variants(x, w, args.depth)
  ms = {name: best_ms(fn, args.calls, args.reps) for name, fn in variants.items()}
  facts = bench_common.machine()
  what = (
    f"X^T D of [{args.tasks}, {args.support}, {args.width}] and [{args.tasks}, {args.support}, {args.out_width}]"
    if args.weight_grads
    else f"{args.depth} layers of [{args.tasks}, {args.support}, {args.width}] x [{args.tasks}, {args.width}, "
    f"{args.width}]"
  )
  print(f"{what} per call; {facts['cpu']}, {facts['cores']} usable cores, load {bench_common.load_avg()}")
  for name, t in ms.items():
    conc = f"  concurrency {2 * ms['half'] / t:.2f}" if name.startswith("two_") else ""
    print(f"  {name:28s} {t:8.3f} ms{conc}")
    if not args.no_csv:
      figures = {"concurrency": 2 * ms["half"] / t} if name.startswith("two_") else {}
      keys = ("tasks", "support", "width", "depth", "calls", "reps", "devices")
      params = {k: getattr(args, k) for k in keys + (("out_width",) if args.weight_grads else ())}
      bench_common.append_row("cpu_concurrency", name, t, "ms/call", figures, params)
  for name, fn in variants.items() if args.op_profile else ():
    kinds, traced_s = op_profile.profile(lambda fn=fn: [fn() for _ in range(args.calls)], args.calls, args.op_profile)
    op_ms = sum(r["ms_per_step"] for r in kinds)
    print(
      f"  {name}: {op_ms:.3f} ms of op time per call in {traced_s * 1e3:.3f} ms under the tracer "
      f"({op_ms / (traced_s * 1e3):.2f} ops running at once on average)"
    )
    print(op_profile.format_rows(kinds))


if __name__ == "__main__":
  main()
