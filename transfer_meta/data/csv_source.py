"""A user's own files: interactions plus optional user/item feature tables (.csv, .tsv or .parquet).

    tm.load_dataset("csv", interactions="ratings.csv", items="movies.csv",
                    columns={"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "ts"},
                    item_categorical=("studio",), multi_hot={"items": {"genres": "|"}}, item_year_column="year")

A feature table carries its entity's id in a column of the same name as in the interactions file
(`columns["user"]` for users, `columns["item"]` for items). Categorical, multi-hot and text columns are read
as strings (so zip codes keep leading zeros); ids keep their inferred type in every file. Errors name the
file, the column and (for .csv/.tsv) the file line; see `builder.build_interactions` for the checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.interactions import DataError, Interactions

DEFAULT_COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
_READERS = (".csv", ".tsv", ".parquet")


def read_table(path: str | os.PathLike, str_columns: Sequence[str] = ()) -> pd.DataFrame:
  """Reads a .csv/.tsv (header line first) or .parquet file; csv/tsv `str_columns` are read as strings."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  suffix = path.suffix.lower()
  if suffix == ".parquet":  # typed already; multi-hot columns may hold lists
    return pd.read_parquet(path)
  if suffix not in _READERS:
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(_READERS)}")
  try:
    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={c: str for c in str_columns})
  except (pd.errors.ParserError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot parse: {e}") from e


def _require(df: pd.DataFrame, path, wanted: Mapping[str, str]) -> None:
  """`wanted` maps a role (for the message) to a column name that must be present in `df`."""
  missing = {role: col for role, col in wanted.items() if col not in df.columns}
  if missing:
    raise DataError(f"{path}: missing column(s) {missing} (role: name); available columns: {list(df.columns)}")


def _table(
  path,
  id_col: str,
  categorical: Sequence[str],
  multi_hot: Mapping[str, str],
  text: Sequence[str],
  extra: Sequence[str] = (),
) -> tuple[RawTable, pd.DataFrame]:
  """A feature table file as a `RawTable` (and the frame, for extra columns such as the year)."""
  df = read_table(path, (*categorical, *multi_hot, *text))
  _require(df, path, {"id": id_col, **{f"feature {c!r}": c for c in (*categorical, *multi_hot, *text, *extra)}})
  table = RawTable(
    ids=df[id_col].to_numpy(),
    source=str(path),
    categorical={c: df[c].to_numpy() for c in categorical},
    multi_hot={c: df[c].to_numpy(object) for c in multi_hot},
    multi_hot_sep=dict(multi_hot),
    text={c: df[c].to_numpy() for c in text},
  )
  return table, df


def load_csv(
  interactions: str | os.PathLike,
  users: str | os.PathLike | None = None,
  items: str | os.PathLike | None = None,
  columns: Mapping[str, str] | None = None,
  user_categorical: Sequence[str] = (),
  item_categorical: Sequence[str] = (),
  multi_hot: Mapping[str, Mapping[str, str]] | None = None,
  item_year_column: str | None = None,
  item_text: Sequence[str] = (),
  rating_scale: tuple[float, float] = (1, 5),
  duplicates: str = "error",
  name: str | None = None,
) -> Interactions:
  """Loads interactions and optional side-feature tables from files.

  Args:
    interactions: file with user, item, rating and (optionally) timestamp columns.
    users, items: optional feature-table files; every user/item in the interactions needs a row.
    columns: role -> column name for 'user', 'item', 'rating', 'timestamp' (default: the role names);
      'timestamp': None means the file has none (all timestamps 0).
    user_categorical, item_categorical: columns encoded as categorical features (missing -> `UNKNOWN`).
    multi_hot: {'users' | 'items': {column: separator}}, e.g. {'items': {'genres': '|'}}.
    item_year_column: items column with the release year (-> `Interactions.item_year`; missing -> -1).
    item_text: items columns kept as text (titles), never read by models.
    rating_scale: inclusive (low, high); ratings outside it are an error.
    duplicates: 'error' | 'last' | 'mean' (see `builder.build_interactions`).
    name: dataset name (default: the interactions file's stem).
  Returns:
    `Interactions`.
  """
  multi_hot = dict(multi_hot or {})
  stray = set(multi_hot) - {"users", "items"}
  if stray:
    raise ValueError(f"multi_hot keys must be 'users' or 'items', got {sorted(stray)}")
  stray = set(columns or {}) - set(DEFAULT_COLUMNS)
  if stray:
    raise ValueError(f"columns keys must be among {list(DEFAULT_COLUMNS)}, got {sorted(stray)}")
  col = {**DEFAULT_COLUMNS, **(columns or {})}
  if (user_categorical or multi_hot.get("users")) and users is None:
    raise ValueError("user features were requested but no users file was given")
  if (item_categorical or multi_hot.get("items") or item_year_column or item_text) and items is None:
    raise ValueError("item features were requested but no items file was given")
  path = Path(interactions)
  df = read_table(path)
  _require(df, path, {role: c for role, c in col.items() if c is not None})
  user_table = item_table = year = None
  if users is not None:
    user_table, _ = _table(users, col["user"], user_categorical, multi_hot.get("users", {}), ())
  if items is not None:
    extra = (item_year_column,) if item_year_column else ()
    item_table, items_df = _table(items, col["item"], item_categorical, multi_hot.get("items", {}), item_text, extra)
    year = items_df[item_year_column].to_numpy() if item_year_column else None
  first_line = None if path.suffix.lower() == ".parquet" else 2
  ts = df[col["timestamp"]].to_numpy() if col["timestamp"] is not None else None
  names = {**{k: v for k, v in col.items() if v is not None}, "item_year": item_year_column or "item_year"}
  return build_interactions(
    name or path.stem,
    df[col["user"]].to_numpy(),
    df[col["item"]].to_numpy(),
    df[col["rating"]].to_numpy(),
    ts,
    user_table=user_table,
    item_table=item_table,
    item_year=year,
    duplicates=duplicates,
    rating_scale=rating_scale,
    source=str(path),
    columns=names,
    first_line=first_line,
  )
