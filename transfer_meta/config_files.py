"""Loading config files as modules (configs are plain files under `configs/`, not a package).

A config that extends another (e.g. `configs/peers_ml1m.py` reuses the rows of `configs/peers_ml100k.py`) calls
`sibling(__file__, "peers_ml100k")`; `experiments.runner.config_module` loads a named config through `load_module`.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def load_module(path: str, module_name: str) -> ModuleType:
  """The Python file at `path`, executed as a fresh module named `module_name`.

  Raises:
    FileNotFoundError: naming the path when there is no such file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(anchor_file: str, name: str) -> ModuleType:
  """The config `<name>.py` in the directory of `anchor_file` (a config's `__file__`), as a module.

  Raises:
    FileNotFoundError: naming the missing file and the configs that do exist there.
  """
  directory = os.path.dirname(os.path.abspath(anchor_file))
  path = os.path.join(directory, f"{name}.py")
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(directory) if f.endswith(".py") and not f.startswith("_"))
    raise FileNotFoundError(f"config {name!r}: no file {path}; configs in {directory}: {known}")
  return load_module(path, f"cfg_{name}")
