"""Where the suite's persistent compilation cache lives (tests/conftest.py), and that this run uses it."""

from __future__ import annotations

import os

import compile_cache_prune
import conftest
import jax
import pytest
from conftest import CACHE_ENV, MAX_CACHE_BYTES, cache_dir


def test_default_is_beside_the_data_cache_under_home():
  want = os.path.join(os.path.expanduser("~"), ".cache", "transfer_meta", "jax_compilation_cache", "tests")
  assert cache_dir({}) == want


def test_data_cache_root_moves_it_and_the_explicit_setting_wins():
  assert cache_dir({"TRANSFER_META_CACHE": "/data/tm"}) == "/data/tm/jax_compilation_cache/tests"
  assert cache_dir({"TRANSFER_META_CACHE": "/data/tm", CACHE_ENV: "/scratch/c"}) == "/scratch/c"
  assert cache_dir({CACHE_ENV: "off", "TRANSFER_META_CACHE": "/data/tm"}) is None


def test_this_run_compiles_through_it_unbounded_and_prunes_at_the_end(tmp_path, monkeypatch):
  path = cache_dir(os.environ)
  if path is None:  # TRANSFER_META_TEST_JAX_CACHE=off: nothing configured
    assert os.environ.get(CACHE_ENV) == "off"
    return
  assert jax.config.jax_compilation_cache_dir == path
  assert os.environ["JAX_COMPILATION_CACHE_DIR"] == path  # what subprocesses inherit
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  # No per-write directory scan (jax's own bound), here or in subprocesses: the bound is applied once, at the end.
  assert jax.config.jax_compilation_cache_max_size == -1
  assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "-1"
  assert os.path.isdir(path)
  # The end-of-run hook prunes the directory the environment names, down to MAX_CACHE_BYTES.
  seen = []
  monkeypatch.setattr(compile_cache_prune, "prune_lru", lambda p, n: seen.append((p, n)) or [])
  monkeypatch.setenv(CACHE_ENV, str(tmp_path))
  conftest.pytest_unconfigure(None)
  assert seen == [(str(tmp_path), MAX_CACHE_BYTES)]
  monkeypatch.setenv(CACHE_ENV, "off")
  conftest.pytest_unconfigure(None)
  assert len(seen) == 1


def test_min_compile_threshold_defaults_to_every_compile_and_refuses_bad_values():
  assert conftest.min_compile_secs({}) == 0.0
  assert conftest.min_compile_secs({conftest.MIN_COMPILE_ENV: "0.1"}) == 0.1
  for bad in ("fast", "-1", "nan"):
    with pytest.raises(ValueError, match=conftest.MIN_COMPILE_ENV):
      conftest.min_compile_secs({conftest.MIN_COMPILE_ENV: bad})
