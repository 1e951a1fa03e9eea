"""Persistent XLA compilation caches of runs (`--compilation_cache` of `transfer_meta.main` and `experiments/`).

`--compilation_cache=auto` (the default) puts a run's compiled programs in one cache per machine user, beside the
data cache: `<cache root>/jax_compilation_cache/runs` (`$TRANSFER_META_CACHE`, else `~/.cache/transfer_meta`), so
a second run of the same config, or a resumed run, or another workdir, loads them instead of compiling again
(jax keys every entry by the program's HLO, jax version, XLA flags and backend, so entries of other programs or
settings are never taken). That shared directory is bounded to `RUNS_MAX_BYTES` by one least-recently-used pass
when the process exits (`prune_lru`), not by jax's own bound (`jax_compilation_cache_max_size` lists and stats the
whole directory on every write, and needs the `filelock` package). A directory given explicitly is the caller's
and is never pruned; '' leaves the cache as jax's environment set it (off by default).

A run caches only compiles that took at least `MIN_COMPILE_SECS` (jax's `persistent_cache_min_compile_time_secs`):
reading a tiny program from disk costs about what compiling it does. A caller that chose its own threshold in the
environment (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`, read by jax at import; the test suite sets 0 so that
its subprocesses load every program it compiled before) keeps it: the command line's cache directory does not
override it.
"""

from __future__ import annotations

import atexit
import heapq
import os
from collections.abc import Mapping

import jax

MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
MIN_COMPILE_SECS = 0.5
AUTO = "auto"
RUNS_MAX_BYTES = 2 << 30  # the shared runs cache (make run's job writes 8 entries, 0.8 MB; the suite's bound too)
CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # jax/_src/lru_cache.py's file names: <key>-cache, <key>-atime
_PRUNE_AT_EXIT: set[str] = set()


def default_dir(environ: Mapping[str, str]) -> str:
  """The shared cache of runs: `<root>/jax_compilation_cache/runs`, root `$TRANSFER_META_CACHE` (the data cache's)
  else `~/.cache/transfer_meta`. The test suite's cache is the sibling `tests` (tests/conftest.py)."""
  root = environ.get("TRANSFER_META_CACHE") or os.path.join("~", ".cache", "transfer_meta")
  return os.path.join(os.path.expanduser(root), "jax_compilation_cache", "runs")


def resolve(value: str, environ: Mapping[str, str]) -> str:
  """`--compilation_cache`'s value as a directory: 'auto' -> `default_dir(environ)`; '' (off) and explicit
  directories as given."""
  return default_dir(environ) if value == AUTO else value


def settings(path: str, environ: Mapping[str, str]) -> dict[str, object]:
  """The jax config updates that put a run's persistent compilation cache in `path`.

  Args:
    path: the cache directory (already resolved); '' for none (jax's own settings, from its environment, stay).
    environ: the process environment (`os.environ`); a MIN_COMPILE_ENV in it is kept (jax already read it).
  Returns:
    {jax config option: value}: the cache directory, and `MIN_COMPILE_SECS` as the threshold unless the environment
    sets one; {} for path ''.
  """
  if not path:
    return {}
  out: dict[str, object] = {"jax_compilation_cache_dir": path}
  if MIN_COMPILE_ENV not in environ:
    out["jax_persistent_cache_min_compile_time_secs"] = MIN_COMPILE_SECS
  return out


def enable(value: str, environ: Mapping[str, str] | None = None) -> dict[str, object]:
  """Applies `settings(resolve(value), environ)` (default environment: `os.environ`) to `jax.config`; for 'auto'
  also bounds the shared directory to RUNS_MAX_BYTES when the process exits. Returns the applied settings."""
  environ = os.environ if environ is None else environ
  path = resolve(value, environ)
  chosen = settings(path, environ)
  for name, option in chosen.items():
    jax.config.update(name, option)
  if value == AUTO and path not in _PRUNE_AT_EXIT:
    _PRUNE_AT_EXIT.add(path)
    atexit.register(prune_lru, path, RUNS_MAX_BYTES)
  return chosen


def _recency_ns(path: str, key: str) -> int:
  """When entry `key` was last used: jax's access-time record (ns, little-endian), else the entry file's later
  of atime and mtime (a cache hit reads the file, which moves its atime where the filesystem records reads)."""
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
    The evicted keys, oldest first (each entry's `-cache` and `-atime` files are removed; an entry another process
    removed meanwhile is skipped).
  """
  if max_bytes < 0:
    raise ValueError(f"max_bytes={max_bytes} must be >= 0")
  if not os.path.isdir(path):
    return []
  entries, total = [], 0
  for name in os.listdir(path):
    if name.endswith(CACHE_SUFFIX):
      key = name[: -len(CACHE_SUFFIX)]
      try:
        size = os.stat(os.path.join(path, name)).st_size
        entries.append((_recency_ns(path, key), key, size))
      except FileNotFoundError:  # removed by a concurrent prune
        continue
      total += size
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
