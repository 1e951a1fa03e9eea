"""Auxiliary per-row labels for multi-task objectives: a click label and a timestamp-derived label.

    click = click_label(data)                       # f32 [N]: 1 where the raw rating >= 4
    week  = first_week_label(data, split)            # f32 [N]: 1 where the row is in the user's first 7 days

`first_week_label` ("rated within 7 days of the user's first rating") may use only what the protocol lets a
method know before it scores a row, so the user's first rating is taken over the user's KNOWN rows:

    known(u)  = rows of user u in the split's training rows (every training task's support and query) or in
                the support of any evaluation task set ('valid' and every scenario); never an evaluation query row
    anchor(r) = min(timestamp of known(user[r]), timestamp[r])     (the row itself counts: a query row that
                precedes every known row IS the user's first rating, so its label is 1)
    label(r)  = 1  iff  timestamp[r] - anchor(r) < days * 86400    (strict: exactly 7 days later is 0)

Ties: a row at the anchor's timestamp (difference 0) is 1, however many rows share it. A support row's label
therefore depends on known rows only, and a query row's label on known rows plus its own timestamp (its own
ground truth, like its rating); no query row's timestamp moves another row's label. The label is not a
function of the rating. Timestamps are seconds (MovieLens' unix time).
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.split import ColdStartSplit

SECONDS_PER_DAY = 86400


def click_label(data: Interactions, threshold: float = 4.0) -> np.ndarray:
  """f32 [N]: 1.0 where the raw rating is >= `threshold` (the 'click' setting of implicit feedback), else 0.0."""
  return (np.asarray(data.rating) >= threshold).astype(np.float32)


def known_rows(split: ColdStartSplit) -> np.ndarray:
  """int64 [K]: sorted distinct rows a method may know before scoring: training rows and every evaluation support."""
  parts = [split.tasks["train"].all_rows()]
  parts += [ts.support_rows for name, ts in split.tasks.items() if name != "train"]
  return np.unique(np.concatenate([np.asarray(p, np.int64) for p in parts]))


def first_week_label(data: Interactions, split: ColdStartSplit, days: float = 7.0) -> np.ndarray:
  """f32 [N]: 1.0 where the row was rated within `days` of its user's first rating (see the module docstring).

  Args:
    data: the interactions (user, timestamp).
    split: the protocol split whose training rows and evaluation supports are known.
    days: the window (> 0).
  Returns:
    f32 [len(data)] in {0, 1}; defined for every row (rows outside every task too: they count as query rows).
  """
  if not days > 0:
    raise DataError(f"first_week_label: days={days!r} must be > 0")
  ts = np.asarray(data.timestamp, np.int64)
  user = np.asarray(data.user, np.int64)
  rows = known_rows(split)
  first = np.full(data.n_users, np.iinfo(np.int64).max, np.int64)
  np.minimum.at(first, user[rows], ts[rows])
  anchor = np.minimum(first[user], ts)
  return (ts - anchor < days * SECONDS_PER_DAY).astype(np.float32)


def aux_labels(data: Interactions, split: ColdStartSplit) -> dict[str, np.ndarray]:
  """The auxiliary labels of multi-task objectives, per row: {"click": rating >= 4, "week": `first_week_label`}."""
  return {"click": click_label(data), "week": first_week_label(data, split)}
