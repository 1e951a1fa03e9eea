"""Categorical side features for cold start: an out-of-vocabulary row, and ordinal features as numbers.

OOV (DESIGN.md "Training protocol"): a categorical value that no training row shows (a new item's release
year, a new user's zip prefix) would read an embedding row that training never moved. `with_oov` maps such
values to one extra row per feature, index `vocab size` (so a model built from `oov_spec` has tables one
row longer), and maps the RARE training values there too — those seen on fewer than `min_count` training
entities — so the OOV row is trained, from the entities most like unseen ones. When a feature has unseen
values but no rare one, its least frequent training value is held out into the OOV row, so the row is
never untrained where it is read. Which values are rare is decided from the split's training rows only.

Ordinal features (`ordinal_as_dense`): a categorical feature whose vocabulary is numeric (release year)
also enters as one standardised dense column, so a year never seen in training still lands near its
neighbours instead of on an untrained row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
from transfer_meta.data.interactions import UNKNOWN, DataError, FeatureTable, Interactions
from transfer_meta.data.split import ColdStartSplit


def oov_spec(spec: FeatureSpec) -> FeatureSpec:
  """`spec` with every categorical vocabulary one row longer: the OOV row at index `size`."""
  return dataclasses.replace(
    spec,
    user_cat_sizes=tuple(s + 1 for s in spec.user_cat_sizes),
    item_cat_sizes=tuple(s + 1 for s in spec.item_cat_sizes),
  )


def oov_column(values: np.ndarray, train_entities: np.ndarray, size: int, min_count: int) -> np.ndarray:
  """`values` through `oov_map` (same arguments): int32 [n] remapped ids in [0, size]."""
  return oov_map(values, train_entities, size, min_count)[values]


def oov_map(values: np.ndarray, train_entities: np.ndarray, size: int, min_count: int) -> np.ndarray:
  """The map of one categorical column: value id -> itself, or the OOV index `size` when unseen or rare.

  Args:
    values: int32 [n] category ids of every entity, in [0, size).
    train_entities: int [m] the entities that appear in training rows (each counted once).
    size: the vocabulary size; `size` is the OOV index.
    min_count: a value on fewer than `min_count` training entities maps to OOV (>= 2, so the row trains).
  Returns:
    int32 [size]: the remapped id of each value id, in [0, size].
  """
  if min_count < 2:
    raise ValueError(f"oov min_count={min_count} must be >= 2 (at 1 no training entity would train the OOV row)")
  counts = np.bincount(values[train_entities], minlength=size)
  rare = counts < min_count
  used = np.bincount(values, minlength=size) > 0
  unseen_used = used & (counts == 0)
  if unseen_used.any() and not (rare & (counts > 0)).any():
    seen = np.flatnonzero(counts > 0)
    rare[seen[np.argmin(counts[seen])]] = True  # hold out the least frequent value: the OOV row must train
  return np.where(rare, size, np.arange(size)).astype(np.int32)


def train_entities(data: Interactions, split: ColdStartSplit) -> tuple[np.ndarray, np.ndarray]:
  """(users, items) that appear in the split's training rows, sorted and unique."""
  rows = split.tasks["train"].all_rows()
  return np.unique(data.user[rows]), np.unique(data.item[rows])


def oov_maps(data: Interactions, split: ColdStartSplit, min_count: int) -> dict[str, tuple[np.ndarray, ...]]:
  """{'user': maps, 'item': maps}: per categorical feature (cat_matrix order), `oov_map` from the split's
  training rows. Serving applies the user maps to a new user's features."""
  users, items = train_entities(data, split)
  out = {}
  for side, table, entities in (("user", data.user_features, users), ("item", data.item_features, items)):
    cat, sizes = table.cat_matrix(), table.cat_sizes()
    out[side] = tuple(oov_map(cat[:, f], entities, size, min_count) for f, size in enumerate(sizes))
  return out


def remap(cat: np.ndarray, maps: tuple[np.ndarray, ...]) -> np.ndarray:
  """int32 [..., F] categorical ids through one map per feature."""
  cols = [maps[f][cat[..., f]] for f in range(len(maps))]
  return np.stack(cols, axis=-1).astype(np.int32) if cols else np.asarray(cat, np.int32)


def with_oov(feats: FeatureMatrices, data: Interactions, split: ColdStartSplit, min_count: int) -> FeatureMatrices:
  """`feats` with every categorical column remapped by `oov_maps` from the split's training rows.

  Returns:
    FeatureMatrices whose categorical ids index tables of `oov_spec(FeatureSpec.from_interactions(data))`.
  """
  maps = oov_maps(data, split, min_count)
  return dataclasses.replace(
    feats, user_cat=remap(feats.user_cat, maps["user"]), item_cat=remap(feats.item_cat, maps["item"])
  )


def _numeric_vocab(name: str, vocab: Sequence[str]) -> np.ndarray:
  """f64 [len(vocab)] the numeric value of each vocabulary entry; NaN for the UNKNOWN entry."""
  out = np.full(len(vocab), np.nan)
  for k, word in enumerate(vocab):
    if word == UNKNOWN:
      continue
    try:
      out[k] = float(word)
    except ValueError:
      raise DataError(f"ordinal feature {name!r}: vocabulary entry {word!r} is not a number") from None
  return out


NUMERIC_SUFFIX = "_numeric"  # '<name>_numeric': the dense column `ordinal_as_dense` adds for feature <name>


def numeric_column(table: FeatureTable, name: str, codes: np.ndarray) -> np.ndarray:
  """f32 [n, 1]: categorical codes [n] of feature `name` as the standardised number `ordinal_as_dense` feeds,
  with the mean and std of `table`'s entities (so a brand-new entity reads the column its training peers read);
  unknown values sit at 0, the mean."""
  vocab_values = _numeric_vocab(name, table.vocab[name])
  values = vocab_values[table.categorical[name]]
  known = np.isfinite(values)
  if not known.any():
    raise DataError(f"ordinal feature {name!r}: no entity has a known value")
  mean, std = values[known].mean(), values[known].std()
  new = vocab_values[np.asarray(codes)]
  column = np.where(np.isfinite(new), (new - mean) / (std if std > 0 else 1.0), 0.0)
  return column[:, None].astype(np.float32)


def _table_with_numeric(table: FeatureTable, name: str) -> FeatureTable:
  dense = {**table.dense, f"{name}{NUMERIC_SUFFIX}": numeric_column(table, name, table.categorical[name])}
  return dataclasses.replace(table, dense=dense)


def ordinal_as_dense(data: Interactions, names: Sequence[str]) -> Interactions:
  """`data` with each named categorical feature (numeric vocabulary) also as a standardised dense column
  '<name>_numeric' [n, 1] on its side (unknown values at 0, the mean). The categorical feature is kept.

  Raises DataError naming the categorical features when a name is on neither side.
  """
  users, items = data.user_features, data.item_features
  for name in names:
    if name in users.categorical:
      users = _table_with_numeric(users, name)
    elif name in items.categorical:
      items = _table_with_numeric(items, name)
    else:
      raise DataError(
        f"ordinal feature {name!r} is not categorical on either side; user: {sorted(users.categorical)}, "
        f"item: {sorted(items.categorical)}"
      )
  return dataclasses.replace(data, user_features=users, item_features=items)
