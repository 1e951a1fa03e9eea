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

So the suite runs jax's cache unbounded and tests/conftest.py calls `prune_lru` (transfer_meta/compile_cache.py,
which bounds the shared cache of runs the same way) once, when the run ends, down to
the same bound. Recency is jax's access-time record where one exists (entries written by a bounded jax), else the
entry file's own access or modification time, whichever is later (a cache hit reads the file, which moves its
atime where the filesystem records reads). `python tests/compile_cache_prune.py --bench` prints the per-write cost.
"""

from __future__ import annotations

import sys

from transfer_meta.compile_cache import ATIME_SUFFIX, CACHE_SUFFIX, prune_lru  # noqa: F401  (the suite's names)


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
