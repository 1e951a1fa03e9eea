"""`CrossDomainSplit`: the split of a cross-domain protocol, and exactly what a cross-domain method may read.

A `CrossDomainSplit` IS a `ColdStartSplit` whose tasks are user tasks of the TARGET domain, so every learner
(MAML/Reptile, none/finetune), the evaluator, the reference baselines and the tables run on it unchanged. It adds
the SOURCE domain and the maps between the two. Rows index the `Interactions` the split was made from; fit
`split.target` (aligned with those rows). Ids are shared: a user or item has one dense id in both domains.

What a method reads:
  split.row_domain            int8 [N]: 0 source, 1 target, -1 in no domain (such rows are in no set: never read).
  split.source_rows           int64 [Rs] sorted: EVERY source-domain row. A method may train on all of them,
                              including the cold and validation users' source history (that history is the
                              transfer signal; only their TARGET ratings are hidden). Stream: 'source_interactions'.
  split.target_train_rows()   int64 sorted = `streams.training_rows(split)`: the rows of tasks['train'], the ONLY
                              target-domain rows a method may train on (stream 'interactions'; the baselines fit
                              on them too). Target rows of validation and cold users are never among them.
  split.tasks['train']        target tasks of the training users (query `n_query` random target ratings, support
                              the rest; stream 'tasks'): what the learners meta-train on.
  split.tasks['valid']        validation users, held out like the cold users: support = K target ratings, query =
                              the rest. Model selection only (`config.select_metric` 'valid/...').
  split.tasks['cold_target']  the test scenario, users cold in the target: support = K target ratings (K = 0:
                              zero-shot, empty support), query = all their other target ratings. Test only.
  split.tasks['source']       source-domain tasks of every user with > n_query source ratings (query n_query, rest
                              support; rows within `source_rows`): for meta-training on source tasks. Stream
                              'source_tasks'. Not an evaluation set.
  split.history[name]         `RowSets` aligned with tasks[name] (same task order): task t's user's source rows
                              (all of them, ascending; empty when the user has none, as in user-disjoint
                              benchmarks). What a personalised bridge (PTUPCDR) encodes. For every set in `tasks`.
  split.shared_users          int32 sorted: users with rows in both domains (the overlapping users; user-disjoint
                              benchmarks: empty). The user map between domains is the identity on them.
  split.shared_items          int32 sorted: items with rows in both domains (item-overlap benchmarks: the matched
                              items; genre_split: empty).
  split.roles                 {'train', 'valid', 'cold_target'} -> int32 sorted user ids. 'valid'/'cold_target':
                              the held-out users. 'train': the overlapping users (shared_users) whose target rows
                              may be trained on (those in `target_train_rows()`), e.g. what EMCDR learns its
                              mapping from; empty in user-disjoint benchmarks.
  split.domains               (source name, target name).
The manifest adds these (counts, roles, and their arrays in the hash) to the `ColdStartSplit` manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

import numpy as np

from transfer_meta.data.interactions import DataError
from transfer_meta.data.split import ColdStartSplit

SOURCE, TARGET = 0, 1
SOURCE_SET = "source"  # tasks[...] of the source domain
COLD = "cold_target"  # the test scenario
ROLES = ("train", "valid", COLD)


@dataclasses.dataclass(frozen=True)
class RowSets:
  """Ragged row lists for T tasks (CSR): task t's rows are `rows[ptr[t]:ptr[t + 1]]`."""

  ptr: np.ndarray  # int64 [T + 1]
  rows: np.ndarray  # int64 [R]

  def __post_init__(self):
    p = self.ptr
    if p.ndim != 1 or p.shape[0] < 1 or p[0] != 0 or p[-1] != self.rows.shape[0] or np.any(np.diff(p) < 0):
      raise DataError(f"RowSets: malformed ptr {p[:5]}... for {self.rows.shape[0]} rows")

  @classmethod
  def of_users(cls, users: np.ndarray, row_user: np.ndarray, rows: np.ndarray) -> RowSets:
    """Per user of `users` [T] (any order), its rows among `rows` (ascending); row_user: int [N] user per row."""
    rows = np.sort(np.asarray(rows, np.int64))
    keyed = rows[np.argsort(row_user[rows], kind="stable")]
    keys = row_user[keyed]
    users = np.asarray(users, np.int64)
    lo, hi = np.searchsorted(keys, users, "left"), np.searchsorted(keys, users, "right")
    sizes = hi - lo
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(users) else np.zeros(0, np.int64)
    return cls(ptr, keyed[take.astype(np.int64)] if take.size else np.zeros(0, np.int64))

  def __len__(self) -> int:
    return int(self.ptr.shape[0] - 1)

  def of(self, t: int) -> np.ndarray:
    return self.rows[self.ptr[t] : self.ptr[t + 1]]

  def sizes(self) -> np.ndarray:
    return np.diff(self.ptr)


@dataclasses.dataclass(frozen=True)
class CrossDomainSplit(ColdStartSplit):
  """A `ColdStartSplit` of target-domain user tasks plus the source domain (see the module docstring)."""

  domains: tuple[str, str] = ("source", "target")
  row_domain: np.ndarray = None  # int8 [N]
  source_rows: np.ndarray = None  # int64 [Rs]
  shared_users: np.ndarray = None  # int32 [Uo]
  shared_items: np.ndarray = None  # int32 [Io]
  roles: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # role -> int32 sorted user ids
  history: Mapping[str, RowSets] = dataclasses.field(default_factory=dict)  # set name -> RowSets [len(tasks[name])]

  def __post_init__(self):
    super().__post_init__()
    n = self.target.shape[0]
    for name in ("row_domain", "source_rows", "shared_users", "shared_items"):
      if getattr(self, name) is None:
        raise DataError(f"{self.protocol}: CrossDomainSplit needs {name}")
    if self.row_domain.shape != (n,) or self.row_domain.dtype != np.int8:
      raise DataError(
        f"{self.protocol}: row_domain must be int8 [{n}], got {self.row_domain.dtype} {self.row_domain.shape}"
      )
    if self.source_rows.size and np.any(self.row_domain[self.source_rows] != SOURCE):
      raise DataError(f"{self.protocol}: source_rows holds rows outside the source domain")
    if sorted(self.roles) != sorted(ROLES):
      raise DataError(f"{self.protocol}: roles must be {list(ROLES)}, got {sorted(self.roles)}")
    if SOURCE_SET not in self.tasks:
      raise DataError(f"{self.protocol}: CrossDomainSplit needs task set {SOURCE_SET!r}")
    for name, ts in self.tasks.items():
      want = SOURCE if name == SOURCE_SET else TARGET
      rows = ts.all_rows()
      if rows.size and np.any(self.row_domain[rows] != want):
        raise DataError(f"{self.protocol}: task set {name!r} holds rows outside domain {self.domains[want]!r}")
      if name not in self.history or len(self.history[name]) != len(ts):
        raise DataError(f"{self.protocol}: history[{name!r}] must have one entry per task of tasks[{name!r}]")
    held = np.concatenate([self.tasks["valid"].all_rows(), self.tasks[COLD].all_rows()])
    leaked = np.intersect1d(self.target_train_rows(), held)
    if leaked.size:
      raise DataError(f"{self.protocol}: {leaked.size} held-out target rows are training rows, e.g. {leaked[:5]}")

  def target_train_rows(self) -> np.ndarray:
    """int64 sorted: the target-domain rows a method may train on (all rows of tasks['train'])."""
    return np.unique(self.tasks["train"].all_rows())

  @property
  def manifest(self) -> dict:
    out = super().manifest
    digest = hashlib.sha256(out["hash"].encode())
    arrays = [self.row_domain, self.source_rows, self.shared_users, self.shared_items]
    arrays += [self.roles[r] for r in ROLES]
    for name in sorted(self.history):
      arrays += [self.history[name].ptr, self.history[name].rows]
    for arr in arrays:
      digest.update(np.ascontiguousarray(arr).astype(np.int64).tobytes())
    out["cross_domain"] = {
      "domains": list(self.domains),
      "rows": {d: int((self.row_domain == k).sum()) for k, d in enumerate(self.domains)},
      "rows_in_no_domain": int((self.row_domain < 0).sum()),
      "source_rows": int(self.source_rows.size),
      "target_train_rows": int(self.target_train_rows().size),
      "shared_users": int(self.shared_users.size),
      "shared_items": int(self.shared_items.size),
      "roles": {r: sorted(int(u) for u in self.roles[r]) for r in ROLES},
    }
    out["hash"] = digest.hexdigest()
    return out


def is_cross_domain(split: ColdStartSplit) -> bool:
  return isinstance(split, CrossDomainSplit)


def require_cross_domain(split: ColdStartSplit, what: str) -> CrossDomainSplit:
  """`split` itself when it is a `CrossDomainSplit`, else a ValueError saying `what` needs one."""
  if not isinstance(split, CrossDomainSplit):
    raise ValueError(
      f"{what} needs a cross-domain split (protocols 'genre_split', 'ml1m_to_ml100k'); got protocol {split.protocol!r}"
    )
  return split
