"""What `main.py` needs beyond flag definitions: a config loader that completes factory keywords, `--help`.

`CompletingParser` loads `--config=FILE[:arg]` as ml_collections does, then (before the `--config.a.b=v`
overrides are applied) fills `config.learner` / `.model` / `.protocol` with every keyword of the factory
the command line finally names (`keywords.complete`), and refuses an override of a field the config does not
have, listing the fields that exist there.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import ml_collections
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from transfer_meta import keywords

HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def overrides(argv: Sequence[str], flag: str = "config") -> dict[str, str]:
  """`--config.a.b=v` (or `--config.a.b v`) arguments as {'a.b': 'v'} (the last one wins)."""
  out, prefix = {}, f"--{flag}."
  argv = list(argv)
  for i, arg in enumerate(argv):
    arg = arg if arg.startswith("--") else "-" + arg  # '-config.x' is absl's too
    if not arg.startswith(prefix):
      continue
    path, eq, value = arg[len(prefix) :].partition("=")
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
    out[path.removeprefix("no") if not eq and path.startswith("no") else path] = value
  return out


def check_paths(config: ml_collections.ConfigDict, paths: Sequence[str], flag: str = "config") -> None:
  """Raises ValueError for an override path naming no field, listing the fields at the level it fails."""
  for path in paths:
    node, walked = config, flag
    for part in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"--{flag}.{path}: {walked} is a value, not a section")
      if part not in node:
        raise ValueError(f"--{flag}.{path}: {walked} has no field {part!r}; valid: {sorted(node.keys())}")
      node, walked = node[part], f"{walked}.{part}"


def load(path: str, argv: Sequence[str], flag: str = "config") -> ml_collections.ConfigDict:
  """The config of `--config=path[:arg]`, completed for the factory names `argv` overrides, locked.

  Raises:
    ValueError: an override of a field the completed config does not have.
  """
  config = ConfigFileFlagParser(name=flag, lock_config=True).parse(path)
  given = overrides(argv, flag)
  names = {sec: given[f"{sec}_name"] for sec in ("learner", "model", "protocol") if f"{sec}_name" in given}
  whole = [path for path in given if path in config and isinstance(config[path], ml_collections.ConfigDict)]
  keywords.complete(config, names, skip=whole)
  check_paths(config, [p for p in given if not any(p.startswith(w + ".") for w in whole)], flag)
  return config


class CompletingParser(ConfigFileFlagParser):
  """ml_collections' config-file parser plus `load`'s completion and override check."""

  def parse(self, path):
    return load(path, sys.argv, self.name)


def config_help(argv: Sequence[str], flag: str = "config") -> str:
  """The config fields and their defaults: of `--config=FILE` when `argv` names one, else the trainer's."""
  given = [a.split("=", 1)[1] for a in argv if a.startswith((f"--{flag}=", f"-{flag}="))]
  if given:
    config, title = load(given[-1], argv, flag), f"config fields of {given[-1]}"
  else:
    from transfer_meta.train import default_config

    config, title = (
      keywords.complete(default_config()),
      "config fields (the trainer's defaults; --config=FILE --help shows that file's)",
    )
  lines = keywords.describe(config, flag)
  note = (
    "A field shown as None with a type is a factory keyword left at the factory's own default; "
    "learner/model/protocol list every keyword of the factory named by *_name (set it on the same line "
    "to see another factory's)."
  )
  return "\n".join([f"{title}:", *lines, "", note])
