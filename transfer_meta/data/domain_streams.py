"""Data streams of cross-domain method stages (on a `data.cross_domain.CrossDomainSplit`).

    it = PairedDomainIterator(source_it, target_it)   # next() -> {"source": x[B], "target": x[B], "step": i32[B]}
    rows = overlap_user_rows(data, split)              # int64 [U_o]: one target training row per overlapping user
    rows = overlap_target_rows(data, split)            # int64: the target training rows of those users
    items, mask = history_items(data, rows, users, H)  # each user's H most recent source items (PTUPCDR)

Source rows are `split.source_rows` (every source-domain row: the cold users' source history is the transfer
signal); target rows are `split.target_train_rows()` (the training users' target ratings only), so a cold or
validation user's target rating never reaches a stage. Overlapping users are `split.roles['train']` (users with
rows in both domains whose target rows are training rows). `step` counts the paired batches drawn before this
one (repeated B times so the batch shards on its example axis); objectives with a schedule (DANN's lambda) read it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from transfer_meta.data.cross_domain import require_cross_domain
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.split import ColdStartSplit
from transfer_meta.data.streams import InteractionIterator


def domain_rows(split: ColdStartSplit, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(source rows, target training rows) of a cross-domain split, each sorted and non-empty."""
  split = require_cross_domain(split, what)
  out = (np.asarray(split.source_rows, np.int64), split.target_train_rows())
  for role, rows in zip(("source", "target training"), out):
    if rows.size == 0:
      raise DataError(f"{what}: protocol {split.protocol!r} has no {role} rows")
  return out


def _overlap_users(split: ColdStartSplit, what: str) -> np.ndarray:
  users = np.asarray(require_cross_domain(split, what).roles["train"], np.int64)
  if users.size == 0:
    raise DataError(f"{what}: protocol {split.protocol!r} has no overlapping training users (user-disjoint?)")
  return users


def overlap_user_rows(data: Interactions, split: ColdStartSplit) -> np.ndarray:
  """int64 [U_o]: for each overlapping training user, their first target training row (sorted rows).

  A carrier row gives a stage the user's id and features once per user (EMCDR fits its mapping per user, not per
  rating); the row's item and rating are not used.
  """
  users = _overlap_users(split, "the overlapping-users stream")
  _, tgt = domain_rows(split, "the overlapping-users stream")
  tgt = tgt[np.isin(data.user[tgt], users)]
  _, first = np.unique(data.user[tgt], return_index=True)  # tgt is sorted by row, so the first row per user
  return np.sort(tgt[first])


def overlap_target_rows(data: Interactions, split: ColdStartSplit) -> np.ndarray:
  """int64: the target training rows of the overlapping training users (PTUPCDR's task-oriented loss)."""
  users = _overlap_users(split, "the overlapping-target stream")
  _, tgt = domain_rows(split, "the overlapping-target stream")
  return tgt[np.isin(data.user[tgt], users)]


def history_items(
  data: Interactions, source_rows: np.ndarray, users: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Each user's most recent source items (PTUPCDR's history), padded.

  Args:
    data: the interactions.
    source_rows: the source-domain rows a history may use.
    users: int [U'] the users.
    max_len: H, the most recent items kept per user (by timestamp, then by row, newest first).
  Returns:
    (items int32 [U', H], mask bool [U', H]); a user without source rows has an all-False mask.
  """
  if max_len < 1:
    raise ValueError(f"history max_len={max_len} must be >= 1")
  users = np.asarray(users, np.int64)
  src = np.asarray(source_rows, np.int64)
  src = src[np.lexsort((-src, -data.timestamp[src], data.user[src]))]  # by user, newest first
  starts = np.searchsorted(data.user[src], users, side="left")
  ends = np.searchsorted(data.user[src], users, side="right")
  items = np.zeros((users.size, max_len), np.int32)
  mask = np.zeros((users.size, max_len), bool)
  for n, (a, b) in enumerate(zip(starts, ends)):
    got = data.item[src[a : min(b, a + max_len)]]
    items[n, : got.size], mask[n, : got.size] = got, True
  return items, mask


class PairedDomainIterator:
  """Paired minibatches {"source": x[B], "target": x[B], "step": int32 [B]} from two interaction iterators.

  Resumable: `state()` holds both iterators' states and the count of batches drawn.
  """

  def __init__(self, source: InteractionIterator, target: InteractionIterator):
    if source.batch_size != target.batch_size:
      raise ValueError(f"paired batch sizes differ: {source.batch_size} vs {target.batch_size}")
    self.source, self.target, self._count = source, target, 0

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    out = {"source": next(self.source), "target": next(self.target)}
    out["step"] = np.full(self.source.batch_size, self._count, np.int32)
    self._count += 1
    return out

  def state(self) -> dict:
    return {"source": self.source.state(), "target": self.target.state(), "count": self._count}

  def restore(self, state: dict) -> None:
    count = int(state["count"])
    if count < 0:
      raise ValueError(f"iterator state {dict(state)}: count must be >= 0")
    self.source.restore(state["source"])
    self.target.restore(state["target"])
    self._count = count


def _rows_iterator(data, split, feats, rows: np.ndarray, batch_size: int, seed: int) -> InteractionIterator:
  return InteractionIterator(data, feats, split.target, rows, batch_size, seed, drop_remainder=batch_size <= rows.size)


def paired_stream(data, split, feats, batch_size: int, seed: int) -> PairedDomainIterator:
  """Source and target-training minibatches of one seed (orders drawn from 2 seed and 2 seed + 1)."""
  src, tgt = domain_rows(split, "the domain-pairs stream")
  return PairedDomainIterator(
    _rows_iterator(data, split, feats, src, batch_size, 2 * seed),
    _rows_iterator(data, split, feats, tgt, batch_size, 2 * seed + 1),
  )


def overlap_stream(data, split, feats, batch_size: int, seed: int) -> InteractionIterator:
  """Minibatches of one carrier row per overlapping training user (`overlap_user_rows`)."""
  return _rows_iterator(data, split, feats, overlap_user_rows(data, split), batch_size, seed)


def overlap_target_stream(data, split, feats, batch_size: int, seed: int) -> InteractionIterator:
  """Minibatches of the overlapping training users' target training rows (`overlap_target_rows`)."""
  return _rows_iterator(data, split, feats, overlap_target_rows(data, split), batch_size, seed)
