"""Reproduces XLA CPU's deadlock on more than 32 un-synced multi-device calls, and checks the trainer's loop.

    python -m experiments.repro_cpu_dispatch_deadlock --calls=300                # raw jax.jit: aborts after ~60 s
    python -m experiments.repro_cpu_dispatch_deadlock --calls=300 --window=16    # wait on the call 16 back: passes
    python -m experiments.repro_cpu_dispatch_deadlock --calls=300 --bounded      # transfer_meta.dispatch: passes
    NPROC=4 python -m experiments.repro_cpu_dispatch_deadlock --calls=300        # a 4-thread client pool: passes
    python -m experiments.repro_cpu_dispatch_deadlock --trainer --workdir=/tmp/probe   # see below

Minimal mode: a 2-device step with one all-reduce (the sum over the task axis split over the devices), called
`--calls` times without reading a result. Prints `OK` or dies in XLA's rendezvous ("Expected 2 threads to join",
then a fatal termination after 40 s); transfer_meta/dispatch.py explains the threads.

Trainer mode: `python -m transfer_meta.main` on configs/melu_ml100k.py:smoke with --config.length_groups=4, one
seed, 40 steps of melu and fomaml, on 2 devices, with `dispatch.bounded` REMOVED (the behaviour before the fix)
and a probe that counts, at each meta-step call, the earlier calls still running. Prints `PROBE {...}`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def minimal(calls: int, window: int, use_bound: bool) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from transfer_meta import dispatch, sharding

  mesh = sharding.make_mesh()
  xs = sharding.shard_batch(np.ones((8, 256, 256), np.float32), mesh, 0)
  w = sharding.replicate(np.eye(256, dtype=np.float32) * 0.5, mesh)
  step = jax.jit(lambda w, x: w * 0.999 + 1e-6 * jnp.sum(jnp.tanh(jnp.einsum("tij,jk->tik", x, w)), axis=0))
  step = dispatch.BoundedDispatch(step) if use_bound else step
  w = jax.block_until_ready(step(w, xs))
  t0, outs = time.perf_counter(), []
  for _ in range(calls):
    w = step(w, xs)
    outs.append(w)
    if window and len(outs) > window:
      outs.pop(0).block_until_ready()
  jax.block_until_ready(w)
  print(f"OK calls={calls} window={window} bounded={use_bound} {time.perf_counter() - t0:.2f} s", flush=True)


def trainer(workdir: str) -> None:
  import atexit

  from absl import app

  from transfer_meta import dispatch, main

  stats = {"calls": 0, "max_running": 0}

  class Probe:
    def __init__(self, fn):
      self.fn, self.outs = fn, []

    def __call__(self, *args):
      self.outs = [o for o in self.outs if not (o.is_deleted() or o.is_ready())]
      stats["max_running"] = max(stats["max_running"], len(self.outs))
      stats["calls"] += 1
      out = self.fn(*args)
      self.outs.append(next(iter(out[1].values())))  # a metrics leaf: never donated
      return out

    def __getattr__(self, name):
      return getattr(self.fn, name)

  dispatch.bounded = lambda fn, mesh, limit=dispatch.MAX_INFLIGHT: Probe(fn)
  atexit.register(lambda: print("PROBE", stats, flush=True))
  sys.argv = [
    "main",
    "--config=configs/melu_ml100k.py:smoke",
    f"--workdir={workdir}",
    "--config.length_groups=4",
    "--config.num_steps=40",
    "--config.compare_learners=('fomaml',)",
    "--config.seeds=1",
  ]
  app.run(main.main)


def main_(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--calls", type=int, default=300)
  p.add_argument("--window", type=int, default=0, help="wait on the call this many back (0: never)")
  p.add_argument("--bounded", action="store_true", help="wrap the step in transfer_meta.dispatch.BoundedDispatch")
  p.add_argument("--devices", type=int, default=2)
  p.add_argument("--trainer", action="store_true")
  p.add_argument("--workdir", default="/tmp/repro_cpu_dispatch_deadlock")
  args = p.parse_args(argv)
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()  # before jax
  if args.trainer:
    trainer(args.workdir)
  else:
    minimal(args.calls, args.window, args.bounded)
  return 0


if __name__ == "__main__":
  sys.exit(main_())
