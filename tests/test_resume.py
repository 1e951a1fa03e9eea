"""Kill-and-resume: `python -m transfer_meta.main` SIGKILLed mid-run, rerun with the same command, ends with the
results.json (timings aside), metrics.jsonl and manifests of an uninterrupted run; a corrupted latest checkpoint
is skipped with a warning (checked in the same rerun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from forkrun import TRAINING_PRELOAD, ForkServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This file's launches run in forks of one interpreter that has imported jax and the library (tests/forkrun.py; a
# fresh `python -m` spends ~1.5 CPU-s on those imports): what is checked (a SIGKILL mid-run, then a rerun of the
# same command) does not need a fresh interpreter each time. `_run`/`_run_and_kill_when` without a server launch one.
SERVER = ForkServer(ROOT, preload=TRAINING_PRELOAD)
CONFIG = "configs/smoke_synthetic.py:tiny"  # maml then none, 2 seeds, 8 steps, checkpoints every 2 steps
# With issue 8's training protocol on: episodic resampling (whose split depends on the pass), a residual over
# item_user_offset and OOV rows; resume must stay bit-identical with all of them.
PROTOCOL = {"resample_train": "True", "residual": "item_user_offset", "oov_min_count": "3"}
# No PNGs: nothing here reads them (test_run_outputs and test_strategies' table runs check the plots), and each
# finished launch would spend ~1-4 CPU-s drawing five of them.
OVERRIDES = {**PROTOCOL, "plots": "False"}


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _command(workdir: str, cache: str, config: str = CONFIG) -> list[str]:
  return [
    "transfer_meta.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--compilation_cache={cache}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),  # strategies too: their streams carry prior and OOV
  ]


def _run(
  workdir: str, cache: str, config: str = CONFIG, server: ForkServer | None = None
) -> subprocess.CompletedProcess:
  """Runs the command to its end: in a fork of `server`, or (None) in a fresh `python -m`."""
  if server is not None:
    done = server.run(_command(workdir, cache, config), ROOT, timeout=600)
  else:
    argv = [sys.executable, "-m", *_command(workdir, cache, config)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _run_and_kill_when(
  workdir: str, cache: str, marker: str, config: str = CONFIG, server: ForkServer | None = None
) -> None:
  """Starts the run (in a fork of `server`, or a fresh `python -m`), SIGKILLs it as soon as `marker` (a path under
  workdir) exists, while it still runs."""
  if server is not None:
    proc = server.start(_command(workdir, cache, config), ROOT, timeout=600)
    stderr = lambda: proc.stderr  # noqa: E731 (the fork's output, read when it ended)
  else:
    argv = [sys.executable, "-m", *_command(workdir, cache, config)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = lambda: proc.stderr.read()  # noqa: E731
  path = os.path.join(workdir, marker)
  deadline = time.time() + 300
  while not os.path.exists(path):
    if proc.poll() is not None:
      pytest.fail(f"run ended (rc {proc.returncode}) before {marker} appeared: {stderr()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      proc.wait()
      pytest.fail(f"{marker} did not appear within 300 s")
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed: the test would prove nothing"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  if server is None:
    proc.stderr.close()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def _read(workdir: str, name: str):
  with open(os.path.join(workdir, name)) as f:
    return f.read()


def _results_without_timing(workdir: str) -> dict:
  results = json.loads(_read(workdir, "results.json"))
  assert results["train"]["steps"] == 8 and results["train"]["seconds"] > 0
  return {k: v for k, v in results.items() if k != "train"}


@pytest.fixture(scope="module")
def cache(jax_cache):
  return jax_cache  # the suite's: the smoke programs are compiled once for every test that runs them


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  done = _run(workdir, cache, server=SERVER)
  assert "| new_user | maml |" in done.stdout and "| new_user | item_user_offset |" in done.stdout
  config = json.loads(_read(workdir, "config.json"))
  assert (config["resample_train"], config["residual"], config["oov_min_count"]) == (True, "item_user_offset", 3)
  assert not config["plots"] and not [f for f in os.listdir(workdir) if f.endswith(".png")]
  return workdir


def test_sigkill_twice_then_resume_past_a_corrupt_checkpoint_equals_uninterrupted(uninterrupted, cache, tmp_path):
  """Killed during the first learner right after its first checkpoint, then during the second learner; before the
  rerun the first learner's latest checkpoint (its last, step 8) is corrupted. The rerun skips it with a warning,
  trains that learner again from step 6, resumes the second from its step 2 and ends with the uninterrupted run's
  results.json, metrics.jsonl and manifests: the kill-and-resume and the corrupt-checkpoint fallback in one
  rerun (one `python -m transfer_meta.main` launch fewer than checking them apart)."""
  workdir = str(tmp_path / "killed")
  _run_and_kill_when(workdir, cache, os.path.join("checkpoints", "maml", "2", "commit_success.txt"), server=SERVER)
  _run_and_kill_when(workdir, cache, os.path.join("checkpoints", "none", "2", "commit_success.txt"), server=SERVER)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "maml"))) == ["6", "8"]  # the first learner finished
  latest = os.path.join(workdir, "checkpoints", "maml", "8")
  n = 0
  for root, _, files in os.walk(os.path.join(latest, "meta_params")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\0garbage")
      n += 1
  assert n > 0
  done = _run(workdir, cache, server=SERVER)
  assert "checkpoint step 8" in done.stderr and "corrupt or partial" in done.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "maml"))) == ["6", "8"]  # step 8 written again
  assert _results_without_timing(workdir) == _results_without_timing(uninterrupted)
  for name in ("metrics.jsonl", "split_manifest.json", "config.json"):
    assert _read(workdir, name) == _read(uninterrupted, name), name
