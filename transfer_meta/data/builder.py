"""Raw columns -> `Interactions`: the one mechanism every source uses.

A source reads its files into plain arrays (raw ids, ratings, timestamps) and optional `RawTable`s of
side features keyed by raw id. `build_interactions` maps raw ids to dense ids (in sorted raw-id order),
validates every column, resolves duplicate (user, item) pairs by an explicit policy and encodes features.

Feature-table rows of users/items that have no interaction are left out: dense ids cover exactly the
entities that occur in the interactions (the count left out is logged at INFO level).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from transfer_meta.data.interactions import UNKNOWN, DataError, FeatureTable, Interactions

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("error", "last", "mean")
COLUMNS = {k: k for k in ("user", "item", "rating", "timestamp", "item_year")}  # default names in messages
_SHOW = 5  # examples quoted in error messages


@dataclasses.dataclass(frozen=True)
class RawTable:
  """Side features of one entity kind as read from a source: one row per raw id, M rows.

  Categorical and text values may be strings or numbers; None, NaN and "" mean missing (categorical
  id 0, `UNKNOWN`; text ""). Multi-hot values are `multi_hot_sep`-joined strings (default "|") or lists
  of labels; a missing value is the empty set. `vocab` optionally fixes the label order of a
  categorical or multi-hot feature (default: sorted labels); a value outside a fixed vocab is an error.
  """

  ids: np.ndarray  # [M] raw ids, unique
  source: str = "<table>"  # file name for messages
  categorical: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [M]
  multi_hot: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [M] str or lists
  multi_hot_sep: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> separator
  text: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [M]
  dense: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [M, D]
  vocab: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)


def _rows(positions: np.ndarray, first_line: int | np.ndarray | None) -> str:
  """'line(s) 3, 9' (file lines) or 'row(s) 1, 7' (0-based positions), first few plus a count.

  `first_line`: the file line of row 0, or int [N] the file line of every row (files with blank lines or
  quoted line breaks), or None (0-based rows).
  """
  if isinstance(first_line, np.ndarray):
    shown = ", ".join(str(int(first_line[p])) for p in positions[:_SHOW])
  else:
    shown = ", ".join(str(int(p) + (first_line or 0)) for p in positions[:_SHOW])
  more = f" ... ({positions.size} in all)" if positions.size > _SHOW else ""
  return f"{'line' if first_line is not None else 'row'}(s) {shown}{more}"


def _clipped(values, limit: int = 60) -> str:
  """A list's values for a message, each repr cut to `limit` characters (a field may be megabytes long)."""
  out = []
  for v in list(values):
    text = repr(v.item() if isinstance(v, np.generic) else v)
    out.append(text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)")
  return "[" + ", ".join(out) + "]"


def _numeric(values, what: str, source: str, first_line: int | None) -> np.ndarray:
  """float64 [N] from a raw column; non-numeric or missing entries are a DataError naming rows."""
  raw = pd.Series(np.asarray(values))
  num = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
  missing = raw.isna().to_numpy()
  bad = np.flatnonzero(np.isnan(num) & ~missing)
  if bad.size:
    raise DataError(
      f"{source}: column {what!r}: non-numeric value(s) {_clipped(raw.iloc[bad[:_SHOW]])} at {_rows(bad, first_line)}"
    )
  if missing.any():
    raise DataError(f"{source}: column {what!r}: missing value at {_rows(np.flatnonzero(missing), first_line)}")
  return num


def _labels(values) -> pd.Series:
  """Values as stripped strings (integral floats without '.0'); missing entries as NaN."""
  arr = np.asarray(values)
  s = pd.Series(arr, dtype=object)
  missing = s.isna().to_numpy()
  text = s.astype(str).str.strip()
  if arr.dtype.kind == "f":
    whole = ~missing & (np.mod(np.nan_to_num(arr), 1) == 0)
    text[whole] = arr[whole].astype(np.int64).astype(str)
  return text.mask(missing | (text == "").to_numpy())


def _codes(labels: pd.Series, vocab: Sequence[str] | None, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """Codes in [-1, V) for labels (-1: missing) and the vocab; labels outside a fixed vocab raise."""
  vocab = tuple(sorted(labels.dropna().unique())) if vocab is None else tuple(vocab)
  codes = pd.Index(vocab, dtype=object).get_indexer(labels.to_numpy(object)).astype(np.int64)
  stray = labels[(codes < 0) & labels.notna().to_numpy()]
  if len(stray):
    raise DataError(
      f"{what}: values {_clipped(sorted(set(stray))[:_SHOW])} are not in the vocabulary {_clipped(list(vocab)[:20])}"
    )
  return codes, vocab


def _multi_hot(values, sep: str, vocab, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """f32 [M, V] 0/1 matrix from sep-joined strings or label lists."""
  split = lambda v: list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] if pd.isna(v) else str(v).split(sep)
  exploded = pd.Series(list(values), dtype=object).map(split).explode()
  labels = _labels(exploded.to_numpy())
  keep = labels.notna().to_numpy()
  codes, vocab = _codes(labels[keep].reset_index(drop=True), vocab, what)
  mat = np.zeros((len(values), len(vocab)), np.float32)
  mat[exploded.index.to_numpy()[keep], codes] = 1.0
  return mat, vocab


def encode_table(table: RawTable, raw_ids: np.ndarray, kind: str) -> FeatureTable:
  """Encodes `table` for the entities `raw_ids` [n] (dense order); every id must have a row.

  Args:
    table: raw side features.
    raw_ids: [n] raw ids of the dense entities 0..n-1.
    kind: 'user' or 'item', for messages.
  Returns:
    A `FeatureTable` of n rows; categorical vocabularies start with `UNKNOWN` (missing values -> 0).
  """
  ids = pd.Index(np.asarray(table.ids))
  if ids.has_duplicates:
    raise DataError(
      f"{table.source}: {kind} feature table lists ids more than once, e.g. "
      f"{_clipped(ids[ids.duplicated()].unique()[:_SHOW])}"
    )
  idx = ids.get_indexer(raw_ids)
  absent = raw_ids[idx < 0]
  if absent.size:
    raise DataError(
      f"{kind} ids {_clipped(absent[:_SHOW])} ({absent.size} of {raw_ids.size}) occur in the "
      f"interactions but not in the {kind} feature table {table.source} (table ids are "
      f"{ids.dtype}, interaction ids {raw_ids.dtype}, e.g. {_clipped(ids[:3])})"
    )
  if len(ids) > raw_ids.size:
    log.info("%s: %d %s rows without interactions left out", table.source, len(ids) - raw_ids.size, kind)
  cat, multi, vocab = {}, {}, {}
  for name, values in table.categorical.items():
    codes, voc = _codes(_labels(np.asarray(values)[idx]), table.vocab.get(name), f"{table.source}: column {name!r}")
    cat[name], vocab[name] = (codes + 1).astype(np.int32), (UNKNOWN, *voc)
  for name, values in table.multi_hot.items():
    sep = table.multi_hot_sep.get(name, "|")
    multi[name], vocab[name] = _multi_hot(
      np.asarray(values, dtype=object)[idx], sep, table.vocab.get(name), f"{table.source}: column {name!r}"
    )
  text = {k: _labels(np.asarray(v)[idx]).fillna("").to_numpy(object) for k, v in table.text.items()}
  dense = {k: np.asarray(v, np.float32)[idx] for k, v in table.dense.items()}
  return FeatureTable(raw_ids.size, categorical=cat, multi_hot=multi, dense=dense, text=text, vocab=vocab)


def _dense_ids(raw, what: str, source: str, first_line: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(sorted unique raw ids as object [n], dense int32 [N])."""
  raw = np.asarray(raw)
  missing = np.flatnonzero(pd.isna(raw))
  if missing.size:
    raise DataError(f"{source}: column {what!r}: missing id at {_rows(missing, first_line)}")
  try:
    uniq, inv = sorted_unique(raw)
  except TypeError as e:
    raise DataError(f"{source}: column {what!r} mixes id types ({e})") from e
  return uniq.astype(object), inv.astype(np.int32).reshape(-1)


def sorted_unique(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`np.unique(raw, return_inverse=True)` of a 1-D array, by hashing then sorting only the distinct values.

  np.unique sorts every row: on ML-1M + ML-100K's 1.1M string user and item ids that took 1.6 CPU-s a column,
  `pd.factorize` + a sort of the ~7k distinct ids ~0.1. Same values and inverse (tests/test_cross_domain.py);
  mixed, unorderable types raise TypeError as np.unique does.
  """
  codes, uniques = pd.factorize(raw, use_na_sentinel=False)
  uniques = np.asarray(uniques)
  order = np.argsort(uniques, kind="stable")
  rank = np.empty(order.size, np.int64)
  rank[order] = np.arange(order.size)
  return uniques[order], rank[codes]


def _years(values, table: RawTable, item_ids: np.ndarray, what: str) -> np.ndarray:
  """int32 [I] years of the dense items from `values` [M] aligned with `table.ids` (missing or <= 0 -> -1)."""
  raw = pd.Series(np.asarray(values)).mask(lambda s: s.astype(str).str.strip() == "")
  year = _numeric(raw.fillna(-1), what, table.source, None)[pd.Index(np.asarray(table.ids)).get_indexer(item_ids)]
  return np.where(year > 0, year, -1).astype(np.int32)


def _resolve_duplicates(key, rating, ts, policy, describe, source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rows to keep [K] (ascending), their ratings and timestamps, after resolving duplicate keys."""
  ordered = np.sort(key)  # not np.unique(key).size: numpy 2.4's hashed unique took 1.0 CPU-s on ML-1M's keys, 0.01
  if not np.any(ordered[1:] == ordered[:-1]):
    return np.arange(key.size), rating, ts
  order = np.lexsort((np.arange(key.size), ts, key))  # by pair, then time, then file order
  ks = key[order]
  starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
  counts = np.diff(np.r_[starts, ks.size])
  groups = np.flatnonzero(counts > 1)
  if policy == "error":
    examples = "; ".join(describe(np.sort(order[starts[g] : starts[g] + counts[g]])) for g in groups[:3])
    raise DataError(
      f"{source}: {groups.size} duplicate (user, item) pairs, e.g. {examples}; pass duplicates='last' (keep "
      "the latest timestamp) or 'mean' (average the ratings)"
    )
  last = order[starts + counts - 1]  # latest timestamp; ties: the later row
  new_rating = np.add.reduceat(rating[order], starts) / counts if policy == "mean" else rating[last]
  log.warning(
    "%s: resolved %d duplicate (user, item) pairs (%d rows merged away) with duplicates=%r",
    source,
    groups.size,
    int((counts - 1).sum()),
    policy,
  )
  keep = np.argsort(last, kind="stable")
  return last[keep], new_rating[keep], ts[last[keep]]


def build_interactions(
  name: str,
  users_raw,
  items_raw,
  ratings,
  timestamps=None,
  user_table: RawTable | None = None,
  item_table: RawTable | None = None,
  item_year=None,
  duplicates: str = "error",
  rating_scale: tuple[float, float] = (1, 5),
  source: str = "<memory>",
  columns: Mapping[str, str] | None = None,
  first_line: int | np.ndarray | None = None,
) -> Interactions:
  """Builds validated `Interactions` from raw columns.

  Args:
    name: dataset name.
    users_raw, items_raw: [N] raw ids (any sortable type); dense ids follow sorted raw ids.
    ratings: [N] numbers (or numeric strings) inside `rating_scale`.
    timestamps: [N] integers, or None (all 0; then 'last' keeps the later row).
    user_table, item_table: optional side features; every interacting id needs a row.
    item_year: [M] release years aligned with `item_table.ids` (missing or <= 0 -> -1), or None.
    duplicates: 'error' | 'last' (keep the latest timestamp) | 'mean' (average ratings; latest timestamp).
    rating_scale: inclusive (low, high).
    source: file name used in messages.
    columns: names of the 'user', 'item', 'rating', 'timestamp', 'item_year' columns, for messages.
    first_line: file line of row 0 (messages cite lines), or int [N] the file line of each row, or None
      (messages cite 0-based rows).
  Returns:
    `Interactions` with rows in source order (minus merged duplicates).
  """
  if duplicates not in DUPLICATE_POLICIES:
    raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
  col = {**COLUMNS, **(columns or {})}
  n = len(users_raw)
  if len(items_raw) != n or len(ratings) != n or (timestamps is not None and len(timestamps) != n):
    raise DataError(f"{source}: user, item, rating and timestamp columns differ in length")
  user_ids, user = _dense_ids(users_raw, col["user"], source, first_line)
  item_ids, item = _dense_ids(items_raw, col["item"], source, first_line)
  rating = _numeric(ratings, col["rating"], source, first_line)
  lo, hi = rating_scale
  bad = np.flatnonzero((rating < lo) | (rating > hi))
  if bad.size:
    raise DataError(
      f"{source}: column {col['rating']!r}: rating(s) {rating[bad[:_SHOW]].tolist()} outside "
      f"[{lo}, {hi}] at {_rows(bad, first_line)}"
    )
  ts = np.zeros(n, np.int64) if timestamps is None else _numeric(timestamps, col["timestamp"], source, first_line)
  ts = ts.astype(np.int64)
  key = user.astype(np.int64) * item_ids.size + item
  describe = lambda rows: (
    f"user {_clipped([user_ids[user[rows[0]]]])[1:-1]} item {_clipped([item_ids[item[rows[0]]]])[1:-1]} "
    f"at {_rows(rows, first_line)}"
  )
  keep, rating, ts = _resolve_duplicates(key, rating, ts, duplicates, describe, source)
  user_feats = encode_table(user_table, user_ids, "user") if user_table else FeatureTable(user_ids.size)
  item_feats = encode_table(item_table, item_ids, "item") if item_table else FeatureTable(item_ids.size)
  if item_year is not None and item_table is None:
    raise DataError(f"{source}: item_year needs an item table to align with")
  year = None if item_year is None else _years(item_year, item_table, item_ids, col["item_year"])
  return Interactions(
    name,
    user[keep],
    item[keep],
    rating.astype(np.float32),
    ts,
    user_feats,
    item_feats,
    user_ids,
    item_ids,
    (float(lo), float(hi)),
    year,
  )
