"""A run's persistent XLA compilation cache (`--compilation_cache` of `transfer_meta.main` and `experiments/`).

A run caches only compiles that took at least `MIN_COMPILE_SECS` (jax's `persistent_cache_min_compile_time_secs`):
reading a tiny program from disk costs about what compiling it does. A caller that chose its own threshold in the
environment (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`, read by jax at import; the test suite sets 0 so that
its subprocesses load every program it compiled before) keeps it: the command line's cache directory does not
override it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
MIN_COMPILE_SECS = 0.5


def settings(path: str, environ: Mapping[str, str]) -> dict[str, object]:
  """The jax config updates that put a run's persistent compilation cache in `path`.

  Args:
    path: the cache directory; '' for none (jax's own settings, from its environment, stay as they are).
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


def enable(path: str, environ: Mapping[str, str] | None = None) -> dict[str, object]:
  """Applies `settings(path, environ)` (default environment: `os.environ`) to `jax.config`; returns them."""
  chosen = settings(path, os.environ if environ is None else environ)
  for name, value in chosen.items():
    jax.config.update(name, value)
  return chosen
