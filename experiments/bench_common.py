"""What every benchmark shares: machine facts, peak memory, timing, and one CSV of results.

Each benchmark prints its figures and appends one row per measured case to experiments/results/bench.csv:

    timestamp, bench, case, value, unit, figures (JSON: every number measured), params (JSON: the settings),
    cpu, cores, ram_gib, device, jax, jaxlib, commit, load_avg_1m, peak_rss_mib

`load_avg_1m` is the machine's load when the case finished: the shared 2-core CI machine is often busy, and a
row measured at load 4 on 2 cores is worth about half as much as one measured idle. `peak_rss_mib` is the
process's peak resident memory (`getrusage`), which is why multi-case runs put each case in its own process
(`run_cases_isolated`).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# $BENCH_CSV moves the rows elsewhere (accelerator_run --quick: a dry run's rows stay out of the record).
CSV_PATH = os.environ.get("BENCH_CSV") or os.path.join(ROOT, "experiments", "results", "bench.csv")
COLUMNS = (
  "timestamp",
  "bench",
  "case",
  "value",
  "unit",
  "figures",
  "params",
  "cpu",
  "cores",
  "ram_gib",
  "device",
  "jax",
  "jaxlib",
  "commit",
  "load_avg_1m",
  "peak_rss_mib",
)


def cpu_model(cpuinfo: str | None = None) -> str:
  """The CPU's model name with its family and model numbers, e.g. 'AMD EPYC (family 25 model 17)': a VM's model
  name alone can hide which generation it is ('AMD EPYC' has been Zen 4 and Zen 5 here, and the same benchmark
  differs between them). `cpuinfo`: the text of /proc/cpuinfo (read when None)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return platform.processor() or platform.machine()
  fields = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if sep and key.strip() not in fields:  # the first processor's fields
      fields[key.strip()] = value.strip()
  name = fields.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in fields and "model" in fields:
    return f"{name} (family {fields['cpu family']} model {fields['model']})"
  return name


def _ram_gib() -> float:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return float("nan")


def git_commit() -> str:
  """HEAD's short hash, with '+dirty' when the working tree has changes (read-only git calls); $BENCH_COMMIT when
  set (a copy of the tree without its .git, e.g. on a lent accelerator, names the commit it was copied from)."""
  if os.environ.get("BENCH_COMMIT"):
    return os.environ["BENCH_COMMIT"]
  try:
    head = subprocess.run(
      ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def machine() -> dict:
  """Machine facts: cpu model, usable cores, RAM, accelerator kind, jax/jaxlib versions, commit."""
  import jax
  import jaxlib

  dev = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
    "cpu": cpu_model(),
    "cores": cores,
    "ram_gib": _ram_gib(),
    "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}",
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "commit": git_commit(),
  }


def peak_rss_mib() -> float:
  """This process's peak resident set size so far, MiB (Linux reports KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
  """User + system CPU seconds used by this process (all threads) so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def matmul_precision() -> str:
  """JAX's default matmul precision as set for this process ('default': the backend's own, TF32 on recent GPUs)."""
  import jax

  return str(jax.config.jax_default_matmul_precision or "default")


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_avg() -> float:
  return round(os.getloadavg()[0], 2)


# Environment variables that move a step's speed by far more than the run-to-run spread, so every row says them:
# glibc's allocator tunables (bench_throughput's steps 14-34% slower with the Makefile's set, 1.4-2.4x with
# `arena_max=1` alone; `make run` ~40% cheaper with the set) and the size of XLA's CPU thread pool and its flags.
ENVIRON_KEYS = ("GLIBC_TUNABLES", "PJRT_NPROC", "NPROC", "XLA_FLAGS")


def run_environ(environ=None) -> dict:
  """The ENVIRON_KEYS set in `environ` (default `os.environ`), name -> value (absent ones left out)."""
  environ = os.environ if environ is None else environ
  return {k: environ[k] for k in ENVIRON_KEYS if k in environ}


def append_row(
  bench: str, case: str, value: float, unit: str, figures: dict, params: dict, path: str = CSV_PATH
) -> dict:
  """Appends one result row (creating the file with its header); returns the row.

  `params` is stored with an "environ" entry added (`run_environ()`). Raises ValueError if an existing file has a
  different header (rows are never written under wrong columns).
  """
  row = {
    "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "bench": bench,
    "case": case,
    "value": _round(value),
    "unit": unit,
    "figures": json.dumps({k: _round(v) for k, v in figures.items()}, sort_keys=True),
    "params": json.dumps({**params, "environ": run_environ()}, sort_keys=True, default=str),
    **machine(),
    "load_avg_1m": load_avg(),
    "peak_rss_mib": peak_rss_mib(),
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  exists = os.path.exists(path) and os.path.getsize(path) > 0
  if exists:
    with open(path, newline="") as f:
      header = next(csv.reader(f), [])
    if tuple(header) != COLUMNS:
      raise ValueError(f"{path} has columns {header}, expected {list(COLUMNS)}: move it aside")
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    if not exists:
      writer.writeheader()
    writer.writerow(row)
  return row


def _round(v):
  if isinstance(v, (float, np.floating)):
    return float(f"{float(v):.5g}")
  if isinstance(v, np.integer):
    return int(v)
  return v


def time_calls(fn: Callable[[], object], reps: int, warmup: int = 1) -> np.ndarray:
  """Wall seconds of `reps` calls of `fn` (which must block until its work is done), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  out = np.empty(reps)
  for r in range(reps):
    t0 = time.perf_counter()
    fn()
    out[r] = time.perf_counter() - t0
  return out


def run_cases_isolated(
  module: str, cases: Sequence[str], drop: Sequence[str] = (), argv: Sequence[str] | None = None
) -> int:
  """Runs `python -m module <argv> --case=<case>` once per case, each in a fresh process so that its peak RSS
  (and its compile and allocator state) is its own: the one launcher of the multi-case benchmarks.

  Args:
    module: the benchmark module (e.g. 'experiments.bench_throughput'), run from the repository root; it must
      run exactly one case when given `--case=<case>`.
    cases: the cases, in order (each passed as `--case=<case>`).
    drop: flags not passed on (the case-list flags, e.g. '--cases'), as `--flag=value` or `--flag value`; any
      `--case` in `argv` is always dropped.
    argv: the arguments to pass on (default: this process's, `sys.argv[1:]`).
  Returns:
    The number of cases whose process exited non-zero (every case runs regardless).
  """
  args = list(sys.argv[1:] if argv is None else argv)
  flags = tuple(d.rstrip("=") for d in ("--case", *drop))
  kept, skip = [], False
  for a in args:
    name = a.split("=", 1)[0]
    if skip:
      skip = False
    elif name in flags:
      skip = "=" not in a  # `--flag value`: its value goes too
    else:
      kept.append(a)
  failed = 0
  for case in cases:
    done = subprocess.run([sys.executable, "-m", module, *kept, f"--case={case}"], cwd=ROOT)
    failed += done.returncode != 0
  return failed


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
  """A Markdown table of `rows` (dicts) restricted to `columns`."""
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  for r in rows:
    print("| " + " | ".join(str(_round(r.get(c, ""))) for c in columns) + " |")
