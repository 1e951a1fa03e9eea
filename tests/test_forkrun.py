"""tests/forkrun.py: commands run in forks of one preloaded interpreter behave as under a fresh `python`: scripts and
`-c` code beside modules, Popen-like handles that can be polled, killed and run side by side, environment changes
per command (a fake device count reaches the child's XLA backend), and nothing left running at the close.
(`python -m` modules against the real interpreter: test_readme.py::test_fork_server_runs_modules_like_python_m.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from forkrun import ForkServer, command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = ForkServer(ROOT)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """Closed at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


SCRIPT = "import os, sys\nprint(sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)), os.getcwd())\n"


def test_scripts_and_code_run_as_under_python(tmp_path):
  path = tmp_path / "show.py"
  path.write_text(SCRIPT + "sys.exit(3)\n")
  code = "import sys; print(sys.argv, repr(sys.path[0])); sys.exit('no')"
  for args in ([str(path), "a", "--b=1"], ["-c", code, "x"]):
    real = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    forked = SERVER.run(args, str(tmp_path))
    assert (forked.returncode, forked.stdout) == (real.returncode, real.stdout), args
    assert forked.stderr == real.stderr, args
    assert forked.args == command_line(args) == [sys.executable, *args]
  assert command_line(["json.tool", "x"]) == [sys.executable, "-m", "json.tool", "x"]
  for bad in ([], ["-m", "json.tool"], ["-c"], ["--help"]):
    with pytest.raises(ValueError, match="ForkServer takes"):
      SERVER.start(bad, str(tmp_path))
  with pytest.raises(ValueError, match="whole seconds"):
    SERVER.start(["platform"], str(tmp_path), timeout=0)


def test_a_started_command_is_polled_killed_and_reaped(tmp_path):
  marker = tmp_path / "started"
  code = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
  proc = SERVER.start(["-c", code], str(tmp_path))
  deadline = time.monotonic() + 60
  while not marker.exists():
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.02)
  assert proc.poll() is None and proc.returncode is None
  with pytest.raises(subprocess.TimeoutExpired):
    proc.wait(timeout=0.2)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=30) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL
  proc.kill()  # reaped: nothing is signalled (its pid may belong to another process by now)
  with pytest.raises(RuntimeError, match="not a running command"):
    SERVER._request({"op": "poll", "pid": proc.pid})
  with pytest.raises(RuntimeError, match="unknown request 'stop'"):
    SERVER._request({"op": "stop", "pid": proc.pid})


def test_two_commands_run_side_by_side_with_their_own_output(tmp_path):
  """Two children at once, each blocked until the other has started: run one after the other, they would hang."""
  wait_for = "import os, pathlib, sys, time\nme, other = sys.argv[1:]\npathlib.Path(me).touch()\n"
  wait_for += "while not os.path.exists(other): time.sleep(0.02)\nprint('saw', os.path.basename(other))\n"
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  procs = [SERVER.start(["-c", wait_for, a, b], str(tmp_path), timeout=60)]
  procs.append(SERVER.start(["-c", wait_for, b, a], str(tmp_path), timeout=60))
  outs = [p.result() for p in reversed(procs)]
  assert [(o.returncode, o.stdout) for o in outs] == [(0, "saw a\n"), (0, "saw b\n")]


def test_environment_changes_reach_one_command_and_its_xla_backend(tmp_path):
  from xla_flags import xla_flags

  code = "import os, jax; print(len(jax.devices()), os.environ.get('FORKRUN_X'), 'HOME' in os.environ)"
  eight = SERVER.run(["-c", code], str(tmp_path), env={"XLA_FLAGS": xla_flags(8), "FORKRUN_X": "1", "HOME": None})
  assert (eight.returncode, eight.stdout) == (0, "8 1 False\n"), eight.stderr[-2000:]
  plain = SERVER.run(["-c", code], str(tmp_path))
  assert (plain.returncode, plain.stdout) == (0, "1 None True\n"), plain.stderr[-2000:]  # not the server's env


def test_a_child_takes_its_temporary_directory_from_its_own_environment(tmp_path):
  """The server's serving loop has used `tempfile` (its TMPDIR cached in `tempfile.tempdir`); a child must read
  TMPDIR afresh, as a new interpreter does (the notebooks' kernels write their runs under the test's TMPDIR)."""
  code = "import tempfile; print(tempfile.gettempdir())"
  mine = SERVER.run(["-c", code], str(tmp_path), env={"TMPDIR": str(tmp_path)})
  assert (mine.returncode, mine.stdout) == (0, f"{tmp_path}\n"), mine.stderr[-2000:]
  real = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert SERVER.run(["-c", code], str(tmp_path)).stdout == real.stdout  # the server's environment's, as in `python`


def test_close_kills_what_still_runs_and_a_later_command_restarts_it(tmp_path):
  proc = SERVER.start(["-c", "import time; time.sleep(60)"], str(tmp_path))
  pid = proc.pid
  SERVER.close()
  with pytest.raises(ProcessLookupError):  # killed and reaped by the server before it exited
    os.kill(pid, 0)
  assert SERVER.run(["-c", "print('again')"], str(tmp_path)).stdout == "again\n"
