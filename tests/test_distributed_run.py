"""A whole `train_and_evaluate` across two `jax.distributed` processes on localhost (CPU, one device each):
Orbax checkpoints written by both processes into the shared workdir, a SIGKILL of one process mid-run, a
rerun of both that resumes, and a results.json equal to a single-process run's (same splits, same metrics up
to float summation order over the 2-device mesh)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from forkrun import TRAINING_PRELOAD, ForkServer
from xla_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  "--config=configs/smoke_synthetic.py:tiny",
  "--config.seeds=1",
  "--config.num_steps=6",
  "--config.compare_learners=()",
  "--config.batch_size=8",
  "--config.plots=False",  # nothing here reads the PNGs (test_run_outputs checks them): ~1-4 CPU-s a finished run
  "--compilation_cache=",
]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = {**os.environ, "XLA_FLAGS": xla_flags()}  # one CPU device per process, the suite's compile flags
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


# The five launches run in forks of one interpreter that has imported jax and the library (tests/forkrun.py: ~1.5
# CPU-s of imports saved per launch); each fork creates its own XLA backend and joins `jax.distributed` itself.
SERVER = ForkServer(ROOT, env=_env(), preload=TRAINING_PRELOAD)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _launch(workdir: str, port: int) -> list:
  """Both processes of the 2-process run, started side by side (forkrun.Forked handles)."""
  distributed = ["--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  return [
    SERVER.start(["transfer_meta.main", *ARGS, f"--workdir={workdir}", *distributed, f"--process_id={p}"], ROOT)
    for p in range(2)
  ]


def _stop(procs) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


def _steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints", "maml")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _metrics(path: str) -> dict:
  r = json.load(open(path))
  return {f"{s}/{m}": v["per_seed"] for s, per in r["metrics"].items() for m, v in per.items() if "/" not in m}


@pytest.mark.slow
def test_two_processes_checkpoint_survive_sigkill_and_match_one_process(tmp_path):
  single = tmp_path / "single"
  done = SERVER.run(["transfer_meta.main", *ARGS, f"--workdir={single}"], ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  multi = str(tmp_path / "multi")
  procs = _launch(multi, _port())
  try:  # kill process 1 once a checkpoint past the first is on disk, before the run ends
    deadline = time.time() + 600
    while not [s for s in _steps(multi) if s >= 2] and time.time() < deadline:
      assert all(p.poll() is None for p in procs), "a process ended before it was killed"
      time.sleep(0.2)
    assert _steps(multi), "no checkpoint written"
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:
      procs[0].wait(timeout=60)  # its collectives lose their peer: it fails or hangs
    except subprocess.TimeoutExpired:
      pass
  finally:
    _stop(procs)
  assert not os.path.exists(os.path.join(multi, "results.json"))
  killed_at = max(_steps(multi))
  assert killed_at < 6

  procs = _launch(multi, _port())
  try:
    for p in procs:
      p.wait(timeout=600)
  finally:
    _stop(procs)
  for p in procs:
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  assert "resumed from step" in open(os.path.join(multi, "train.log")).read()
  got, want = _metrics(os.path.join(multi, "results.json")), _metrics(single / "results.json")
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
  a, b = json.load(open(os.path.join(multi, "results.json"))), json.load(open(single / "results.json"))
  assert a["manifest_hashes"] == b["manifest_hashes"]
