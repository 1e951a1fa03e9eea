"""FLOP accounting for the benchmarks: the machine's measured matmul peak and a program's matmul FLOPs.

    peak = peak_matmul_flops()                        # f32 FLOP/s of a large jitted matmul, in this process
    n = dot_flops(learner.task_grad, meta_params, task, key)   # matmul FLOPs of one call (scan bodies x length)
    line = TaskFlops.fit(learner.task_grad, meta_params, task, key)
    line(s, q)                                       # FLOPs of one task with support s and query q, unpadded

FLOPs are counted on the jaxpr, not by XLA's cost analysis: XLA counts a `while` loop's body once, so a
5-step inner loop would read as 1 step. Only `dot_general` is counted (2 * batch * M * N * K), the convention
of model-FLOP utilisation against a matmul peak; gathers and elementwise work are not FLOPs here. A `scan`
multiplies its body by its length, `cond` takes its most expensive branch, and a `while` loop (trip count
unknown at trace time) is refused rather than guessed.

"Useful" FLOPs of a batch count each real task at its own support and query length, so padding (supports
padded to the bucket of the longest in the batch) is work done but not useful work.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _sub_jaxprs(value) -> list:
  """The jaxprs held by one equation parameter (a Jaxpr, a ClosedJaxpr, or a tuple of them)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax.extend.core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _dot_general_flops(eqn) -> int:
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
  # out = batch dims + lhs free dims + rhs free dims; each output element is a K-long dot product.
  k = math.prod(lhs[d] for d in lhs_contract)
  return 2 * math.prod(out) * k


def jaxpr_dot_flops(jaxpr) -> int:
  """Matmul FLOPs of one evaluation of `jaxpr` (a `jax.extend.core.Jaxpr`), sub-programs included."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
      continue
    if name == "while":
      raise ValueError("dot_flops cannot count a while loop (unknown trip count); use lax.scan with a length")
    if name == "cond":
      total += max(jaxpr_dot_flops(j) for j in _sub_jaxprs(eqn.params["branches"]))
      continue
    inner = sum(jaxpr_dot_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
    total += inner * (int(eqn.params["length"]) if name == "scan" else 1)
  return total


def dot_flops(fn: Callable, *args) -> int:
  """Matmul FLOPs of one call `fn(*args)` (traced, not run)."""
  return jaxpr_dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _with_length(x: dict, length: int) -> dict:
  """An examples dict [L, ...] resized to [length, ...] (rows repeated; FLOPs depend on shapes only)."""
  return {k: np.resize(np.asarray(v), (length, *np.shape(v)[1:])) for k, v in x.items()}


@dataclasses.dataclass(frozen=True)
class TaskFlops:
  """FLOPs of one task as `base + per_support * s + per_query * q` (exact for models linear in the rows)."""

  base: float
  per_support: float
  per_query: float

  @classmethod
  def fit(cls, task_fn: Callable, params, task: dict, key: jax.Array) -> TaskFlops:
    """Fits the line from `task_fn(params, task, key)` traced at three (support, query) lengths and checks
    it at a fourth (ValueError if the count is not linear in the lengths).

    Args:
      task_fn: one task's function, e.g. a learner's `task_grad`.
      params: its parameters.
      task: one task {"support": x[S], "query": x[Q]} (lengths are changed, contents do not matter).
      key: its PRNG key.
    """
    at = lambda s, q: dot_flops(
      task_fn, params, {"support": _with_length(task["support"], s), "query": _with_length(task["query"], q)}, key
    )
    f00, f10, f01 = at(10, 10), at(30, 10), at(10, 30)
    line = cls(0.0, (f10 - f00) / 20, (f01 - f00) / 20)
    line = dataclasses.replace(line, base=f00 - 10 * line.per_support - 10 * line.per_query)
    check = at(57, 13)
    if not math.isclose(line(57, 13), check, rel_tol=1e-9):
      raise ValueError(f"task FLOPs are not linear in the lengths: fitted {line(57, 13)}, counted {check}")
    return line

  def __call__(self, s, q):
    return self.base + self.per_support * np.asarray(s, np.float64) + self.per_query * np.asarray(q, np.float64)

  def batch(self, batch: dict) -> tuple[float, float]:
    """(useful, executed) FLOPs of a [N, T, ...] or [T, ...] task batch: real tasks at their real lengths, and
    every task slot at the padded widths."""
    s = np.asarray(batch["support"]["mask"])
    q = np.asarray(batch["query"]["mask"])
    real = np.asarray(batch["task_mask"], bool)
    useful = float(np.sum(np.where(real, self(s.sum(-1), q.sum(-1)), 0.0)))
    executed = float(real.size * self(s.shape[-1], q.shape[-1]))
    return useful, executed


def peak_matmul_size() -> int:
  """The side of the square matmul that measures this process's peak: 2048 on CPU (~0.2 s at the ~100 GFLOP/s of
  a few cores), 8192 on an accelerator (a 2048^2 product takes ~40 us on a GPU, much of it launch)."""
  return 2048 if jax.default_backend() == "cpu" else 8192


def peak_matmul_flops(n: int | None = None, reps: int = 5) -> float:
  """f32 FLOP/s of a jitted [n, n] @ [n, n] on this process's default device: the best of `reps` timed calls
  (2 n^3 FLOPs each) after a warm-up; all the process's threads take part, as in the benchmarked step.

  n: the side; None takes `peak_matmul_size()`. The matmul runs at JAX's default precision, as the benchmarked
  steps do (on an NVIDIA GPU since Ampere that is TF32 for f32 inputs unless jax_default_matmul_precision says
  otherwise), so the peak and the step are measured alike."""
  n = peak_matmul_size() if n is None else n
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best
