"""Bound the suite's persistent compilation cache ONCE per run instead of on every write.

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

So the suite runs jax's cache unbounded and tests/conftest.py calls `prune_lru` once, when the run ends, down to
the same bound. Recency is jax's access-time record where one exists (entries written by a bounded jax), else the
entry file's own access or modification time, whichever is later (a cache hit reads the file, which moves its
atime where the filesystem records reads). `python tests/compile_cache_prune.py --bench` prints the per-write cost.
"""

from __future__ import annotations

import heapq
import os
import sys

CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # jax/_src/lru_cache.py's file names: <key>-cache, <key>-atime


def _recency_ns(path: str, key: str) -> int:
  """When entry `key` was last used: jax's access-time record (ns, little-endian), else the entry file's later
  of atime and mtime."""
  try:
    with open(os.path.join(path, key + ATIME_SUFFIX), "rb") as f:
      return int.from_bytes(f.read(), "little")
  except FileNotFoundError:
    st = os.stat(os.path.join(path, key + CACHE_SUFFIX))
    return max(st.st_atime_ns, st.st_mtime_ns)


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
