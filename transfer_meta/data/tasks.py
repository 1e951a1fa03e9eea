"""Fixed-shape task batches: the pytrees the trainer and evaluator consume.

A batch is `{"support": x[T, S], "query": x[T, Q], "task_mask": bool[T], "task_id": int32[T]}` with `x`
an examples dict (`transfer_meta.data.examples`). S and Q are the `bucket` of the batch's longest
support and query, so a run compiles once per (S, Q) bucket pair, not once per batch. Padded entries
have mask False, ids 0 and target 0; padded tasks have task_mask False, all-False masks and task_id -1
(a sentinel: never index with it unmasked). Losses must divide by max(count, 1) so that an
all-masked task gives 0, not NaN (`losses.masked_mean` does).

Task data built with a `prior` (a reference score per interaction row, for residual models) carries it
as one more examples key, `prior f32 [T, S]` / `[T, Q]`, moved with its row by every transform.

Training protocol (DESIGN.md): `TaskIterator(..., resample=True)` draws a fresh support/query split of every
training task at each pass (`TaskData.resampled`, seeded by `fold_in(key(seed), pass)`, sizes kept), so the
outer loss sees every training rating over the passes; `outer_support=True` scores the support in the outer
loss too (the batch's query is support + query). Evaluation sets are never resampled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from transfer_meta.data.examples import FeatureMatrices, make_examples
from transfer_meta.data.interactions import Interactions
from transfer_meta.data.split import ColdStartSplit, TaskSet

# Round numbers that fit the protocols' natural sizes: 10-rating queries (melu, recbole_metarec), K-shot
# supports of 5/10/20, item queries capped at 50, user supports up to 90 (100 ratings minus 10 queries).
DEFAULT_BUCKETS = (5, 10, 20, 50, 100, 200)
_FIELDS = ("user", "item", "target", "mask")
PRIOR = "prior"  # optional per-row field: the reference score a residual model adds to its output
_RESAMPLE_STREAM = 0x5EED  # folded into the seed key first, so resampling draws apart from other streams


def _fields(part: dict) -> tuple[str, ...]:
  return _FIELDS + ((PRIOR,) if PRIOR in part else ())


def resample_rng(seed: int, epoch: int) -> np.random.Generator:
  """The numpy generator of pass `epoch`'s support/query resampling: seeded by fold_in(key(seed), epoch)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _RESAMPLE_STREAM), epoch)
  return np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).tolist())


def _compact(arrs: dict, order: np.ndarray, count: np.ndarray, start: np.ndarray, width: int) -> dict:
  """Per task t, entries order[t, start[t] : start[t] + count[t]] of `arrs` [T, W], left-aligned in [T, width];
  the rest zero with mask False."""
  pos = np.arange(width)[None, :]
  idx = np.minimum(start[:, None] + pos, order.shape[1] - 1)
  take = np.take_along_axis(order, idx, axis=1)
  keep = pos < count[:, None]
  return {k: np.where(keep, np.take_along_axis(v, take, axis=1), np.zeros((), v.dtype)) for k, v in arrs.items()}


def _union(support: dict, query: dict, width: int) -> dict:
  """Each task's support then query rows, left-aligned in [T, width] (the outer loss's 'support + query')."""
  both = {k: np.concatenate([support[k], query[k]], axis=1) for k in support}
  order = np.argsort(~both["mask"], axis=1, kind="stable")  # real entries first, in support-then-query order
  count = both["mask"].sum(axis=1)
  return _compact(both, order, count, np.zeros_like(count), width)


def bucket(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The padded length for `n` entries: the smallest bucket >= n; past the largest bucket B, n rounded up
  to a multiple of B. `buckets` must be positive and strictly increasing."""
  if len(buckets) == 0 or min(buckets) < 1 or any(a >= b for a, b in zip(buckets[:-1], buckets[1:])):
    raise ValueError(f"buckets={tuple(buckets)} must be positive and strictly increasing")
  if n < 0:
    raise ValueError(f"cannot bucket a negative length {n}")
  for b in buckets:
    if n <= b:
      return int(b)
  return int(-(-n // buckets[-1]) * buckets[-1])


def _padded(
  data: Interactions, target: np.ndarray, ptr: np.ndarray, rows: np.ndarray, width: int, prior: np.ndarray | None
) -> dict:
  """{user, item, target, mask[, prior]}: [T, width] arrays holding each task's rows left-aligned, padding after."""
  sizes = np.diff(ptr)
  t = np.repeat(np.arange(sizes.shape[0]), sizes)
  pos = np.arange(rows.shape[0]) - np.repeat(ptr[:-1], sizes)
  out = {
    "user": np.zeros((sizes.shape[0], width), np.int32),
    "item": np.zeros((sizes.shape[0], width), np.int32),
    "target": np.zeros((sizes.shape[0], width), np.float32),
    "mask": np.zeros((sizes.shape[0], width), bool),
  }
  out["user"][t, pos], out["item"][t, pos] = data.user[rows], data.item[rows]
  out["target"][t, pos], out["mask"][t, pos] = target[rows], True
  if prior is not None:
    out[PRIOR] = np.zeros((sizes.shape[0], width), np.float32)
    out[PRIOR][t, pos] = prior[rows]
  return out


@dataclasses.dataclass(frozen=True)
class TaskData:
  """One TaskSet, padded once to [T, W] so a batch is fancy indexing plus a feature gather."""

  feats: FeatureMatrices
  task_ids: np.ndarray  # int32 [T]
  support: dict  # {user, item: int32, target: f32, mask: bool[, prior: f32]} each [T, Ws], Ws = bucket(max support)
  query: dict  # same with [T, Wq]
  support_sizes: np.ndarray  # int64 [T]
  query_sizes: np.ndarray  # int64 [T]
  buckets: tuple[int, ...] = DEFAULT_BUCKETS

  @classmethod
  def build(
    cls,
    data: Interactions,
    tasks: TaskSet,
    target: np.ndarray,
    feats: FeatureMatrices | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    prior: np.ndarray | None = None,
  ) -> TaskData:
    """Pads `tasks` of `data`. target: f32 [N] (the split's). feats: computed from `data` when None.
    prior: optional f32 [N] reference score per interaction row (residual models), carried as key 'prior'."""
    if target.shape != (len(data),):
      raise ValueError(f"target has shape {target.shape}, want ({len(data)},)")
    if prior is not None and (prior.shape != (len(data),) or not np.isfinite(prior).all()):
      raise ValueError(f"prior must be finite with shape ({len(data)},), got shape {prior.shape}")
    feats = FeatureMatrices.from_interactions(data) if feats is None else feats
    s, q = tasks.support_sizes(), tasks.query_sizes()
    ws, wq = bucket(int(s.max(initial=0)), buckets), bucket(int(q.max(initial=0)), buckets)
    return cls(
      feats,
      tasks.task_ids.astype(np.int32),
      _padded(data, target, tasks.support_ptr, tasks.support_rows, ws, prior),
      _padded(data, target, tasks.query_ptr, tasks.query_rows, wq, prior),
      s,
      q,
      tuple(buckets),
    )

  @classmethod
  def from_split(
    cls,
    data: Interactions,
    split: ColdStartSplit,
    name: str,
    feats: FeatureMatrices | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    prior: np.ndarray | None = None,
  ) -> TaskData:
    """TaskData of the split's task set `name` ('train', 'valid' or a scenario)."""
    if name not in split.tasks:
      raise ValueError(f"split {split.protocol!r} has no task set {name!r}; sets: {sorted(split.tasks)}")
    return cls.build(data, split.tasks[name], split.target, feats, buckets, prior)

  def __len__(self) -> int:
    return int(self.task_ids.shape[0])

  def resampled(self, rng: np.random.Generator) -> TaskData:
    """The same tasks with each task's rows (support and query together) split afresh into a support and a
    query of the original sizes, uniformly at random; widths, ids and features unchanged."""
    both = {k: np.concatenate([self.support[k], self.query[k]], axis=1) for k in _fields(self.support)}
    keys = np.where(both["mask"], rng.random(both["mask"].shape), 2.0)  # padding sorts last
    order = np.argsort(keys, axis=1, kind="stable")
    q, s = self.query_sizes, self.support_sizes
    query = _compact(both, order, q, np.zeros_like(q), self.query["mask"].shape[1])
    support = _compact(both, order, s, q, self.support["mask"].shape[1])
    return dataclasses.replace(self, support=support, query=query)

  def batch(self, indices: np.ndarray, n_tasks: int | None = None, outer_support: bool = False) -> dict:
    """The batch of tasks at positions `indices` [B], padded with masked tasks to `n_tasks` (default B).

    With `outer_support` the query holds each task's support rows then its query rows (for an outer loss
    over both; never for evaluation, whose metrics must read the query alone).

    Returns:
      {"support": x[n_tasks, S], "query": x[n_tasks, Q], "task_mask": bool [n_tasks], "task_id": int32
      [n_tasks]} with S, Q the buckets of the largest support and query among `indices`.
    """
    indices = np.asarray(indices, np.int64)
    n_tasks = indices.shape[0] if n_tasks is None else n_tasks
    if indices.ndim != 1 or indices.shape[0] == 0 or indices.shape[0] > n_tasks:
      raise ValueError(f"need 1..n_tasks={n_tasks} task indices, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= len(self):
      raise ValueError(f"task indices must be in [0, {len(self)}), got {indices.min()}..{indices.max()}")
    task_mask = np.arange(n_tasks) < indices.shape[0]
    idx = np.concatenate([indices, np.zeros(n_tasks - indices.shape[0], np.int64)])
    out = {"task_mask": task_mask, "task_id": np.where(task_mask, self.task_ids[idx], -1).astype(np.int32)}
    keep = task_mask[:, None]
    parts = {}
    for part, sizes in (("support", self.support_sizes), ("query", self.query_sizes)):
      width = bucket(int(sizes[indices].max()), self.buckets)
      arr = {k: getattr(self, part)[k][idx, :width] for k in _fields(self.support)}
      # Fancy indexing already copied; padded task slots (repeats of task 0) are zeroed, when there are any.
      parts[part] = arr if task_mask.all() else {k: np.where(keep, v, np.zeros((), v.dtype)) for k, v in arr.items()}
    if outer_support:
      width = bucket(int((self.support_sizes + self.query_sizes)[indices].max()), self.buckets)
      parts["query"] = _union(parts["support"], parts["query"], width)
    for part, arr in parts.items():
      out[part] = make_examples(self.feats, arr["user"], arr["item"], arr["target"], arr["mask"])
      if PRIOR in arr:
        out[part][PRIOR] = arr[PRIOR]
    return out


class TaskIterator:
  """Endless training batches in a deterministic order.

  Epoch e visits the tasks in the permutation drawn from (seed, e). Without `drop_remainder` an epoch's
  last, short batch is padded with masked tasks; with it, that short batch is skipped. With `resample`, epoch
  e reads `task_data.resampled(resample_rng(seed, e))` (a pure function of (seed, e)); with `outer_support`,
  batches carry the support in the query too (`TaskData.batch`). `slots` (default `batch_size`) pads every
  batch with masked tasks to that many (a chunked step's multiple of its chunk size). `state()` / `restore()`
  make a resumed run see exactly the batches an uninterrupted one would.
  """

  def __init__(
    self,
    task_data: TaskData,
    batch_size: int,
    seed: int,
    drop_remainder: bool = False,
    resample: bool = False,
    outer_support: bool = False,
    slots: int | None = None,
  ):
    if batch_size < 1 or (drop_remainder and batch_size > len(task_data)):
      raise ValueError(
        f"batch_size={batch_size} must be in 1..{len(task_data) if drop_remainder else 'inf'} "
        f"for {len(task_data)} tasks (drop_remainder={drop_remainder})"
      )
    if seed < 0:
      raise ValueError(f"seed={seed} must be >= 0")
    if slots is not None and slots < batch_size:
      raise ValueError(f"slots={slots} must be >= batch_size={batch_size}")
    self.task_data, self.batch_size, self.seed, self.drop_remainder = task_data, batch_size, seed, drop_remainder
    self.resample, self.outer_support = resample, outer_support
    self.slots = batch_size if slots is None else slots
    self._epoch, self._position, self._perm, self._epoch_data = 0, 0, None, None

  def _order(self) -> np.ndarray:
    if self._perm is None or self._perm[0] != self._epoch:
      self._perm = (self._epoch, np.random.default_rng([self.seed, self._epoch]).permutation(len(self.task_data)))
    return self._perm[1]

  def epoch_data(self) -> TaskData:
    """The task data of the current epoch: resampled per epoch when `resample`, else the fixed one."""
    if not self.resample:
      return self.task_data
    if self._epoch_data is None or self._epoch_data[0] != self._epoch:
      self._epoch_data = (self._epoch, self.task_data.resampled(resample_rng(self.seed, self._epoch)))
    return self._epoch_data[1]

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    n = len(self.task_data)
    if self.drop_remainder and n - self._position < self.batch_size:
      self._epoch, self._position = self._epoch + 1, 0
    end = min(self._position + self.batch_size, n)
    indices = self._order()[self._position : end]
    data = self.epoch_data()
    self._epoch, self._position = (self._epoch + 1, 0) if end == n else (self._epoch, end)
    return data.batch(indices, self.slots, self.outer_support)

  def state(self) -> dict:
    """{"epoch", "position"}: where the next batch starts (plain ints, checkpointable)."""
    return {"epoch": self._epoch, "position": self._position}

  def restore(self, state: dict) -> None:
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position < len(self.task_data):
      raise ValueError(f"iterator state {dict(state)} out of range for {len(self.task_data)} tasks")
    self._epoch, self._position = epoch, position


def eval_batches(task_data: TaskData, batch_size: int) -> Iterator[dict]:
  """Every task exactly once, in order, `batch_size` per batch; the last batch padded with masked tasks."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  for start in range(0, len(task_data), batch_size):
    yield task_data.batch(np.arange(start, min(start + batch_size, len(task_data))), batch_size)
