"""Two `jax.distributed` processes on localhost (CPU, gloo collectives) train the same meta-steps as one process.

The workers (tests/distributed_worker.py) run the trainer's own `meta_step_fn` + `jit_meta_step` on a global
2-device 'tasks' mesh, each process holding one device; this process computes the single-device reference.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from forkrun import ForkServer
from xla_flags import xla_flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import distributed_worker  # noqa: E402


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = {**os.environ, "XLA_FLAGS": xla_flags()}  # one CPU device per process, the suite's compile flags
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


# Both workers run in forks of one interpreter that has imported jax and the library (tests/forkrun.py): each fork
# creates its own XLA backend and joins `jax.distributed` itself, as a fresh `python` would.
SERVER = ForkServer(ROOT, env=_env())


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def test_two_process_run_matches_single_process(tmp_path):
  port = free_port()
  worker = os.path.join(HERE, "distributed_worker.py")
  flags = ["--num_processes=2", f"--port={port}", f"--out={tmp_path}"]
  procs = [SERVER.start([worker, f"--process_id={p}", *flags], ROOT, timeout=300) for p in range(2)]
  try:
    want = distributed_worker.run_single()  # computed while the workers start
    for p in procs:
      p.wait(timeout=150)
  except subprocess.TimeoutExpired:
    pytest.fail("a distributed worker hung past 150 s")
  finally:
    for p in procs:  # never leave a worker behind (e.g. when the other one failed to start)
      if p.poll() is None:
        p.kill()
        p.wait()
  for p in procs:
    log = p.stdout + p.stderr
    assert p.returncode == 0 and "WORKER_OK" in log, log[-4000:]

  got = [dict(np.load(tmp_path / f"process_{p}.npz")) for p in range(2)]
  want = {k.split("/", 1)[1]: v for k, v in want.items()}
  assert want["outer_loss"].shape == (distributed_worker.STEPS, 2)  # steps x seeds
  assert np.all(np.diff(want["outer_loss"][:, 0]) != 0)  # the steps really moved the parameters
  assert len(want) > 5  # outer_loss and every parameter leaf
  for mode in ("global", "local"):
    for name, value in want.items():
      for p in range(2):  # both processes hold the replicated result
        np.testing.assert_allclose(
          got[p][f"{mode}/{name}"], value, rtol=1e-5, atol=1e-6, err_msg=f"{mode}/{name} on process {p}"
        )
