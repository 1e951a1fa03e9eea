"""Examples: the fixed-key pytree that models and learners consume.

An examples pytree ("x") is a dict of arrays sharing leading dims `[...]` (`[N]` for one task's
support or query, `[T, S]` in a batch):

  user       int32 [...]        dense user id
  item       int32 [...]        dense item id
  target     f32   [...]        rating (or 0/1 click) to fit; 0 where padded
  mask       bool  [...]        True for real interactions, False for padding
  user_cat   int32 [..., Fu]    user categorical features (`FeatureTable.cat_matrix` order)
  item_cat   int32 [..., Fi]    item categorical features
  user_multi f32   [..., Vu]    user multi-hot features (width may be 0)
  item_multi f32   [..., Vi]    item multi-hot features (e.g. genres)
  user_dense f32   [..., Du]    user dense features (width may be 0)
  item_dense f32   [..., Di]    item dense features (width may be 0)

Every key is always present so every batch of a dataset has one pytree structure. A task is
`{"support": x[S], "query": x[Q]}`; a task batch adds a leading `T` and `task_mask [T]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions

KEYS = (
  "user",
  "item",
  "target",
  "mask",
  "user_cat",
  "item_cat",
  "user_multi",
  "item_multi",
  "user_dense",
  "item_dense",
)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Sizes a model needs to build its embedding tables; derived from `Interactions`."""

  n_users: int
  n_items: int
  user_cat_sizes: tuple[int, ...]  # vocab size per user categorical feature
  item_cat_sizes: tuple[int, ...]
  user_multi_dim: int
  item_multi_dim: int
  user_dense_dim: int
  item_dense_dim: int

  @classmethod
  def from_interactions(cls, data: Interactions) -> FeatureSpec:
    u, i = data.user_features, data.item_features
    return cls(
      data.n_users,
      data.n_items,
      u.cat_sizes(),
      i.cat_sizes(),
      u.multi_matrix().shape[1],
      i.multi_matrix().shape[1],
      u.dense_matrix().shape[1],
      i.dense_matrix().shape[1],
    )


@dataclasses.dataclass(frozen=True)
class FeatureMatrices:
  """Stacked feature matrices of a dataset, computed once and indexed per batch."""

  user_cat: np.ndarray  # int32 [U, Fu]
  item_cat: np.ndarray  # int32 [I, Fi]
  user_multi: np.ndarray  # f32 [U, Vu]
  item_multi: np.ndarray  # f32 [I, Vi]
  user_dense: np.ndarray  # f32 [U, Du]
  item_dense: np.ndarray  # f32 [I, Di]

  @classmethod
  def from_interactions(cls, data: Interactions) -> FeatureMatrices:
    u, i = data.user_features, data.item_features
    return cls(u.cat_matrix(), i.cat_matrix(), u.multi_matrix(), i.multi_matrix(), u.dense_matrix(), i.dense_matrix())


def make_examples(
  feats: FeatureMatrices,
  users: np.ndarray,
  items: np.ndarray,
  target: np.ndarray | None = None,
  mask: np.ndarray | None = None,
) -> dict:
  """Examples for (user, item) pairs of any leading shape `[...]`.

  Args:
    feats: the dataset's feature matrices.
    users, items: int [...] dense ids (same shape).
    target: f32 [...] or None (zeros: scoring only).
    mask: bool [...] or None (all True).
  Returns:
    An examples dict (see module docstring) with leading shape `[...]`.
  """
  users = np.asarray(users, np.int32)
  items = np.asarray(items, np.int32)
  if users.shape != items.shape:
    raise DataError(f"users {users.shape} and items {items.shape} must have one shape")
  n_users, n_items = feats.user_cat.shape[0], feats.item_cat.shape[0]
  if users.size and (users.min() < 0 or users.max() >= n_users):
    raise DataError(f"unknown user id: dense ids must be in [0, {n_users}), got {users.min()}..{users.max()}")
  if items.size and (items.min() < 0 or items.max() >= n_items):
    raise DataError(f"unknown item id: dense ids must be in [0, {n_items}), got {items.min()}..{items.max()}")
  return {
    "user": users,
    "item": items,
    "target": np.zeros(users.shape, np.float32) if target is None else np.asarray(target, np.float32),
    "mask": np.ones(users.shape, bool) if mask is None else np.asarray(mask, bool),
    "user_cat": feats.user_cat[users],
    "item_cat": feats.item_cat[items],
    "user_multi": feats.user_multi[users],
    "item_multi": feats.item_multi[items],
    "user_dense": feats.user_dense[users],
    "item_dense": feats.item_dense[items],
  }


def gather_rows(
  data: Interactions, feats: FeatureMatrices, target: np.ndarray, rows: np.ndarray, length: int | None = None
) -> dict:
  """Examples for interaction `rows` [n], padded to `length` (>= n) with mask False.

  Padded entries repeat row 0's ids with target 0 and mask False, so they are valid gather
  indices and contribute nothing wherever the mask is honoured.
  """
  rows = np.asarray(rows, np.int64)
  n = rows.shape[0]
  length = n if length is None else length
  if length < n:
    raise DataError(f"cannot pad {n} interactions into length {length}")
  pad = length - n
  users = np.concatenate([data.user[rows], np.zeros(pad, np.int32)])
  items = np.concatenate([data.item[rows], np.zeros(pad, np.int32)])
  tgt = np.concatenate([target[rows], np.zeros(pad, np.float32)])
  mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
  return make_examples(feats, users, items, tgt, mask)
