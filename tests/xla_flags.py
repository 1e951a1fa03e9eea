"""XLA_FLAGS for the suite's subprocesses: the parent's flags (tests/conftest.py adds LLVM -O0, which cuts every
compile and changes no assertion) with the fake CPU device count that subprocess needs.

A test that replaced XLA_FLAGS wholesale (`env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"`, or
dropped it for one device per process) compiled its subprocesses at XLA's -O2 and missed the persistent cache's
entries, which are keyed by the flags too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S*")


def xla_flags(devices: int | None = None, parent: str | None = None) -> str:
  """The parent's XLA_FLAGS without any device count, plus `--xla_force_host_platform_device_count=devices`.

  Args:
    devices: fake CPU devices for the subprocess (>= 1), or None for XLA's default (one per process).
    parent: the flags to start from; default the current `os.environ["XLA_FLAGS"]`.

  Returns:
    A space-separated XLA_FLAGS value.
  """
  if devices is not None and devices < 1:
    raise ValueError(f"devices={devices}: a subprocess needs at least one device")
  flags = DEVICE_COUNT.sub(" ", os.environ.get("XLA_FLAGS", "") if parent is None else parent).split()
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


def subprocess_env(devices: int | None = None, **extra: str) -> dict:
  """`os.environ` with XLA_FLAGS from `xla_flags(devices)` and `extra` variables set."""
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), **extra}


def run_script(script: str, devices: int, cwd: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
  """Runs `python -c script` in `cwd` with `subprocess_env(devices, **extra)`: the suite's compile flags (and
  compilation cache) and `devices` fake CPU devices, read by jax at import, before the script's first line.

  Args:
    script: Python source for `python -c`.
    devices: fake CPU devices the script sees (>= 1).
    cwd: its working directory (the repository root, so `tests.<module>` imports resolve).
    timeout: seconds before `subprocess.TimeoutExpired`.
    **extra: more environment variables.
  Returns:
    The finished process, stdout and stderr captured as text (the caller asserts on them).
  """
  env = subprocess_env(devices, **extra)
  return subprocess.run(
    [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
