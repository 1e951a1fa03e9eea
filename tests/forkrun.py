"""`python -m MODULE ARGS` (or `python SCRIPT ARGS`, `python -c CODE ARGS`) without paying the interpreter's
imports each time: a fork server for the tests.

Each fresh interpreter spends ~1.5 CPU-s importing jax, flax, orbax and the library before it does anything, and a
test that launches the command line (`--help`, `--dry_run`, a SIGKILLed training run, a `jax.distributed` worker)
pays it per launch. `ForkServer` starts ONE interpreter that imports them (nothing else: no command module, no absl
flag of a command, no XLA backend nor Python thread to lose in a fork; checked before it says it is ready), then runs
each command in a `fork()` of itself: the child sets `sys.argv`, `sys.path[0]` and the working directory as
`python` does, applies the command's environment changes, sends its stdout/stderr to files, and runs the module as
`__main__` with `runpy` (a fresh module each time: the server never runs one). A child creates its own XLA backend
at its first jax computation, after the fork, so it reads the XLA_FLAGS it was given (a fake device count, say).

`run(args, cwd)` waits and returns a `subprocess.CompletedProcess`, as `subprocess.run` would; `start(args, cwd)`
returns at once with a `Forked` handle used like `subprocess.Popen` (`pid`, `poll`, `wait`, `kill`,
`send_signal`), so a test can SIGKILL a training run mid-way or run two processes side by side.

What a fork does not check: a command that works only because the server imported something for it (a missing
`import` of its own: the case of a module using an attribute of a library package it never imported), and
environment variables that jax or the library read at import (JAX_*): those are the server's. What the tests
check through it (exit status, output, files written, a SIGKILL's effect, collectives between two processes) does
not depend on a fresh interpreter.

CPU accounting: the children are waited for by the server, and the server by the test process when the server
is closed, so their CPU reaches `getrusage(RUSAGE_CHILDREN)` (experiments/pytest_cpu.py) at the close.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

# What the server imports before forking (the imports every command repeats).
PRELOAD = ("jax", "numpy", "ml_collections", "transfer_meta")
# Also what a training run imports at its end (`plots.write_run_plots`: ~0.5 CPU-s in a fresh process).
TRAINING_PRELOAD = (*PRELOAD, "matplotlib.pyplot")


def command_line(args: list[str]) -> list[str]:
  """The interpreter command line that `args` stands for: `[python, -m, module, ...]` for a module name,
  `[python, script.py, ...]` for a path, `[python, -c, code, ...]` for `-c`."""
  if not args or (args[0].startswith("-") and args[0] != "-c") or (args[0] == "-c" and len(args) < 2):
    raise ValueError(f"ForkServer takes [module | script.py | '-c' code, *arguments], got {args!r}")
  if args[0] == "-c" or _is_script(args[0]):
    return [sys.executable, *args]
  return [sys.executable, "-m", *args]


def _is_script(name: str) -> bool:
  return name.endswith(".py") or os.sep in name


class Forked:
  """A command running in a fork of a `ForkServer` (from `ForkServer.start`), used like `subprocess.Popen`.

  `returncode` is None while it runs, then its exit status (negative: the signal that ended it); `stdout` and
  `stderr` are its output (text) once it has been waited for (`poll` saw it end, or `wait`).
  """

  def __init__(self, server: ForkServer, pid: int, args: list[str]):
    self._server, self.pid, self.args = server, pid, command_line(args)
    self.returncode: int | None = None
    self.stdout: str | None = None
    self.stderr: str | None = None

  def _finish(self, reply: dict) -> int:
    self.returncode, self.stdout, self.stderr = reply["returncode"], reply["stdout"], reply["stderr"]
    return self.returncode

  def poll(self) -> int | None:
    """The exit status if it has ended (then reaped), else None."""
    if self.returncode is None:
      reply = self._server._request({"op": "poll", "pid": self.pid})
      if "returncode" in reply:
        self._finish(reply)
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    """Waits for it to end; raises `subprocess.TimeoutExpired` after `timeout` seconds (it keeps running)."""
    if self.returncode is not None:
      return self.returncode
    if timeout is None:
      return self._finish(self._server._request({"op": "wait", "pid": self.pid}))
    deadline = time.monotonic() + timeout
    while self.poll() is None:
      if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(self.args, timeout)
      time.sleep(0.05)
    return self.returncode

  def send_signal(self, sig: int) -> None:
    """Sends `sig` unless it has been reaped (an ended, unreaped child is a zombie: its pid cannot be reused)."""
    if self.returncode is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def result(self) -> subprocess.CompletedProcess:
    """Waits, then returns exit status and output as `subprocess.run(..., capture_output=True, text=True)`."""
    self.wait()
    return subprocess.CompletedProcess(self.args, self.returncode, self.stdout, self.stderr)


class ForkServer:
  """One preloaded interpreter serving `run(args)` / `start(args)`, each command in a fork of it.

  Started at the first command; `close()` stops it (killing commands still running) and a later command starts
  another. A test module holds one and closes it in a module-scoped fixture, so the server's CPU is charged to that
  module's tests.
  """

  def __init__(self, root: str, env: dict | None = None, preload: tuple[str, ...] = PRELOAD):
    """`root`: the checkout whose library the server preloads (its `sys.path[0]`); `env`: the server's and so
    every command's environment (default: this process's at the server's start); `preload`: modules imported
    before forking."""
    self._root, self._env, self._preload = os.path.abspath(root), env, tuple(preload)
    self._proc: subprocess.Popen | None = None

  def _start(self) -> subprocess.Popen:
    proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--serve", ",".join(self._preload)], stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True, env=self._env, cwd=self._root,
    )  # fmt: skip
    ready = proc.stdout.readline()
    if not ready.startswith("ready "):
      proc.stdin.close()
      proc.wait(timeout=60)
      raise RuntimeError(f"fork server did not start: {ready!r} (exit status {proc.poll()})")
    loaded = ready.split(" ", 1)[1].strip()
    if not loaded.startswith(os.path.join(self._root, "")):  # the preloaded library must be this checkout's
      proc.stdin.close()
      proc.wait(timeout=60)
      raise RuntimeError(f"fork server preloaded {loaded}, not the library of {self._root}")
    return proc

  def _request(self, request: dict) -> dict:
    if self._proc is None:
      self._proc = self._start()
    if self._proc.poll() is not None:
      raise RuntimeError(f"fork server exited with status {self._proc.returncode}")
    self._proc.stdin.write(json.dumps(request) + "\n")
    self._proc.stdin.flush()
    reply = json.loads(self._proc.stdout.readline())
    if "error" in reply:
      raise RuntimeError(f"fork server: {reply['error']}")
    return reply

  def start(self, args: list[str], cwd: str, timeout: int = 600, env: dict[str, str | None] | None = None) -> Forked:
    """Starts `python -m args[0] *args[1:]` (or `python args[0] ...` for a script path, `python -c args[1] ...`)
    in `cwd`, and returns at once.

    Args:
      args: a module name, a script path (ends in .py or holds a '/') or '-c' and code; then the arguments.
      cwd: the working directory of the command (also its `sys.path[0]` for a module or `-c`, as under `python`).
      timeout: seconds before the command is killed by SIGALRM (its status is then -14).
      env: environment variables to set (a value) or unset (None) in the command only, on top of the server's.
        Variables read at import (JAX_*) keep the server's values; ones read later (XLA_FLAGS, at the first
        backend use) take effect.
    Returns:
      A `Forked` handle.
    """
    command_line(args)  # refuses malformed args before anything is forked
    if not isinstance(timeout, int) or timeout < 1:
      raise ValueError(f"timeout={timeout!r}: whole seconds >= 1 (SIGALRM)")
    request = {"op": "start", "args": list(args), "cwd": cwd, "timeout": timeout, "env": dict(env or {})}
    return Forked(self, self._request(request)["pid"], list(args))

  def run(
    self, args: list[str], cwd: str, timeout: int = 120, env: dict[str, str | None] | None = None
  ) -> subprocess.CompletedProcess:
    """`start(args, cwd, timeout, env)` and wait: exit status, stdout and stderr (text), as
    `subprocess.run(..., capture_output=True, text=True)`; a command past `timeout` has status -14 (SIGALRM)."""
    return self.start(args, cwd, timeout, env).result()

  def close(self) -> None:
    """Stops the server (it SIGKILLs and reaps commands still running) and waits for it, after which its children's
    CPU is in this process's rusage."""
    proc, self._proc = self._proc, None
    if proc is None:
      return
    if proc.poll() is None:
      proc.stdin.close()
      proc.wait(timeout=60)
    proc.stdout.close()


def _child(request: dict, out_path: str, err_path: str) -> None:
  """In the fork: become `python ...` of the request and never return."""
  import runpy  # noqa: PLC0415
  import tempfile  # noqa: PLC0415
  import traceback  # noqa: PLC0415

  args = request["args"]
  signal.signal(signal.SIGALRM, signal.SIG_DFL)
  signal.alarm(request["timeout"])
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  sys.stdin = open(os.devnull)  # noqa: SIM115 (not the server's buffered request stream)
  for fd, path in ((1, out_path), (2, err_path)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
  for name, value in request["env"].items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  tempfile.tempdir = None  # the server's serving loop cached its own; a fresh `python` reads TMPDIR at first use
  os.chdir(request["cwd"])
  code = 0
  try:
    if args[0] == "-c":
      sys.path[0], sys.argv = "", ["-c", *args[2:]]
      exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
    elif _is_script(args[0]):
      sys.path[0], sys.argv = os.path.dirname(os.path.abspath(args[0])), list(args)
      runpy.run_path(args[0], run_name="__main__")
    else:
      sys.path[0], sys.argv = os.getcwd(), list(args)  # `python -m` puts the working directory first
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


def _serve(preload: list[str]) -> None:
  import importlib  # noqa: PLC0415
  import tempfile  # noqa: PLC0415
  import threading  # noqa: PLC0415

  sys.path[0] = os.getcwd()  # the checkout (ForkServer's root), as under `python -m` from it; not tests/
  for name in preload:
    importlib.import_module(name)
  if "matplotlib.pyplot" in sys.modules:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # what `plots._pyplot` selects; no GUI backend in a child
  from jax._src import xla_bridge  # noqa: PLC0415

  channel = sys.stdout
  # A fork copies only the forking thread: an XLA backend (its thread pools) or a Python thread would be lost in the
  # children. (numpy's OpenBLAS pool is a native thread that re-forms after a fork, by its own atfork handlers.)
  if xla_bridge._backends or threading.active_count() != 1:
    print(
      f"not ready: backends {list(xla_bridge._backends)}, threads {threading.enumerate()}", file=channel, flush=True
    )
    return
  print("ready", sys.modules["transfer_meta"].__file__, file=channel, flush=True)
  running: dict[int, tuple[str, str]] = {}

  def reap(pid: int, flags: int) -> dict:
    got, status = os.waitpid(pid, flags)
    if got == 0:
      return {"running": True}
    out_path, err_path = running.pop(pid)
    with open(out_path, errors="replace") as f, open(err_path, errors="replace") as g:
      reply = {"returncode": os.waitstatus_to_exitcode(status), "stdout": f.read(), "stderr": g.read()}
    os.unlink(out_path)
    os.unlink(err_path)
    return reply

  with tempfile.TemporaryDirectory(prefix="forkrun_") as tmp:
    for n, line in enumerate(sys.stdin):
      request = json.loads(line)
      op, pid = request["op"], request.get("pid")
      if op == "start":
        paths = (os.path.join(tmp, f"{n}.out"), os.path.join(tmp, f"{n}.err"))
        pid = os.fork()
        if pid == 0:
          _child(request, *paths)
        running[pid] = paths
        reply = {"pid": pid}
      elif op not in ("poll", "wait"):
        reply = {"error": f"unknown request {op!r}; valid: 'start', 'poll', 'wait'"}
      elif pid not in running:
        reply = {"error": f"{op}: {pid} is not a running command of this server"}
      else:
        reply = reap(pid, os.WNOHANG if op == "poll" else 0)
      print(json.dumps(reply), file=channel, flush=True)
    for pid in list(running):  # the client closed the server: nothing it started outlives it
      os.kill(pid, signal.SIGKILL)
      reap(pid, 0)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
  _serve([m for m in sys.argv[2].split(",") if m] if len(sys.argv) > 2 else list(PRELOAD))
