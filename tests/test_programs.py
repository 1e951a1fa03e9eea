"""`transfer_meta.programs`: closures compared by value, programs reused only when provably the same, and a
reused strategy run bit for bit a fresh one."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from typing import NamedTuple

import jax
import ml_dtypes
import numpy as np
import optax

from transfer_meta import programs, runlog, stages, train
from transfer_meta.strategies import get_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Pair(NamedTuple):
  a: object
  b: object


def _make(scale, table, extra=None):
  def fn(x):
    return x * scale + table.sum() + (0 if extra is None else extra.a)

  return fn


def _other(scale, table, extra=None):
  def fn(x):
    return x * scale + table.sum() + (0 if extra is None else extra.a)

  return fn


def _key(obj):
  return programs.fingerprint(obj)[0]


def test_an_array_reached_again_is_hashed_once_and_keys_as_an_equal_copy(monkeypatch):
  """A model reaches the same table through many closures (the text tail's 83 MB catalogue states, ~13 times per
  meta-step fingerprint): each object is hashed once per call, and the key is the one equal copies give."""
  for a in (np.arange(12.0).reshape(3, 4).T, np.ones((0, 4)), np.ones(3, ml_dtypes.bfloat16), np.float32(1.5)):
    assert programs.array_digest(a) == hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
  table = np.arange(6, dtype=np.float32)
  hashed = []
  digest = programs.array_digest
  monkeypatch.setattr(programs, "array_digest", lambda a: hashed.append(a.shape) or digest(a))
  shared = _key((_make(2.0, table), _make(3.0, table), [table, {"t": table}]))
  assert hashed == [(6,)]
  copies = _key((_make(2.0, table.copy()), _make(3.0, table.copy()), [table.copy(), {"t": table.copy()}]))
  assert copies == shared and len(hashed) == 5  # distinct objects: each hashed


def test_equal_closures_share_a_fingerprint_and_any_difference_splits_it():
  table = np.arange(6, dtype=np.float32)
  base = _key(_make(2.0, table, Pair(1, "x")))
  assert _key(_make(2.0, table.copy(), Pair(1, "x"))) == base  # a fresh closure over equal values
  assert _key(_make(2.0, jax.numpy.asarray(table), Pair(1, "x"))) != base  # a jax array is not a numpy one
  different = [
    _make(2.5, table, Pair(1, "x")),  # a closure constant
    _make(2.0, table + 1, Pair(1, "x")),  # an array's contents
    _make(2.0, table.astype(np.float64), Pair(1, "x")),  # its dtype
    _make(2.0, table.reshape(2, 3), Pair(1, "x")),  # its shape
    _make(2.0, table, Pair(2, "x")),  # a NamedTuple field
    _make(2.0, table, (1, "x")),  # a plain tuple is not the NamedTuple
    _make(2, table, Pair(1, "x")),  # an int is not the float
    _make(2.0, table, Pair(True, "x")),  # True is not 1
    _other(2.0, table, Pair(1, "x")),  # other code over the same values
  ]
  keys = [_key(f) for f in different]
  assert base not in keys and len(set(keys)) == len(keys)
  assert _key(_make(0.0, table)) != _key(_make(-0.0, table))
  # Partials, dicts (in order), optimisers: by value.
  assert _key(functools.partial(_make, 1.0, table)) == _key(functools.partial(_make, 1.0, table.copy()))
  assert _key({"a": 1, "b": 2}) != _key({"b": 2, "a": 1})
  assert _key(optax.adam(1e-3)) == _key(optax.adam(1e-3)) != _key(optax.adam(2e-3))


def test_unknown_objects_compare_by_identity_and_are_kept_alive():
  class Box:
    pass

  box = Box()
  key, keep = programs.fingerprint(_make(1.0, np.zeros(2), Pair(box, 0)))
  assert any(k is box for k in keep)
  assert _key(_make(1.0, np.zeros(2), Pair(box, 0))) == key
  assert _key(_make(1.0, np.zeros(2), Pair(Box(), 0))) != key
  cycle: list = [1]
  cycle.append(cycle)  # reference cycles end
  assert _key(cycle) == _key(cycle)
  jitted = jax.jit(lambda x: x)
  assert _key(jitted) == _key(jitted) and _key(jitted) != _key(jax.jit(lambda x: x))


def test_cached_builds_once_per_key_and_evicts_the_least_recently_used(monkeypatch):
  monkeypatch.setattr(programs, "_PROGRAMS", type(programs._PROGRAMS)())
  monkeypatch.setattr(programs, "MAX_PROGRAMS", 2)
  built = []
  build = lambda n: lambda: built.append(n) or n  # noqa: E731
  assert programs.cached("k", (1.0,), build(1)) == 1
  assert programs.cached("k", (1.0,), build(9)) == 1 and built == [1]  # the same key: not rebuilt
  assert programs.cached("other", (1.0,), build(2)) == 2  # another kind keeps its own entry
  programs.cached("k", (1.0,), build(9))  # touch: the 'other' entry is now the oldest
  assert programs.cached("k", (3.0,), build(3)) == 3
  assert programs.cached("other", (1.0,), build(4)) == 4 and built == [1, 2, 3, 4]  # evicted, rebuilt
  programs.clear()
  assert programs.cached("k", (1.0,), build(5)) == 5


def _cmf_experiment():
  path = os.path.join(ROOT, "configs", "cross_domain_synthetic.py")
  spec = importlib.util.spec_from_file_location("cfg_cross_domain_synthetic_programs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("cmf,tiny")
  config.unlock()
  config.seeds = 1
  return config, train.build_experiment(config)


def _run(config, exp):
  strategy = get_strategy("cmf", exp.model, config, exp.spec, exp=exp, **config.strategy)
  workdir = tempfile.mkdtemp()
  trained, _ = stages.run_strategy(exp, strategy, workdir, runlog.MetricsLog(f"{workdir}/m.jsonl", ["cmf"]))
  return jax.device_get(trained.selection.params), trained


def test_a_rebuilt_strategy_reuses_its_programs_bit_for_bit():
  """Two experiments and strategies built alike: the second run builds no program and ends bit for bit where a
  fresh build ends; a strategy with another learning rate gets programs of its own."""
  programs.clear()
  config, exp = _cmf_experiment()
  fresh, first = _run(config, exp)
  misses = programs.STATS["misses"]
  again, second = _run(*_cmf_experiment())
  assert programs.STATS["misses"] == misses  # every program reused
  assert second.eval_step is first.eval_step
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(again), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  stage = lambda c: get_strategy("cmf", exp.model, c, exp.spec, exp=exp, **c.strategy).stages[0]  # noqa: E731
  faster = config.copy_and_resolve_references()
  faster.strategy.learning_rate = 0.5
  assert _key((stage(config).grad_fn, stage(config).tx)) == _key((stage(config).grad_fn, stage(config).tx))
  assert _key(stage(config).tx) != _key(stage(faster).tx)
