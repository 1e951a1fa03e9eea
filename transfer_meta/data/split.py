"""`ColdStartSplit`: what a protocol produces — which tasks exist, what is support, what is query.

A task is one user (user-as-task protocols) or one item (item-as-task). Each named task set
(`train`, `valid`, and one per evaluation scenario such as `new_user`) lists its tasks in CSR form:
task t's support rows are `support_rows[support_ptr[t]:support_ptr[t + 1]]`, indices into the
arrays of the `Interactions` the split was made from (likewise for query).

The manifest proves two runs evaluated the same tasks: protocol name/version, parameters, seed,
sorted task ids per set, and a SHA-256 over every set's rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping

import numpy as np

from transfer_meta.data.interactions import DataError


@dataclasses.dataclass(frozen=True)
class TaskSet:
  """Ragged support/query rows for T tasks."""

  task_ids: np.ndarray  # int32 [T]: user ids (task_kind 'user') or item ids ('item')
  support_ptr: np.ndarray  # int64 [T + 1]
  support_rows: np.ndarray  # int64 [sum of support sizes]
  query_ptr: np.ndarray  # int64 [T + 1]
  query_rows: np.ndarray  # int64 [sum of query sizes]

  def __post_init__(self):
    T = self.task_ids.shape[0]
    for name in ("support", "query"):
      ptr, rows = getattr(self, f"{name}_ptr"), getattr(self, f"{name}_rows")
      if ptr.shape != (T + 1,) or ptr[0] != 0 or ptr[-1] != rows.shape[0] or np.any(np.diff(ptr) < 0):
        raise DataError(f"TaskSet: malformed {name}_ptr for {T} tasks and {rows.shape[0]} rows")

  @classmethod
  def from_lists(cls, task_ids, support: list, query: list) -> TaskSet:
    """Builds from per-task lists of row indices."""

    def csr(lists):
      sizes = np.array([len(x) for x in lists], np.int64)
      ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
      rows = np.concatenate([np.asarray(x, np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
      return ptr, rows.astype(np.int64)

    sp, sr = csr(support)
    qp, qr = csr(query)
    return cls(np.asarray(task_ids, np.int32), sp, sr, qp, qr)

  def __len__(self) -> int:
    return int(self.task_ids.shape[0])

  def support_sizes(self) -> np.ndarray:
    return np.diff(self.support_ptr)

  def query_sizes(self) -> np.ndarray:
    return np.diff(self.query_ptr)

  def support(self, t: int) -> np.ndarray:
    return self.support_rows[self.support_ptr[t] : self.support_ptr[t + 1]]

  def query(self, t: int) -> np.ndarray:
    return self.query_rows[self.query_ptr[t] : self.query_ptr[t + 1]]

  def all_rows(self) -> np.ndarray:
    return np.concatenate([self.support_rows, self.query_rows])

  def subset(self, idx: np.ndarray) -> TaskSet:
    """The tasks at positions `idx`, in that order."""
    idx = np.asarray(idx, np.int64)
    return TaskSet.from_lists(self.task_ids[idx], [self.support(t) for t in idx], [self.query(t) for t in idx])

  def cap_support(self, k: int | None) -> TaskSet:
    """Keeps the first `k` support rows of each task (support rows are stored in random order, so this is
    a random subset). `None` keeps all. Used by support-size (K-shot) ablations."""
    if k is None:
      return self
    if k < 1:
      raise ValueError(f"support cap must be >= 1, got {k}")
    return TaskSet.from_lists(
      self.task_ids, [self.support(t)[:k] for t in range(len(self))], [self.query(t) for t in range(len(self))]
    )

  def stats(self) -> dict:
    s, q = self.support_sizes(), self.query_sizes()
    f = lambda a: float(a.mean()) if a.size else 0.0  # noqa: E731
    return {
      "tasks": len(self),
      "support_mean": round(f(s), 2),
      "support_min": int(s.min()) if s.size else 0,
      "support_max": int(s.max()) if s.size else 0,
      "query_mean": round(f(q), 2),
      "query_min": int(q.min()) if q.size else 0,
    }


@dataclasses.dataclass(frozen=True)
class ColdStartSplit:
  """Output of a protocol.

  `tasks` holds 'train', 'valid' and one entry per evaluation scenario (names in `scenarios`).
  `target` is what models fit (raw ratings, or 0/1 clicks in a click setting), aligned with the
  Interactions rows. `metrics` names what the evaluator reports (see `transfer_meta.metrics`).
  """

  protocol: str
  version: str
  seed: int
  params: Mapping
  task_kind: str  # 'user' or 'item'
  tasks: Mapping[str, TaskSet]
  scenarios: tuple[str, ...]
  target: np.ndarray  # float32 [N]
  metrics: tuple[str, ...]
  excluded: Mapping = dataclasses.field(default_factory=dict)  # set -> {reason: count}: never silent

  def __post_init__(self):
    if self.task_kind not in ("user", "item"):
      raise DataError(f"task_kind must be 'user' or 'item', got {self.task_kind!r}")
    for name in ("train", "valid", *self.scenarios):
      if name not in self.tasks:
        raise DataError(f"{self.protocol}: split has no task set {name!r}")
      if len(self.tasks[name]) == 0:
        raise DataError(f"{self.protocol}: task set {name!r} has zero tasks with parameters {dict(self.params)}")

  @property
  def manifest(self) -> dict:
    sets = {}
    digest = hashlib.sha256()
    for name in sorted(self.tasks):
      ts = self.tasks[name]
      sets[name] = {"task_ids": sorted(int(t) for t in ts.task_ids), **ts.stats()}
      for arr in (ts.task_ids, ts.support_ptr, ts.support_rows, ts.query_ptr, ts.query_rows):
        digest.update(np.ascontiguousarray(arr).astype(np.int64).tobytes())
    digest.update(np.ascontiguousarray(self.target, np.float32).tobytes())
    return {
      "protocol": self.protocol,
      "version": self.version,
      "seed": int(self.seed),
      "params": json.loads(json.dumps(dict(self.params), default=str)),
      "task_kind": self.task_kind,
      "scenarios": list(self.scenarios),
      "metrics": list(self.metrics),
      "excluded": json.loads(json.dumps(dict(self.excluded), default=str)),
      "sets": sets,
      "hash": digest.hexdigest(),
    }

  def write_manifest(self, path) -> None:
    with open(path, "w") as f:
      json.dump(self.manifest, f, indent=1)
