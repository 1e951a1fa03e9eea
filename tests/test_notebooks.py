"""Notebooks: valid nbformat v4 committed without outputs, only using the library (no definitions of their own),
and each executes top to bottom without error in a kernel running this interpreter (the .venv's).

The kernels are forks of one interpreter that has imported ipykernel, jax, the library, matplotlib and pandas
(tests/forkrun.py; a fresh kernel spends ~3 CPU-s on those imports before its first cell), and every
`train_and_evaluate` a cell calls runs its config with the README snippets' smoke overrides (tests/shrunk_runs.py:
1 seed, 2 steps, no comparison learners, no plots), installed by the kernel's launcher before the kernel starts, so
the cells run as written: what is checked is that they run, not how long they train.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import uuid

import forkrun
import nbformat
import pytest
import shrunk_runs
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning import LocalProvisioner
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
KERNEL = "transfer_meta_test"
TESTS = os.path.dirname(os.path.abspath(__file__))

# The kernel's environment, and so the server's: this checkout's library first (the kernel runs in notebooks/, not
# whatever an editable install points at), and a non-interactive matplotlib backend.
_ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "MPLBACKEND": "Agg"}
SERVER = forkrun.ForkServer(ROOT, env=_ENV, preload=("ipykernel.kernelapp", *forkrun.TRAINING_PRELOAD, "pandas"))
# `python -m ipykernel_launcher -f FILE` after `shrunk_runs.install()` (ipykernel_launcher's own two lines).
LAUNCH = (
  "import os, sys\nsys.path[0] = os.getcwd()  # as under python -m\n"
  f"sys.path.insert(0, {TESTS!r})\nimport shrunk_runs\nsys.path.pop(0)\nshrunk_runs.install()\n"
  "from ipykernel import kernelapp\nkernelapp.launch_new_instance()\n"
)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server (and so every kernel it forked) is waited for at the end of this module: their CPU is charged
  to this file's tests."""
  yield
  SERVER.close()


def test_the_tutorial_notebooks_exist():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  assert names[:2] == ["01_data_and_protocols.ipynb", "02_meta_train_and_adapt.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_clean(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before commit"
  assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
  for c in code:  # a tutorial imports the library and never redefines it
    assert not any(line.lstrip().startswith(("def ", "class ")) for line in c.source.splitlines()), c.source


class _Kernel:
  """The `subprocess.Popen` face jupyter_client's LocalProvisioner uses, over a `forkrun.Forked` kernel."""

  stdin = stdout = stderr = None  # closed by the provisioner's wait(); the fork's output stays with the server

  def __init__(self, forked: forkrun.Forked):
    self._forked, self.pid = forked, forked.pid

  def poll(self) -> int | None:
    return self._forked.poll()

  def wait(self, timeout: float | None = None) -> int:
    return self._forked.wait(timeout)

  def send_signal(self, sig: int) -> None:
    self._forked.send_signal(sig)

  def kill(self) -> None:
    self._forked.kill()

  def terminate(self) -> None:
    self._forked.send_signal(signal.SIGTERM)


class _ForkedProvisioner(LocalProvisioner):
  """Starts the kernel in a fork of SERVER instead of a fresh interpreter; signals go to the kernel alone (its process
  group is the server's, which holds this test process too)."""

  async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
    if cmd[1:3] != ["-m", "ipykernel_launcher"]:
      raise ValueError(f"not an ipykernel command line: {cmd}")
    env = kwargs.get("env") or {}
    changes = {**dict.fromkeys(set(_ENV) - set(env)), **{k: v for k, v in env.items() if _ENV.get(k) != v}}
    cwd = str(kwargs.get("cwd") or os.getcwd())
    self.process = _Kernel(SERVER.start(["-c", LAUNCH, *cmd[3:]], cwd, timeout=600, env=changes))
    self.pid, self.pgid, self.cwd = self.process.pid, None, cwd
    return self.connection_info


def _kernel_manager(tmp_path) -> KernelManager:
  """A kernel on exactly this interpreter, whatever kernelspecs the machine has: a fork of SERVER."""
  spec_dir = tmp_path / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "transfer_meta test",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
  km.kernel_id = str(uuid.uuid4())
  km.provisioner = _ForkedProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
  return km


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_executes(path, tmp_path, monkeypatch):
  for name in ("PYTHONPATH", "MPLBACKEND"):  # the kernel's environment (`launch_kernel` passes changes to the fork)
    monkeypatch.setenv(name, _ENV[name])
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary run directories land here
  nb = nbformat.read(path, as_version=4)
  where = "import sys, transfer_meta\nprint(sys.executable)\nprint(transfer_meta.__file__)\n"
  where += "print(getattr(transfer_meta.train_and_evaluate, 'shrunk_overrides', None))"  # the launcher's install()
  nb.cells.append(nbformat.v4.new_code_cell(where))
  km = _kernel_manager(tmp_path)
  client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": os.path.dirname(path)}})
  try:
    client.execute()  # raises CellExecutionError naming the failing cell
  finally:
    if km.has_kernel:  # a kernel manager passed in is not shut down by the client: its kernel would outlive the test
      km.shutdown_kernel(now=True)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
  lines = "".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream").splitlines()
  executable, library, overrides = lines
  assert executable == sys.executable and library == os.path.join(ROOT, "transfer_meta", "__init__.py")
  assert overrides == repr(shrunk_runs.OVERRIDES)  # the cells' runs were the smoke-sized ones
  assert sum(bool(c.outputs) for c in nb.cells if c.cell_type == "code") >= 5  # the cells produced output
