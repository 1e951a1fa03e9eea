"""Where the suite's persistent compilation cache lives (tests/conftest.py), and that this run uses it."""

from __future__ import annotations

import os

import jax
from conftest import CACHE_ENV, MAX_CACHE_BYTES, cache_dir


def test_default_is_beside_the_data_cache_under_home():
  want = os.path.join(os.path.expanduser("~"), ".cache", "transfer_meta", "jax_compilation_cache", "tests")
  assert cache_dir({}) == want


def test_data_cache_root_moves_it_and_the_explicit_setting_wins():
  assert cache_dir({"TRANSFER_META_CACHE": "/data/tm"}) == "/data/tm/jax_compilation_cache/tests"
  assert cache_dir({"TRANSFER_META_CACHE": "/data/tm", CACHE_ENV: "/scratch/c"}) == "/scratch/c"
  assert cache_dir({CACHE_ENV: "off", "TRANSFER_META_CACHE": "/data/tm"}) is None


def test_this_run_compiles_through_it_with_eviction():
  path = cache_dir(os.environ)
  if path is None:  # TRANSFER_META_TEST_JAX_CACHE=off: nothing configured
    assert os.environ.get(CACHE_ENV) == "off"
    return
  assert jax.config.jax_compilation_cache_dir == path
  assert os.environ["JAX_COMPILATION_CACHE_DIR"] == path  # what subprocesses inherit
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  assert jax.config.jax_compilation_cache_max_size == MAX_CACHE_BYTES
  assert os.path.isdir(path)
