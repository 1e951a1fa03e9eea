"""tests/xla_flags.py: subprocesses keep the suite's compile flags and get exactly the device count they ask for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from xla_flags import run_script, subprocess_env, xla_flags

O0 = "--xla_backend_optimization_level=0"


def test_keeps_other_flags_and_replaces_the_device_count():
  parent = f"--xla_force_host_platform_device_count=4 {O0}  --xla_dump_to=/tmp/x"
  assert xla_flags(8, parent) == f"{O0} --xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
  assert xla_flags(None, parent) == f"{O0} --xla_dump_to=/tmp/x"  # one device per process
  assert xla_flags(2, "") == "--xla_force_host_platform_device_count=2"
  with pytest.raises(ValueError, match="devices=0"):
    xla_flags(0, parent)


def test_the_suite_compiles_at_O0_and_subprocesses_inherit_it():
  if os.environ.get("TRANSFER_META_TEST_XLA_OPT") == "default":
    pytest.skip("TRANSFER_META_TEST_XLA_OPT=default keeps XLA's own optimisation level")
  assert O0 in os.environ["XLA_FLAGS"].split()  # set by tests/conftest.py before jax started
  env = subprocess_env(devices=8, EXTRA="1")
  assert env["XLA_FLAGS"].split() == [*xla_flags().split(), "--xla_force_host_platform_device_count=8"]
  assert O0 in env["XLA_FLAGS"].split() and env["EXTRA"] == "1" and env["PATH"] == os.environ["PATH"]


def test_run_script_gives_the_flags_cwd_and_extra_variables_and_captures_failures(tmp_path):
  shown = run_script(
    "import os, sys; print(os.environ['XLA_FLAGS']); print(os.getcwd()); print(os.environ['EXTRA']); "
    "print(sys.executable)",
    devices=3,
    cwd=str(tmp_path),
    EXTRA="yes",
  )
  assert shown.returncode == 0, shown.stderr
  flags, cwd, extra, python = shown.stdout.splitlines()
  assert flags == xla_flags(3) and flags.split()[-1] == "--xla_force_host_platform_device_count=3"
  assert os.path.samefile(cwd, tmp_path) and extra == "yes" and python == sys.executable
  failed = run_script("import sys; sys.exit('script failed on purpose')", devices=1, cwd=str(tmp_path))
  assert failed.returncode == 1 and "script failed on purpose" in failed.stderr and failed.stdout == ""
  with pytest.raises(subprocess.TimeoutExpired):
    run_script("import time; time.sleep(30)", devices=1, cwd=str(tmp_path), timeout=0.5)
  with pytest.raises(ValueError, match="devices=0"):
    run_script("print(1)", devices=0, cwd=str(tmp_path))
