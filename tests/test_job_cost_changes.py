"""The main job's cost changes (issue 13): rarely-run programs compiled at a lower XLA level give the same bits,
and experiments/job_cost.py's per-thread CPU accounting and state hash.

The initialiser and the selection are compiled with `xla_options.RARE_PROGRAM`; their outputs must equal, bit for
bit, the same functions compiled with XLA's default options (an independent `jax.jit`), else the job's results
would move.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time

import jax
import numpy as np
import optax

from experiments import job_cost
from transfer_meta import step, train, xla_options


def test_init_at_the_rare_level_equals_the_default_level_bit_for_bit():
  # Both levels explicit: the suite's XLA_FLAGS set level 0 (tests/conftest.py), which per-program options override.
  learner, example = job_cost.small_melu_example()
  fn = functools.partial(step.init_one, learner, optax.adam(1e-3), example)
  default = jax.jit(fn, compiler_options={xla_options.LEVEL: 3})  # XLA's default level
  rare = jax.jit(fn, compiler_options=xla_options.RARE_PROGRAM)
  keys, _ = train.seed_keys([0, 1, 3])
  for n in range(keys.shape[0]):
    want, got = _leaves(default(keys[n])), _leaves(rare(keys[n]))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
      assert g.dtype == w.dtype and g.shape == w.shape
      np.testing.assert_array_equal(g, w)
  first, second = (max(_leaves(rare(k)), key=np.size) for k in keys[:2])  # the largest leaf: drawn, not zeros
  assert np.std(first) > 0 and not np.array_equal(first, second)  # seeds differ: the check compared real draws


def test_rare_options_never_raise_a_lower_level_from_xla_flags():
  assert xla_options.rare_options({}) == {xla_options.LEVEL: 1}
  assert xla_options.rare_options({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}) == {xla_options.LEVEL: 1}
  assert xla_options.rare_options({"XLA_FLAGS": "--xla_backend_optimization_level=3"}) == {xla_options.LEVEL: 1}
  assert xla_options.rare_options({"XLA_FLAGS": "--a=1 --xla_backend_optimization_level=0"}) is None
  assert xla_options.rare_options({"XLA_FLAGS": "--xla_backend_optimization_level=1"}) is None
  # XLA reads the last occurrence of a flag.
  flags = "--xla_backend_optimization_level=0 --xla_backend_optimization_level=2"
  assert xla_options.rare_options({"XLA_FLAGS": flags}) == {xla_options.LEVEL: 1}
  # The returned dict is a copy: a caller mutating it cannot change the module's constant.
  xla_options.rare_options({})[xla_options.LEVEL] = 9
  assert xla_options.RARE_PROGRAM == {xla_options.LEVEL: 1}


def test_select_at_the_rare_level_picks_per_seed():
  rng = np.random.default_rng(0)
  best = {"w": rng.normal(size=(3, 4, 2)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  current = {"w": rng.normal(size=(3, 4, 2)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  improved = np.array([True, False, True])
  out = step._select(best, current, improved)
  for name in best:
    want = np.stack([current[name][n] if improved[n] else best[name][n] for n in range(3)])
    np.testing.assert_array_equal(np.asarray(out[name]), want)


def test_jit_rare_passes_the_options_to_xla():
  # An option XLA rejects proves the options reach the compiler (a silently dropped dict would compile fine).
  f = lambda x: x * 2.0 + 1.0  # noqa: E731
  np.testing.assert_array_equal(np.asarray(xla_options.jit_rare(f)(np.arange(3.0))), [1.0, 3.0, 5.0])
  bad = jax.jit(f, compiler_options={**xla_options.RARE_PROGRAM, "xla_no_such_option_u5": 1})
  try:
    bad(np.arange(3.0))
  except Exception as e:  # jax raises a backend error naming the unknown option
    assert "xla_no_such_option_u5" in str(e)
  else:
    raise AssertionError("an unknown XLA option was accepted: compiler_options are not reaching XLA")


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _burn_named(name: bytes, seconds: float, readings: list) -> None:
  """Names this thread `name`, burns `seconds` of its own CPU, then reads `job_cost.thread_cpu()` from inside
  itself (so the reading is taken while the thread is certainly alive) into `readings`."""
  ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME: the thread's comm
  end = time.thread_time() + seconds
  while time.thread_time() < end:
    pass
  readings.append(job_cost.thread_cpu())


def test_thread_cpu_charges_a_named_thread():
  before, readings = job_cost.thread_cpu(), []
  t = threading.Thread(target=_burn_named, args=(b"u5_burner", 0.3, readings))
  t.start()
  t.join()
  assert len(readings) == 1, "the burner thread did not finish its work"
  delta = job_cost.thread_delta(before, readings[0])
  assert 0.1 <= delta.get("u5_burner", 0.0) <= 0.35, delta
  assert all(v > 0 for v in delta.values()) and list(delta.values()) == sorted(delta.values(), reverse=True)


def test_tree_hash_sees_one_ulp():
  tree = {"a": np.linspace(0, 1, 7, dtype=np.float32), "b": np.arange(3)}
  same = {"a": tree["a"].copy(), "b": tree["b"].copy()}
  moved = {"a": tree["a"].copy(), "b": tree["b"]}
  moved["a"][3] = np.nextafter(moved["a"][3], np.float32(2))
  assert job_cost.tree_hash(tree) == job_cost.tree_hash(same)
  assert job_cost.tree_hash(tree) != job_cost.tree_hash(moved)
