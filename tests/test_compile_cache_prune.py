"""transfer_meta/compile_cache.py's `prune_lru` (re-exported by tests/compile_cache_prune.py): one
least-recently-used pass over a jax compilation-cache directory, checked against jax's own bounded cache (the files
it writes) and by hand; and where runs' `--compilation_cache=auto` puts its bounded shared cache."""

from __future__ import annotations

import os

import pytest
from compile_cache_prune import ATIME_SUFFIX, CACHE_SUFFIX, prune_lru
from jax._src.lru_cache import LRUCache

from transfer_meta import compile_cache


def _entry(path, key: str, size: int, atime_ns: int | None, mtime_ns: int) -> None:
  with open(os.path.join(path, key + CACHE_SUFFIX), "wb") as f:
    f.write(b"x" * size)
  os.utime(os.path.join(path, key + CACHE_SUFFIX), ns=(mtime_ns, mtime_ns))
  if atime_ns is not None:
    with open(os.path.join(path, key + ATIME_SUFFIX), "wb") as f:
      f.write(atime_ns.to_bytes(8, "little"))


def test_evicts_oldest_first_by_access_record_else_mtime(tmp_path):
  # Recency: a 10, b 40 (record), c 30 (no record: its mtime), d 20 (the record wins over a newer mtime).
  _entry(tmp_path, "a", 100, 10, 5)
  _entry(tmp_path, "b", 100, 40, 5)
  _entry(tmp_path, "c", 100, None, 30)
  _entry(tmp_path, "d", 100, 20, 99)
  assert prune_lru(str(tmp_path), 400) == []  # at the bound: nothing goes
  assert prune_lru(str(tmp_path), 250) == ["a", "d"]  # 400 -> 200 bytes
  assert sorted(os.listdir(tmp_path)) == ["b-atime", "b-cache", "c-cache"]
  assert prune_lru(str(tmp_path), 0) == ["c", "b"]
  assert os.listdir(tmp_path) == []


def test_agrees_with_jax_bounded_cache(tmp_path):
  """Entries written and read through jax's LRUCache: the pass evicts what jax's own eviction would."""
  cache = LRUCache(str(tmp_path), max_size=10_000)
  for key in ("k0", "k1", "k2", "k3"):
    cache.put(key, b"y" * 1000)
  assert cache.get("k0") == b"y" * 1000  # k0 used last: k1 is now the least recently used
  assert prune_lru(str(tmp_path), 3000) == ["k1"]
  assert cache.get("k1") is None and cache.get("k0") is not None
  jax_side = LRUCache(str(tmp_path), max_size=2000)  # jax evicts to fit a new 1000-byte entry: k2 and k3 go
  jax_side.put("k4", b"z" * 1000)
  assert sorted(n for n in os.listdir(tmp_path) if n.endswith(CACHE_SUFFIX)) == ["k0-cache", "k4-cache"]


def test_missing_directory_and_bad_bound(tmp_path):
  assert prune_lru(str(tmp_path / "absent"), 0) == []
  with pytest.raises(ValueError, match="max_bytes=-1 must be >= 0"):
    prune_lru(str(tmp_path), -1)


def test_runs_share_one_cache_per_user_beside_the_data_cache():
  """`--compilation_cache=auto` (transfer_meta.main and experiments/): one directory per machine user, sibling of
  the suite's `tests` cache; '' and explicit directories pass through."""
  home = os.path.join(os.path.expanduser("~"), ".cache", "transfer_meta", "jax_compilation_cache", "runs")
  assert compile_cache.resolve("auto", {}) == compile_cache.default_dir({}) == home
  assert compile_cache.resolve("auto", {"TRANSFER_META_CACHE": "/data/tm"}) == "/data/tm/jax_compilation_cache/runs"
  assert compile_cache.resolve("", {"TRANSFER_META_CACHE": "/data/tm"}) == ""
  assert compile_cache.resolve("/scratch/c", {}) == "/scratch/c"


def test_enable_auto_bounds_the_shared_cache_at_exit_and_leaves_explicit_ones(tmp_path, monkeypatch):
  """`enable('auto')` registers one least-recently-used pass over the shared directory for process exit (once per
  directory); an explicit directory is the caller's and is never pruned. jax's config is recorded, not changed."""
  applied, registered = [], []
  monkeypatch.setattr(compile_cache.jax.config, "update", lambda name, value: applied.append((name, value)))
  monkeypatch.setattr(compile_cache.atexit, "register", lambda fn, *args: registered.append((fn, args)))
  monkeypatch.setattr(compile_cache, "_PRUNE_AT_EXIT", set())
  env = {"TRANSFER_META_CACHE": str(tmp_path)}
  shared = str(tmp_path / "jax_compilation_cache" / "runs")
  for _ in range(2):
    assert compile_cache.enable("auto", env) == {
      "jax_compilation_cache_dir": shared,
      "jax_persistent_cache_min_compile_time_secs": compile_cache.MIN_COMPILE_SECS,
    }
  compile_cache.enable(str(tmp_path / "mine"), env)
  assert compile_cache.enable("", env) == {}
  assert [d for name, d in applied if name == "jax_compilation_cache_dir"] == [shared, shared, str(tmp_path / "mine")]
  assert registered == [(compile_cache.prune_lru, (shared, compile_cache.RUNS_MAX_BYTES))]
  # What the exit hook does, at a bound small enough to see: the older entry goes.
  os.makedirs(shared)
  _entry(shared, "old", 100, 10, 5)
  _entry(shared, "new", 100, 20, 5)
  fn, (path, _) = registered[0]
  assert fn(path, 150) == ["old"] and sorted(os.listdir(shared)) == ["new-atime", "new-cache"]
