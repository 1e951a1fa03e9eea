"""Notebooks: valid nbformat v4 committed without outputs, only using the library (no definitions of their own),
and each executes top to bottom without error in a kernel running this interpreter (the .venv's)."""

from __future__ import annotations

import glob
import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
KERNEL = "transfer_meta_test"


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


def _kernel_manager(tmp_path) -> KernelManager:
  """A kernel on exactly this interpreter, whatever kernelspecs the machine has."""
  spec_dir = tmp_path / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "transfer_meta test",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  return KernelManager(
    kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_executes(path, tmp_path, monkeypatch):
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary run directories land here
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # The kernel runs in notebooks/: this checkout's library first (not whatever an editable install points at).
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(path, as_version=4)
  where = "import sys, transfer_meta\nprint(sys.executable)\nprint(transfer_meta.__file__)"
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
  executable, library = "".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream").splitlines()
  assert executable == sys.executable and library == os.path.join(ROOT, "transfer_meta", "__init__.py")
  assert sum(bool(c.outputs) for c in nb.cells if c.cell_type == "code") >= 5  # the cells produced output
