"""Command line: `python -m transfer_meta.main --config=configs/<name>.py[:arg] --workdir=DIR [--config.a.b=v]`.

Flags only; the work is `transfer_meta.train.train_and_evaluate(config, workdir)`. Rerunning the same
command into the same workdir resumes from its latest readable checkpoint. `--help` (with or without
`--config=FILE`) lists every config field and its default; `--dry_run` resolves the config and its overrides,
prints it and exits without touching the workdir.
"""

from __future__ import annotations

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from transfer_meta import cli, compile_cache, train

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, metrics and checkpoints.")
_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "auto",
  "Persistent XLA compilation cache directory, so a rerun, a resumed run or another workdir does not compile the "
  "same programs again; 'auto': the user's shared cache of runs, <$TRANSFER_META_CACHE or "
  "~/.cache/transfer_meta>/jax_compilation_cache/runs (bounded to 2 GiB at exit, least recently used first); "
  "'': off. Keeps compiles over 0.5 s, or over "
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS where the environment sets it.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process run through jax.distributed.initialize (JAX's own runtime; on SLURM, Open MPI, "
  "Kubernetes or Cloud TPU it finds the coordinator and this process's rank by itself).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (default: JAX_COORDINATOR_ADDRESS or auto-detected)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (default: auto-detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0..num_processes-1 (default: auto).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Resolve and print the config, then exit (nothing is run or written).")
flags.FLAGS["config"].parser = cli.CompletingParser(name="config", lock_config=True)  # + factory keywords
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DRY_RUN.value:
    print(f"dry run: {_CONFIG.value.to_json(indent=1, sort_keys=True)}\nworkdir: {_WORKDIR.value} (not written)")
    return
  logging.getLogger("absl").setLevel(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  compile_cache.enable(_CACHE.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def usage() -> str:
  """`--help`: this module's docstring, its flags and the config fields with their defaults."""
  own = [
    flags.FLAGS[f.name]
    for f in (_CONFIG, _WORKDIR, _CACHE, _DRY_RUN, _DISTRIBUTED, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
  ]
  lines = [(__doc__ or "").strip(), "", "flags:"]
  lines += [f"  --{f.name}: {f.help} (default: {f.default!r})" for f in own]
  return "\n".join([*lines, "", cli.config_help(sys.argv)])


if __name__ == "__main__":
  if any(a in cli.HELP_FLAGS for a in sys.argv[1:]):
    print(usage())
    sys.exit(0)
  app.run(main)
