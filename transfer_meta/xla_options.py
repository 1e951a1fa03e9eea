"""Per-program XLA compiler options: programs a job runs a handful of times compile at a lower LLVM level.

XLA's CPU backend spends much of a compile in LLVM's optimisation passes (`xla_backend_optimization_level`,
default 3). For a program called a few times per job those passes cost more CPU than they save. A lower level may
round differently, though (LLVM forms fused multiply-adds and vectorises differently), so a program is compiled
with `RARE_PROGRAM` only where its outputs were checked bit-identical to the default level's
(`python -m experiments.job_cost options [--small]`, tests/test_job_cost_changes.py):

- the per-seed initialiser (`step.make_init`): 4.2-4.4 -> 2.7-3.2 CPU-s on the MeLU ML-100K job (load ~15), the
  same bits for the job's model and a small synthetic MeLU (level 0 is not: a normal draw moved in the last bit);
- the per-seed selection (`step._select`, a `where` over the parameter tree): exact at any level.
- not the evaluation step: its metrics moved in the last bit at level 1.

An environment that already asks for a lower level (the test suite's `--xla_backend_optimization_level=0` in
XLA_FLAGS) keeps it: per-program options override XLA_FLAGS, and raising the suite's level would cost it compile time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import jax

LEVEL = "xla_backend_optimization_level"
RARE_LEVEL = 1
RARE_PROGRAM = {LEVEL: RARE_LEVEL}  # compiler options of the programs a job calls rarely


def rare_options(environ: Mapping[str, str] | None = None) -> dict | None:
  """`RARE_PROGRAM`, or None where XLA_FLAGS in `environ` (default `os.environ`) sets a level <= `RARE_LEVEL`."""
  flags = (os.environ if environ is None else environ).get("XLA_FLAGS", "")
  levels = re.findall(rf"--{LEVEL}=(-?\d+)", flags)
  if levels and int(levels[-1]) <= RARE_LEVEL:  # XLA reads the last occurrence
    return None
  return dict(RARE_PROGRAM)


def jit_rare(fn: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fn, **jit_kwargs)` compiled with `rare_options()` (read when called here: XLA_FLAGS as of now)."""
  return jax.jit(fn, compiler_options=rare_options(), **jit_kwargs)
