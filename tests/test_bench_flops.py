"""experiments/bench_flops.py: matmul FLOPs counted on the jaxpr, checked against hand counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_flops

M, K, N, L = 3, 5, 7, 4


def test_matmul_batched_matmul_and_scan_lengths_are_counted():
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  assert bench_flops.dot_flops(lambda x, y: x @ y, a, b) == 2 * M * K * N
  batched = jnp.ones((L, M, K)), jnp.ones((L, K, N))
  assert bench_flops.dot_flops(lambda x, y: jnp.einsum("lmk,lkn->lmn", x, y), *batched) == 2 * L * M * K * N

  def scanned(x, y):  # L steps of x @ y @ y.T inside a jitted scan
    body = lambda c, _: (jnp.tanh(c @ y) @ y.T, None)
    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=L)[0])(x)

  assert bench_flops.dot_flops(scanned, a, b) == L * (2 * M * K * N + 2 * M * N * K)
  # The gradient of one matmul w.r.t. both inputs is two more matmuls of the same size.
  assert bench_flops.dot_flops(jax.grad(lambda x, y: jnp.sum(x @ y), argnums=(0, 1)), a, b) == 3 * 2 * M * K * N


def test_cond_counts_its_dearest_branch_and_while_is_refused():
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  cond = lambda p, x, y: jax.lax.cond(p, lambda: (x @ y) @ y.T, lambda: x)
  assert bench_flops.dot_flops(cond, True, a, b) == 2 * (2 * M * K * N)
  loop = lambda x, y: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.tanh(c[0] @ y) @ y.T, c[1] + 1), (x, 0))
  with pytest.raises(ValueError, match="while loop"):
    bench_flops.dot_flops(loop, a, b)


def test_task_line_matches_direct_counts_and_splits_useful_from_executed():
  w = jnp.ones((K, N))

  def task_fn(params, task, key):  # a "task" costing 2KN per support row and 4KN per query row
    del key
    s = task["support"]["x"] @ params
    q = (task["query"]["x"] @ params) @ params.T @ params
    return jnp.sum(s) + jnp.sum(q)

  task = {"support": {"x": np.ones((6, K), np.float32)}, "query": {"x": np.ones((2, K), np.float32)}}
  line = bench_flops.TaskFlops.fit(task_fn, w, task, jax.random.key(0))
  assert (line.base, line.per_support, line.per_query) == (0.0, 2 * K * N, 3 * 2 * K * N)
  assert line(6, 2) == bench_flops.dot_flops(task_fn, w, task, jax.random.key(0))
  # Two task slots padded to S=4, Q=3: the first real with 1 support and 2 query rows, the second a padded task.
  mask = lambda rows, width: np.arange(width)[None, :] < np.asarray(rows)[:, None]
  batch = {"support": {"mask": mask([1, 0], 4)}, "query": {"mask": mask([2, 0], 3)}, "task_mask": np.array([1, 0])}
  useful, executed = line.batch(batch)
  assert useful == line(1, 2) and executed == 2 * line(4, 3)


def test_peak_is_2n3_over_the_fastest_call(monkeypatch):
  ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])  # three timed calls: 0.5 s, 0.25 s, 1.0 s
  monkeypatch.setattr(bench_flops.time, "perf_counter", lambda: next(ticks))
  assert bench_flops.peak_matmul_flops(n=64, reps=3) == 2.0 * 64**3 / 0.25
