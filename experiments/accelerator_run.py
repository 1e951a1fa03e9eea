"""The benchmarks in one prepared run on an accelerator lent for minutes: each stage in its own process, under
its own time limit, its output echoed and logged, and the rows it appends to experiments/results/bench.csv
gathered under --out (to be appended to the local bench.csv afterwards, e.g. with `--merge`).

    python -m experiments.accelerator_run --out=$OUT                       # every stage, GPU cases
    python -m experiments.accelerator_run --out=/tmp/dry --quick           # a CPU dry run of the same plumbing
    python -m experiments.accelerator_run --merge=/path/to/bench_rows.csv  # append fetched rows to bench.csv

Stages, in order of importance (a stage that fails or runs out of time leaves the later ones to run, except
where env or smoke fails):
  env         versions (python, jax, jaxlib, flax, optax, chex, orbax, numpy, torch), devices, `nvidia-smi -L`
  smoke       one small throughput case, nothing recorded: if it (or env) fails, the run stops there, so a
              library that breaks on the device's JAX costs seconds of the lease, not minutes
  throughput  `bench_throughput` cases from 32 to 16,384 tasks per step, first and second order (each case in its
              own process; useful FLOP/s against the matmul peak measured in the same process)
  torch       `bench_torch --torch_device=cuda`: torch.func on the same GPU, the issue's nine cases, both sides
              at full f32 (JAX_DEFAULT_MATMUL_PRECISION=highest; torch's CUDA default) so the meta-gradients
              agree; JAX's preallocation off so both frameworks fit on one device
  latency     `bench_latency`: new-user adapt-and-score latency and batched users/s
  scale       `bench_scale`: one meta-epoch on synthetic data at ML-100K / ML-1M / ML-25M sizes

Written under --out: one `<stage>.log` each, `bench_rows.csv` (the header and every row the stages appended) and
`summary.json` (per stage: command, exit code, seconds, whether it timed out). The stages append to
experiments/results/bench.csv, except with `--quick`: a dry run's rows go to `<out>/quick_bench.csv` ($BENCH_CSV,
`bench_common.CSV_PATH`), not into the record. Data comes from the cache named by $TRANSFER_META_CACHE (carry it:
the device reaches no network).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from experiments import bench_common

# The batch first, then the large batches an accelerator is for (each case compiles in its own process).
THROUGHPUT_CASES = "fo1:32,so1:32,so5:32,fo1:256,so5:256,fo1:4096,so5:4096,fo1:16384,so5:16384,fo1:1024"
TORCH_CASES = "fo1:32,so1:32,so5:32,fo1:256,so1:256,so5:256,fo1:466,so1:466,so5:466"
GATES = ("env", "smoke")  # a failure here stops the run
VERSIONS = (
  "import importlib, sys; print('python', sys.version.split()[0])\n"
  "for m in ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'orbax.checkpoint', 'numpy', 'torch', 'ml_collections'):\n"
  "  try: print(m, importlib.import_module(m).__version__)\n"
  "  except Exception as e: print(m, 'MISSING', type(e).__name__, e)\n"
  "import jax; print('devices', jax.devices(), 'backend', jax.default_backend())\n"
)


def stages(quick: bool) -> list[tuple[str, list[str], dict, int]]:
  """(name, argv, extra environment, time limit in s) per stage; `quick` shrinks every stage for a CPU dry run."""
  py = [sys.executable, "-m"]
  smoke = [*py, "experiments.bench_throughput", "--cases=fo1:8", "--reps=1", "--steps=1", "--no_csv"]
  gpu_env = {"JAX_DEFAULT_MATMUL_PRECISION": "highest", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  if quick:
    return [
      ("env", [sys.executable, "-c", VERSIONS], {}, 60),
      ("smoke", smoke, {}, 120),
      ("throughput", [*py, "experiments.bench_throughput", "--cases=fo1:32,so1:32", "--reps=1", "--steps=2"], {}, 300),
      ("torch", [*py, "experiments.bench_torch", "--cases=fo1:32", "--reps=1", "--steps=1", "--groups=0"], {}, 300),
      ("latency", [*py, "experiments.bench_latency", "--ks=5", "--inner_steps=1", "--calls=20"], {}, 300),
      ("scale", [*py, "experiments.bench_scale", "--sizes=100k", "--max_steps=5", "--min_steps=5"], {}, 300),
    ]
  return [
    ("env", [sys.executable, "-c", VERSIONS + "import subprocess; subprocess.run(['nvidia-smi', '-L'])\n"], {}, 40),
    ("smoke", smoke, {}, 60),
    ("throughput", [*py, "experiments.bench_throughput", f"--cases={THROUGHPUT_CASES}", "--reps=3"], {}, 230),
    (
      "torch",
      [*py, "experiments.bench_torch", f"--cases={TORCH_CASES}", "--torch_device=cuda", "--chunk=0", "--groups=0"],
      gpu_env,
      140,
    ),
    ("latency", [*py, "experiments.bench_latency", "--calls=200"], {}, 45),
    ("scale", [*py, "experiments.bench_scale", "--sizes=100k,1m,25m", "--chunk=0", "--max_steps=200"], {}, 60),
  ]


def run_stage(name: str, argv: list[str], env: dict, limit_s: int, out: Path) -> dict:
  """Runs one stage in its own process group, echoing and logging its output; kills the group at `limit_s`."""
  t0 = time.perf_counter()
  print(f"=== {name} (limit {limit_s} s): {' '.join(argv)[:300]}", flush=True)
  with open(out / f"{name}.log", "w") as log:
    proc = subprocess.Popen(
      argv,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
      text=True,
      start_new_session=True,
    )

    def copy():  # a thread: the pipe read blocks, the wait below keeps the clock
      for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
      proc.wait(timeout=limit_s)
      timed_out = False
    except subprocess.TimeoutExpired:
      timed_out = True
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    reader.join(timeout=5)
  seconds = time.perf_counter() - t0
  print(f"=== {name}: rc {proc.returncode}{' TIMED OUT' if timed_out else ''} after {seconds:.0f} s", flush=True)
  return {"stage": name, "argv": argv, "env": env, "rc": proc.returncode, "seconds": seconds, "timed_out": timed_out}


def csv_lines(csv: Path) -> list[str]:
  """The lines of `csv` (none when it does not exist yet), line ends kept."""
  return csv.read_text().splitlines(keepends=True) if csv.exists() else []


def new_rows(csv: Path, start_lines: int) -> list[str]:
  """The header plus the lines appended to `csv` after its first `start_lines` lines."""
  lines = csv_lines(csv)
  return lines[:1] + lines[max(start_lines, 1) :]


def merge(rows_csv: Path, csv: Path | None = None) -> int:
  """Appends the rows of a fetched bench_rows.csv to `csv` (default `bench_common.CSV_PATH`), refusing a header
  that differs; returns rows added."""
  csv = Path(csv or bench_common.CSV_PATH)
  rows, text = csv_lines(rows_csv), csv.read_text()
  header = text.splitlines(keepends=True)[0]
  if not rows or rows[0] != header:
    raise SystemExit(f"{rows_csv}: header {rows[:1]} differs from {csv}'s {header!r}")
  with open(csv, "a") as f:
    f.write(("" if text.endswith("\n") else "\n") + "".join(rows[1:]))
  return len(rows) - 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None, help="folder for the logs, bench_rows.csv and summary.json")
  p.add_argument("--stages", default=None, help="comma list of stages to run (default: all)")
  p.add_argument("--quick", action="store_true", help="tiny cases on any device: a dry run of the plumbing")
  p.add_argument("--merge", default=None, help="append this fetched bench_rows.csv to bench.csv and exit")
  args = p.parse_args(argv)
  if args.merge:
    print(f"appended {merge(Path(args.merge))} rows to {bench_common.CSV_PATH}")
    return 0
  if not args.out:
    raise SystemExit("--out is required (or --merge)")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plan = stages(args.quick)
  known = [s[0] for s in plan]
  wanted = args.stages.split(",") if args.stages else known
  if unknown := sorted(set(wanted) - set(known)):
    raise SystemExit(f"unknown stages {unknown}; valid: {known}")
  csv = out / "quick_bench.csv" if args.quick else Path(bench_common.CSV_PATH)
  if args.quick:
    csv.unlink(missing_ok=True)
    os.environ["BENCH_CSV"] = str(csv)  # the stages' bench_common appends there
  start_lines = len(csv_lines(csv))
  print(f"load {bench_common.load_avg()}, {bench_common.cores()} cores, cache {os.environ.get('TRANSFER_META_CACHE')}")
  summary = []
  for name, stage_argv, env, limit in plan:
    if name in wanted:
      summary.append(run_stage(name, stage_argv, env, limit, out))
      (out / "bench_rows.csv").write_text("".join(new_rows(csv, start_lines)))
      (out / "summary.json").write_text(json.dumps(summary, indent=1))
      if name in GATES and summary[-1]["rc"] != 0:
        print(f"=== stopping: stage {name} failed, the stages after it would fail alike", flush=True)
        break
  failed = [s["stage"] for s in summary if s["rc"] != 0]
  print(f"stages failed: {failed or 'none'}; {len(new_rows(csv, start_lines)) - 1} bench rows", flush=True)
  return int(bool(failed))


if __name__ == "__main__":
  sys.exit(main())
