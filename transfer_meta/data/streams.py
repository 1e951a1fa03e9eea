"""Interaction minibatches: the data stream of supervised stages (pretraining on every training interaction).

    it = InteractionIterator.from_split(data, split, feats, batch_size=256, seed=0)
    batch = next(it)             # examples dict x[B] (mask False on padding), `make_examples` layout
    state = it.state()           # {"epoch", "position"}: checkpointable; `restore(state)` resumes exactly

The rows are the split's training rows, `split.tasks['train'].all_rows()` (support and query of every
training task: the same rows the reference baselines fit on), so no evaluated row is ever seen. Epoch e
visits them in the permutation drawn from (seed, e); the epoch's last, short batch is padded with masked
entries (`drop_remainder=False`) or skipped.

Cross-domain splits (`transfer_meta.data.cross_domain`) add the source domain as its own stream:
`InteractionIterator.from_source` draws from `split.source_rows` (every source-domain row; never a target row).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from transfer_meta.data.examples import FeatureMatrices, gather_rows, make_examples
from transfer_meta.data.interactions import Interactions
from transfer_meta.data.split import ColdStartSplit


def training_rows(split: ColdStartSplit) -> np.ndarray:
  """int64 [R]: sorted, distinct rows of every training task (support and query)."""
  return np.unique(split.tasks["train"].all_rows())


class InteractionIterator:
  """Endless fixed-size minibatches of interactions in a deterministic, resumable order.

  Args:
    data: the interactions the rows index.
    feats: their feature matrices.
    target: f32 [len(data)] what to fit (the split's target).
    rows: int [R] row indices to draw from (R >= 1).
    batch_size: B interactions per batch.
    seed: the order's seed (>= 0).
    drop_remainder: skip an epoch's short last batch instead of padding it (needs B <= R).
  """

  def __init__(
    self,
    data: Interactions,
    feats: FeatureMatrices,
    target: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    seed: int,
    drop_remainder: bool = True,
  ):
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 1 or rows.size == 0:
      raise ValueError(f"InteractionIterator needs a non-empty 1-D array of rows, got shape {rows.shape}")
    if rows.min() < 0 or rows.max() >= len(data):
      raise ValueError(f"rows must index the {len(data)} interactions, got {rows.min()}..{rows.max()}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    if drop_remainder and batch_size > rows.size:
      raise ValueError(f"batch_size={batch_size} exceeds the {rows.size} rows (drop_remainder=True)")
    if seed < 0:
      raise ValueError(f"seed={seed} must be >= 0")
    self.data, self.feats, self.target, self.rows = data, feats, np.asarray(target, np.float32), rows
    self.batch_size, self.seed, self.drop_remainder = batch_size, int(seed), drop_remainder
    self._epoch, self._position, self._perm = 0, 0, None

  @classmethod
  def from_split(
    cls, data: Interactions, split: ColdStartSplit, feats: FeatureMatrices, batch_size: int, seed: int
  ) -> InteractionIterator:
    """Minibatches of the split's training rows (`training_rows`), fitting `split.target`."""
    rows = training_rows(split)
    return cls(data, feats, split.target, rows, batch_size, seed, drop_remainder=batch_size <= rows.size)

  @classmethod
  def from_source(
    cls, data: Interactions, split: ColdStartSplit, feats: FeatureMatrices, batch_size: int, seed: int
  ) -> InteractionIterator:
    """Minibatches of a cross-domain split's source-domain rows (`split.source_rows`), fitting `split.target`."""
    from transfer_meta.data.cross_domain import require_cross_domain  # noqa: PLC0415 (cross_domain imports split)

    rows = require_cross_domain(split, "the source-interactions stream").source_rows
    return cls(data, feats, split.target, rows, batch_size, seed, drop_remainder=batch_size <= rows.size)

  def _order(self) -> np.ndarray:
    if self._perm is None or self._perm[0] != self._epoch:
      self._perm = (self._epoch, np.random.default_rng([self.seed, self._epoch]).permutation(self.rows.size))
    return self._perm[1]

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    n = self.rows.size
    if self.drop_remainder and n - self._position < self.batch_size:
      self._epoch, self._position = self._epoch + 1, 0
    end = min(self._position + self.batch_size, n)
    picked = self.rows[self._order()[self._position : end]]
    self._epoch, self._position = (self._epoch + 1, 0) if end == n else (self._epoch, end)
    return gather_rows(self.data, self.feats, self.target, picked, self.batch_size)

  def state(self) -> dict:
    """{"epoch", "position"}: where the next batch starts (plain ints)."""
    return {"epoch": self._epoch, "position": self._position}

  def restore(self, state: dict) -> None:
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position < self.rows.size:
      raise ValueError(f"iterator state {dict(state)} out of range for {self.rows.size} rows")
    self._epoch, self._position = epoch, position


class SampledPairIterator:
  """Observed minibatches, each pair joined by one sampled item the user did not rate in training.

  `next()` -> {"observed": x[B], "sampled": x[B]}: `sampled[b]` has observed[b]'s user and an item drawn
  uniformly among those the user has no training row for (rejection sampling, `tries` rounds; a pair still
  colliding after them, or padding, has mask False), target 0 (a sampled item has no label: objectives use it
  only for teacher scores). The draw is seeded by (seed, epoch, position) of the observed batch, so `state()`
  / `restore()` of the observed iterator resume it exactly.

  Args:
    observed: the observed-pair iterator (its rows define what counts as rated).
    seed: the sampling seed (>= 0).
    tries: rejection rounds.
  """

  def __init__(self, observed: InteractionIterator, seed: int, tries: int = 8):
    if seed < 0 or tries < 1:
      raise ValueError(f"seed={seed} must be >= 0 and tries={tries} >= 1")
    self.observed, self.seed, self.tries = observed, int(seed), int(tries)
    data = observed.data
    self.n_items = int(observed.feats.item_cat.shape[0])
    self.rated = np.unique(data.user[observed.rows].astype(np.int64) * self.n_items + data.item[observed.rows])

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    where = self.observed.state()
    x = next(self.observed)
    rng = np.random.default_rng([self.seed, where["epoch"], where["position"]])
    users = x["user"].astype(np.int64)
    items = rng.integers(self.n_items, size=users.shape)
    for _ in range(self.tries):
      hit = np.isin(users * self.n_items + items, self.rated)
      if not hit.any():
        break
      items[hit] = rng.integers(self.n_items, size=int(hit.sum()))
    keep = x["mask"] & ~np.isin(users * self.n_items + items, self.rated)
    sampled = make_examples(self.observed.feats, x["user"], items, None, keep)
    return {"observed": x, "sampled": sampled}

  def state(self) -> dict:
    return self.observed.state()

  def restore(self, state: dict) -> None:
    self.observed.restore(state)
