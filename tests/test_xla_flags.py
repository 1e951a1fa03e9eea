"""tests/xla_flags.py: subprocesses keep the suite's compile flags and get exactly the device count they ask for."""

from __future__ import annotations

import os

import pytest
from xla_flags import subprocess_env, xla_flags

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
