"""Command line: `python -m transfer_meta.main --config=configs/<name>.py[:arg] --workdir=DIR [--config.a.b=v]`.

Flags only; the work is `transfer_meta.train.train_and_evaluate(config, workdir)`. Rerunning the same
command into the same workdir resumes from its latest readable checkpoint.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from transfer_meta import train

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, metrics and checkpoints.")
_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "auto",
  "Persistent XLA compilation cache directory, so a "
  "resumed run does not compile again; 'auto': WORKDIR/jax_cache, '': off.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").setLevel(logging.WARNING)
  cache = os.path.join(_WORKDIR.value, "jax_cache") if _CACHE.value == "auto" else _CACHE.value
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
