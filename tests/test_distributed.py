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
from xla_flags import xla_flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import distributed_worker  # noqa: E402


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_process_run_matches_single_process(tmp_path):
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": xla_flags()}  # one CPU device per process, the suite's compile flags
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(HERE, "distributed_worker.py"),
        f"--process_id={p}",
        "--num_processes=2",
        f"--port={port}",
        f"--out={tmp_path}",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for p in range(2)
  ]
  try:
    want = distributed_worker.run_single()  # computed while the workers start
    logs = [p.communicate(timeout=150)[0] for p in procs]
  except subprocess.TimeoutExpired:
    pytest.fail("a distributed worker hung past 150 s")
  finally:
    for p in procs:  # never leave a worker behind (e.g. when the other one failed to start)
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
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
