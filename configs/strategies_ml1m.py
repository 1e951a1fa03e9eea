"""Transfer strategies on MovieLens-1M (melu protocol, the paper's year cutoffs), beside MeLU-5, MeLU-1 and `none`.

Command (the strategies table on ML-1M; 1 seed, as measured; 2 CPU cores: wall time in experiments/README.md):

    python -m experiments.strategies --config=strategies_ml1m --protocols=melu --seeds=1

One run of it:

    python -m transfer_meta.main --config=configs/strategies_ml1m.py --workdir=runs/strategies_ml1m

`configs/melu_ml1m.py` unchanged (MeLU on side features, 1200 meta-steps; its learners train in the first row's
run) with `config.strategy_name` set; every row and its settings are `configs/strategies_ml100k.py`'s
(`STRATEGY_KWARGS`, `ROW_STRATEGY`: fixed, not tuned on ML-1M), every method selected on valid MAE only.
Args: '' / 'melu', optionally ',smoke' (seconds: 2 seeds, 10 meta-steps, 20 steps per stage in the table's smoke).
"""

from __future__ import annotations

import ml_collections

from transfer_meta import config_files

PROTOCOL_CONFIGS = {"melu": "melu_ml1m"}


def _module(name: str):
  return config_files.sibling(__file__, name)


ROWS = _module("strategies_ml100k")  # the rows and their settings


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: '[melu][,smoke]' (default full size)."""
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts if p not in (*PROTOCOL_CONFIGS, "smoke")]
  if unknown:
    raise ValueError(f"unknown config arg {arg!r}; valid: '[melu][,smoke]'")
  smoke = "smoke" in parts
  c = _module(PROTOCOL_CONFIGS["melu"]).get_config("smoke" if smoke else None)
  c.unlock()
  c.strategy_name = "pretrain_finetune"
  kwargs = dict(ROWS.STRATEGY_KWARGS["pretrain_finetune"])
  if smoke:
    kwargs.update(pretrain_steps=20, batch_size=128)
  c.strategy = ml_collections.ConfigDict(kwargs)
  c.lock()
  return c


def sweep() -> list[dict]:
  """One run per table row, as `strategies_ml100k.sweep()`."""
  return ROWS.sweep()


def sweep_rows() -> list[str]:
  """The table row label of each `sweep()` run."""
  return ROWS.sweep_rows()
