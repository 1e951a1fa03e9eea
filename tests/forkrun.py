"""`python -m MODULE ARGS` without paying the interpreter's imports each time: a fork server for the tests.

Most README commands the tests check are cheap (`--help`, `--dry_run`), yet each fresh interpreter spends ~1.5
CPU-s importing jax, flax, orbax and the library before it does anything. `ForkServer` starts ONE interpreter that
imports them (nothing else: no command module, no absl flag of a command, no XLA backend, so no threads to lose
in a fork), then runs each command in a `fork()` of itself: the child sets `sys.argv`, `sys.path[0]` and the
working directory as `python -m` does, sends its stdout/stderr to files, and runs the module as `__main__` with
`runpy` (a fresh module each time: the server never runs one). Exit status, stdout and stderr come back as a
`subprocess.CompletedProcess`, as `subprocess.run` would give them.

What a fork does not check: a command module that works only because the server imported something for it (a
missing `import` of its own). The library's own imports are the server's, so that is the case of a module using
an attribute of a library package it never imported. Real training runs stay real subprocesses.

CPU accounting: the children are waited for by the server, and the server by the test process when the server
is closed, so their CPU reaches `getrusage(RUSAGE_CHILDREN)` (experiments/pytest_cpu.py) at the close.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# What the server imports before forking (the imports every command repeats).
PRELOAD = ("jax", "numpy", "ml_collections", "transfer_meta")


class ForkServer:
  """One preloaded interpreter serving `run(args)` = `python -m args[0] args[1:]`, each in a fork of it.

  Started at the first `run`; `close()` stops it (and a later `run` starts another). A test module holds one
  and closes it in a module-scoped fixture, so the server's CPU is charged to that module's tests.
  """

  def __init__(self, root: str, env: dict | None = None):
    """`root`: the checkout whose library the server preloads (its `sys.path[0]`); `env`: the server's and so
    every command's environment (default: this process's)."""
    self._root, self._env = os.path.abspath(root), env
    self._proc: subprocess.Popen | None = None

  def _start(self) -> subprocess.Popen:
    proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
      env=self._env, cwd=self._root,
    )  # fmt: skip
    ready = proc.stdout.readline()
    if not ready.startswith("ready "):
      raise RuntimeError(f"fork server did not start: {ready!r} (exit status {proc.poll()})")
    loaded = ready.split(" ", 1)[1].strip()
    if not loaded.startswith(os.path.join(self._root, "")):  # the preloaded library must be this checkout's
      proc.stdin.close()
      proc.wait(timeout=60)
      raise RuntimeError(f"fork server preloaded {loaded}, not the library of {self._root}")
    return proc

  def run(self, args: list[str], cwd: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m args[0] *args[1:]` run in `cwd`; killed (SIGALRM) after `timeout` seconds.

    Args:
      args: the module name, then its command-line arguments.
      cwd: the working directory of the command (also its `sys.path[0]`, as under `python -m`).
      timeout: seconds before the command is killed (its status is then -14, SIGALRM).
    Returns:
      The command's exit status, stdout and stderr (text), as `subprocess.run(..., capture_output=True)`.
    """
    if not args or args[0].startswith("-"):
      raise ValueError(f"ForkServer.run takes [module, *arguments], got {args!r}")
    if self._proc is None:
      self._proc = self._start()
    if self._proc.poll() is not None:
      raise RuntimeError(f"fork server exited with status {self._proc.returncode}")
    self._proc.stdin.write(json.dumps({"args": list(args), "cwd": cwd, "timeout": int(timeout)}) + "\n")
    self._proc.stdin.flush()
    reply = json.loads(self._proc.stdout.readline())
    argv = [sys.executable, "-m", *args]
    return subprocess.CompletedProcess(argv, reply["returncode"], reply["stdout"], reply["stderr"])

  def close(self) -> None:
    """Stops the server and waits for it (after which its children's CPU is in this process's rusage)."""
    proc, self._proc = self._proc, None
    if proc is None:
      return
    if proc.poll() is None:
      proc.stdin.close()
      proc.wait(timeout=60)
    proc.stdout.close()


def _child(args: list[str], cwd: str, timeout: int, out_path: str, err_path: str) -> None:
  """In the fork: become `python -m args[0] ...` and never return."""
  import runpy  # noqa: PLC0415
  import signal  # noqa: PLC0415
  import traceback  # noqa: PLC0415

  signal.signal(signal.SIGALRM, signal.SIG_DFL)
  signal.alarm(timeout)
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  for fd, path in ((1, out_path), (2, err_path)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
  os.chdir(cwd)
  sys.path[0] = cwd  # `python -m` puts the working directory first
  sys.argv = list(args)
  code = 0
  try:
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)
  except SystemExit as e:
    if isinstance(e.code, int):
      code = e.code
    elif e.code is not None:
      print(e.code, file=sys.stderr)
      code = 1
  except BaseException:  # noqa: BLE001 (reported like the interpreter does)
    traceback.print_exc()
    code = 1
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # noqa: BLE001, S110 (a closed stream: nothing left to flush)
      pass
  os._exit(code)


def _serve() -> None:
  import importlib  # noqa: PLC0415
  import tempfile  # noqa: PLC0415

  sys.path[0] = os.getcwd()  # the checkout (ForkServer's root), as under `python -m` from it; not tests/
  for name in PRELOAD:
    importlib.import_module(name)
  channel = sys.stdout
  print("ready", sys.modules["transfer_meta"].__file__, file=channel, flush=True)
  with tempfile.TemporaryDirectory(prefix="forkrun_") as tmp:
    out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    for line in sys.stdin:
      request = json.loads(line)
      pid = os.fork()
      if pid == 0:
        _child(request["args"], request["cwd"], request["timeout"], out_path, err_path)
      _, status = os.waitpid(pid, 0)
      code = os.waitstatus_to_exitcode(status)
      with open(out_path, errors="replace") as f, open(err_path, errors="replace") as g:
        reply = {"returncode": code, "stdout": f.read(), "stderr": g.read()}
      print(json.dumps(reply), file=channel, flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
  _serve()
