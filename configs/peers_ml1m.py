"""The peers' cold-start methods on MovieLens-1M under the RecBole-MetaRec protocol, rating and click settings:
`configs/peers_ml100k.py`'s table (every row, its settings and its selection) on the `ml-1m` data (issue 12).

Command (both settings, 5 seeds; wall and CPU time, machine, load and the tables in experiments/README.md,
"Peers' methods ... (ML-1M)"):

    python -m experiments.strategies --config=peers_ml1m --protocols=rating,click

One run of it (the rating setting, the learner rows of the config; `:click` for the click setting):

    python -m transfer_meta.main --config=configs/peers_ml1m.py --workdir=runs/peers_ml1m_rating

Protocol `recbole_metarec` as in `configs/recbole_metarec_ml1m.py`: the 3,131 ML-1M users with 13..100 ratings are
tasks, split 8:1:1 by first appearance in the shuffled interactions (2,505 / 313 / 313), 10 query ratings per task,
the rest support. Rows, training (150 meta-steps of 32 tasks, about two passes over the training users), selection
on valid nDCG@5 (rating) / valid AUC (click) every 10 steps: those of `peers_ml100k`, imported, not copied, and
not re-tuned on ML-1M. The changes besides the data, both for cost (ML-1M's validation and test sets are 5x
ML-100K's): evaluation batches of 128 tasks (as `recbole_metarec_ml1m`) and validation every 25 steps, not 10
(the selection then picks among steps 25, 50, ..., 150). RecBole-MetaRec publishes no ML-1M figures, and we have
not run its code on ML-1M: no reference rows.
Measured, rating setting (5 seeds; 2 CPU cores, shared, AMD EPYC, load 12.5-21): 2,861 s wall, at most 707 s of CPU
(both settings: 4,354 s wall, 1,243 s CPU, peak RSS 1.9 GB).
Test nDCG@5 (tie-aware / peer's index rule): item mean + user offset 0.799 / 0.642, NLBA 0.794 / 0.636, MetaEmb
0.742 / 0.579, MAML-MeLU 0.724 / 0.557, TaNP 0.697 / 0.523, constant 0.666 / 0.620, random 0.660 / 0.496. Nothing
beats item mean + user offset. Click setting: 1,486 s wall; test AUC item mean + user offset 0.704, NLBA 0.684,
MAML-MeLU 0.575, TaNP 0.539, constant 0.500, random 0.492; again nothing beats item mean + user offset.
Args: 'rating' or 'click', optionally ',smoke' (seconds of training: 2 seeds, 20 steps).
"""

from __future__ import annotations

import ml_collections

from transfer_meta import config_files


def _module(name: str):
  return config_files.sibling(__file__, name)


ML100K = _module("peers_ml100k")  # the rows, their settings and the verdict metrics
SETTINGS = ML100K.SETTINGS
VERDICT_METRICS = ML100K.VERDICT_METRICS
REFERENCE_ROWS: dict = {}  # no peer's figures on ML-1M (see the docstring)
EVAL_BATCH_SIZE = 128
EVAL_EVERY = 25  # 6 validations of 313 users per learner and seed, not 15


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: 'rating' or 'click', optionally ',smoke': `peers_ml100k.get_config(arg)` on the `ml-1m` data."""
  c = ML100K.get_config(arg)
  with c.unlocked():
    c.dataset_name = "ml-1m"
    c.eval_batch_size = EVAL_BATCH_SIZE
    if "smoke" not in (arg or "").split(","):  # the smoke keeps its eval_every (10 of 20 steps)
      c.eval_every = EVAL_EVERY
  return c


def table_rows(protocol: str = "rating") -> list[tuple[str, dict]]:
  """The rows of `peers_ml100k.table_rows(protocol)`, unchanged."""
  return ML100K.table_rows(protocol)


def sweep() -> list[dict]:
  """The rating setting's rows after the first, as plain overrides (for `experiments.ablate`)."""
  return ML100K.sweep()
