"""Bound the suite's persistent compilation cache ONCE per run instead of on every write (a pytest plugin).

jax's size-bounded cache (`jax_compilation_cache_max_size` > 0, jax/_src/lru_cache.py) lists the whole cache
directory, stats every entry and reads every entry's access-time file on EVERY write, to decide what to evict:
a write costs ~45–55 CPU-µs per entry already there (`python tests/compile_cache_prune.py --bench`, two runs at load
12–15: 5.6–5.8, 22.6–24.2 and 45.9–54.0 CPU-ms per write at 100, 500 and 1,000 entries),
so a cold run that writes n entries pays ~45 µs × n²/2 in scans.
Eager op-by-op dispatch compiles, and so writes, every primitive: the nine files tests/test_learners,
test_learner_maths, test_models, test_chunking, test_learner_state, test_add_learner_example, test_lwa, test_metrics
and test_ranking_eval write 2,081 entries in one cold run (~100 CPU-s of scans by that rule), and the files late in
a run pay most (test_lwa 9.1 CPU-s in the whole-suite run of fe0433f, which had no bound; 42.8 at the end of those
nine files with it).

This plugin keeps the bound and drops the per-write scan: after the configuration (tests/conftest.py's, which sets
the bound) it switches jax's bound off for the run (and for subprocesses, through JAX_COMPILATION_CACHE_MAX_SIZE),
and at the end of the run evicts least-recently-used entries down to the same bound, once (`prune_lru`). Recency is
jax's access-time record where it has one, else the entry's modification time (entries written while the bound was
off have no record). Use: `PYTHONPATH=tests python -m pytest -p compile_cache_prune ...` (measured that way), or,
at the end of conftest.py's `pytest_configure`, `config.pluginmanager.register(compile_cache_prune)` (pytest calls
a late plugin's `pytest_configure` too; not tried here). tests/test_compile_cache_dir.py's check that jax's bound
equals MAX_CACHE_BYTES would then read `compile_cache_prune._BOUND["max_bytes"]` instead.
"""

from __future__ import annotations

import heapq
import os
import sys

import pytest

CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # jax/_src/lru_cache.py's file names: <key>-cache, <key>-atime
_BOUND: dict = {}


def _recency_ns(path: str, key: str) -> int:
  """When entry `key` was last used: jax's access-time record (ns, little-endian), else the entry's mtime."""
  try:
    with open(os.path.join(path, key + ATIME_SUFFIX), "rb") as f:
      return int.from_bytes(f.read(), "little")
  except FileNotFoundError:
    return os.stat(os.path.join(path, key + CACHE_SUFFIX)).st_mtime_ns


def prune_lru(path: str, max_bytes: int) -> list[str]:
  """Evicts least-recently-used entries of a jax compilation-cache directory until its entries total <= max_bytes.

  Args:
    path: the cache directory (`jax_compilation_cache_dir`); a missing directory holds nothing.
    max_bytes: the bound, >= 0 (the sizes of the `<key>-cache` files are summed).
  Returns:
    The evicted keys, oldest first (each entry's `-cache` and `-atime` files are removed).
  """
  if max_bytes < 0:
    raise ValueError(f"max_bytes={max_bytes} must be >= 0")
  if not os.path.isdir(path):
    return []
  entries, total = [], 0
  for name in os.listdir(path):
    if name.endswith(CACHE_SUFFIX):
      key = name[: -len(CACHE_SUFFIX)]
      size = os.stat(os.path.join(path, name)).st_size
      total += size
      entries.append((_recency_ns(path, key), key, size))
  heapq.heapify(entries)
  evicted = []
  while total > max_bytes:
    _, key, size = heapq.heappop(entries)
    for suffix in (CACHE_SUFFIX, ATIME_SUFFIX):
      try:
        os.remove(os.path.join(path, key + suffix))
      except FileNotFoundError:
        pass
    total -= size
    evicted.append(key)
  return evicted


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
  """After conftest.py set the bound: remember it, and switch jax's per-write eviction off for the run."""
  import jax

  path, bound = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
  if not path or bound is None or bound <= 0:  # no cache, or unbounded already: nothing to defer
    return
  _BOUND.update(path=path, max_bytes=bound)
  jax.config.update("jax_compilation_cache_max_size", -1)
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = "-1"  # subprocesses: no per-write scan either


def pytest_unconfigure(config: pytest.Config) -> None:
  """At the end of the run: one least-recently-used pass down to the bound."""
  if _BOUND:
    prune_lru(_BOUND["path"], _BOUND["max_bytes"])


def _bench(counts=(100, 500, 1000)) -> None:
  """CPU-ms of one bounded jax cache write at several directory sizes (20-KB entries, a temporary directory)."""
  import resource
  import tempfile

  from jax._src.lru_cache import LRUCache

  cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731
  with tempfile.TemporaryDirectory() as d:
    cache, blob, n = LRUCache(d, max_size=2 << 30), b"x" * 20000, 0
    for target in counts:
      while n < target:
        cache.put(f"k{n}", blob)
        n += 1
      t0 = cpu()
      for i in range(20):
        cache.put(f"probe{target}_{i}", blob)
      n += 20
      print(f"{target} entries: {(cpu() - t0) / 20 * 1e3:.1f} CPU-ms per write", flush=True)


if __name__ == "__main__" and "--bench" in sys.argv:
  _bench()
