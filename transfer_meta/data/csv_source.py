"""A user's own files: interactions plus optional user/item feature tables (.csv, .tsv or .parquet).

    tm.load_dataset("csv", interactions="ratings.csv", items="movies.csv",
                    columns={"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "ts"},
                    item_categorical=("studio",), multi_hot={"items": {"genres": "|"}}, item_year_column="year")

A feature table carries its entity's id in a column of the same name as in the interactions file
(`columns["user"]` for users, `columns["item"]` for items). Categorical, multi-hot and text columns are read
as strings (so zip codes keep leading zeros); ids are stripped of surrounding whitespace and are integers
when every id of the column is one, else strings, in every file. Text files are read strictly by
`csv_read.read_delimited` (malformed lines, empty or header-only files, bad encodings are errors naming the
line); errors name the file, the column and (for .csv/.tsv) the file line; see `builder.build_interactions`
for the checks on values. A multi-hot value that joins known labels with another separator than the one
given ('Action;Comedy' where the separator is '|') is an error, not a new label.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.csv_read import clip, normalize_ids, read_delimited
from transfer_meta.data.interactions import DataError, Interactions

DEFAULT_COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
_READERS = (".csv", ".tsv", ".parquet")


_SEPARATORS = (",", ";", "\t", "|")  # what a spreadsheet export may use; named in hints
_COMMA_DECIMAL = re.compile(r"^\s*[+-]?\d+,\d+\s*$")


def read_table(
  path: str | os.PathLike,
  str_columns: Sequence[str] = (),
  sep: str | None = None,
  decimal: str = ".",
  encoding: str = "utf-8",
) -> pd.DataFrame:
  """Reads a .csv/.tsv (header line first) or .parquet file; csv/tsv `str_columns` are read as strings.

  Args:
    path: the file. sep: field delimiter of text files (default: tab for .tsv, else comma).
    str_columns: columns read as strings. decimal, encoding: of text files (see `csv_read.read_delimited`).
  Returns:
    The frame; `attrs["lines"]` int [rows]: the file line of each row (text files only).
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  suffix = path.suffix.lower()
  if suffix == ".parquet":  # typed already; multi-hot columns may hold lists
    return pd.read_parquet(path)
  if suffix not in _READERS:
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(_READERS)}")
  sep = ("\t" if suffix == ".tsv" else ",") if sep is None else sep
  return read_delimited(path, sep, str_columns, decimal=decimal, encoding=encoding)


def _require(df: pd.DataFrame, path, wanted: Mapping[str, str]) -> None:
  """`wanted` maps a role (for the message) to a column name that must be present in `df`."""
  missing = {role: col for role, col in wanted.items() if col not in df.columns}
  if missing:
    hint = ""
    if len(df.columns) == 1:
      found = [s for s in _SEPARATORS if s in str(df.columns[0])]
      hint = f"; the header holds {found[0]!r}: pass sep={found[0]!r} (--config.dataset.sep)" if found else ""
    shown = "[" + ", ".join(clip(c) for c in df.columns[:30]) + (", ..." if len(df.columns) > 30 else "") + "]"
    raise DataError(f"{path}: missing column(s) {missing} (role: name); available columns: {shown}{hint}")


def _lines(df: pd.DataFrame):
  """The file line of each row (int [rows]) of a text file, else None (0-based rows in messages)."""
  return df.attrs.get("lines")


def _where(df: pd.DataFrame, pos: np.ndarray) -> str:
  lines = _lines(df)
  return f"line {int(lines[pos])}" if lines is not None else f"row {int(pos)}"


def _check_decimal(df: pd.DataFrame, path, column: str) -> None:
  """A numeric column written with a decimal comma ('4,5') names the line and says to pass decimal=','."""
  values = df[column]
  if pd.api.types.is_numeric_dtype(values):
    return
  hits = np.flatnonzero(values.map(lambda v: isinstance(v, str) and bool(_COMMA_DECIMAL.match(v))).to_numpy())
  if hits.size:
    raise DataError(
      f"{path}: {_where(df, hits[0])}, column {column!r}: {clip(values.iloc[hits[0]])} has a decimal comma "
      f"({hits.size} such values); pass decimal=',' (--config.dataset.decimal=,)"
    )


def _check_multi_hot(df: pd.DataFrame, path, column: str, sep: str) -> None:
  """A value joining known labels with another separator than `sep` is an error naming line and column."""
  values = df[column]
  if values.map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
    return  # parquet lists: no separator involved
  labels = {lab.strip() for v in values.dropna() for lab in str(v).split(sep)} - {""}
  for other in (s for s in (*_SEPARATORS, "/") if s != sep):
    for pos, v in enumerate(values.to_numpy(object)):
      if not isinstance(v, str) or other not in v:
        continue
      for lab in v.split(sep):
        parts = [p.strip() for p in lab.split(other)]
        if len(parts) > 1 and all(p in labels for p in parts if p):
          raise DataError(
            f"{path}: {_where(df, pos)}, column {column!r}: {clip(v)} joins labels {parts[:5]} with {other!r}, "
            f"but this column's separator is {sep!r}; write it with {sep!r} or pass the separator it uses"
          )


def parse_multi_hot(spec: str | Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
  """`multi_hot` as {'users' | 'items': {column: separator}}, from a mapping or a command-line string.

  The string form lists `<users|items>.<column>=<separator>` entries separated by spaces, e.g.
  `"items.genres=| users.hobbies=;"` (a separator is one character; write a tab as `\t`).
  """
  if spec is None or spec == "":
    return {}
  if not isinstance(spec, str):
    return {k: dict(v) for k, v in dict(spec).items()}
  out: dict[str, dict[str, str]] = {}
  for entry in spec.split():
    kind, dot, rest = entry.partition(".")
    column, eq, sep = rest.partition("=")
    sep = "\t" if sep == "\\t" else sep
    if not (dot and eq and column and len(sep) == 1) or kind not in ("users", "items"):
      raise ValueError(f"multi_hot entry {entry!r}: want '<users|items>.<column>=<one-character separator>'")
    out.setdefault(kind, {})[column] = sep
  return out


def _table(
  path,
  id_col: str,
  categorical: Sequence[str],
  multi_hot: Mapping[str, str],
  text: Sequence[str],
  extra: Sequence[str] = (),
  **read,
) -> tuple[RawTable, pd.DataFrame]:
  """A feature table file as a `RawTable` (and the frame, for extra columns such as the year)."""
  df = read_table(path, (*categorical, *multi_hot, *text), **read)
  _require(df, path, {"id": id_col, **{f"feature {c!r}": c for c in (*categorical, *multi_hot, *text, *extra)}})
  for column, sep in multi_hot.items():
    _check_multi_hot(df, path, column, sep)
  table = RawTable(
    ids=normalize_ids(df[id_col]),
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
  multi_hot: Mapping[str, Mapping[str, str]] | str | None = None,
  item_year_column: str | None = None,
  item_text: Sequence[str] = (),
  rating_scale: tuple[float, float] = (1, 5),
  duplicates: str = "error",
  name: str | None = None,
  sep: str | None = None,
  decimal: str = ".",
  encoding: str = "utf-8",
  users_file: str | os.PathLike | None = None,
  items_file: str | os.PathLike | None = None,
) -> Interactions:
  """Loads interactions and optional side-feature tables from files.

  Args:
    interactions: file with user, item, rating and (optionally) timestamp columns.
    users, items: optional feature-table files; every user/item in the interactions needs a row ('' or None:
      no table; '' stands for None in every optional keyword, as the command line cannot write None).
    columns: role -> column name for 'user', 'item', 'rating', 'timestamp' (default: the role names);
      'timestamp': None means the file has none (all timestamps 0).
    user_categorical, item_categorical: columns encoded as categorical features (missing -> `UNKNOWN`).
    multi_hot: {'users' | 'items': {column: separator}}, e.g. {'items': {'genres': '|'}}, or the string
      form `"items.genres=| users.hobbies=;"` (see `parse_multi_hot`; for the command line).
    item_year_column: items column with the release year (-> `Interactions.item_year`; missing -> -1).
    item_text: items columns kept as text (titles), never read by models.
    rating_scale: inclusive (low, high); ratings outside it are an error.
    duplicates: 'error' | 'last' | 'mean' (see `builder.build_interactions`).
    name: dataset name (default: the interactions file's stem). The melu and item_cold protocols pick their
      default year cutoff from it (`protocols.common.YEAR_CUTOFFS`; else the year leaving ~20% new items).
    sep: field delimiter of every text file (default: tab for .tsv, else comma), e.g. ';'.
    decimal: decimal mark of numeric columns ('.' or ','); encoding: text encoding of every text file.
    users_file, items_file: `users` / `items` under names a config can hold (a ConfigDict field cannot be
      called `items`: that is its method); give one name or the other.
  Returns:
    `Interactions`.
  """
  for alias, given in (("users", users_file), ("items", items_file)):
    if given and (users if alias == "users" else items):
      raise ValueError(f"give {alias}= or {alias}_file=, not both")
  users, items = users or users_file, items or items_file
  multi_hot = parse_multi_hot(multi_hot)
  # The command line cannot write None: '' means "none" for an optional file, column or name.
  users, items, item_year_column, name, sep = (v or None for v in (users, items, item_year_column, name, sep))
  columns = {k: v or None for k, v in dict(columns or {}).items()}
  user_categorical, item_categorical, item_text = map(_names, (user_categorical, item_categorical, item_text))
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
  read = dict(sep=sep, decimal=decimal, encoding=encoding)
  path = Path(interactions)
  df = read_table(path, **read)
  _require(df, path, {role: c for role, c in col.items() if c is not None})
  _check_decimal(df, path, col["rating"])
  user_table = item_table = year = None
  if users is not None:
    user_table, _ = _table(users, col["user"], user_categorical, multi_hot.get("users", {}), (), **read)
  if items is not None:
    extra = (item_year_column,) if item_year_column else ()
    item_table, items_df = _table(
      items, col["item"], item_categorical, multi_hot.get("items", {}), item_text, extra, **read
    )
    year = items_df[item_year_column].to_numpy() if item_year_column else None
  first_line = _lines(df)
  ts = df[col["timestamp"]].to_numpy() if col["timestamp"] is not None else None
  names = {**{k: v for k, v in col.items() if v is not None}, "item_year": item_year_column or "item_year"}
  return build_interactions(
    name or path.stem,
    normalize_ids(df[col["user"]]),
    normalize_ids(df[col["item"]]),
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


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
  """Column names from a sequence or a command-line string ('a,b' or 'a b')."""
  if isinstance(value, str):
    return tuple(v for v in re.split(r"[,\s]+", value) if v)
  return tuple(value)
