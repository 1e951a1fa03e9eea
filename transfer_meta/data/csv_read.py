"""Delimited text files read strictly: a malformed file is an error naming the file, the line and the column.

`read_delimited` checks what pandas would otherwise guess at or pass over in silence, then lets pandas parse:
  - an empty file, a header with no data rows, an empty or repeated column name;
  - a line with more or fewer fields than the header (an unquoted delimiter inside a field, a missing field);
  - text that is not in the given encoding (the line and byte offset are named).
It accepts what a spreadsheet export adds: a UTF-8 byte-order mark, CRLF or CR line ends, blank lines
(skipped; line numbers stay those of the file), whitespace around column names, quoted fields with the
delimiter or line breaks inside, and very long fields. Every value quoted in a message is clipped to
`MAX_SHOWN` characters, so a message stays short whatever the file holds. The frame's `attrs["lines"]`
holds the file line of each row, for messages about values found later.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_meta.data.interactions import DataError

MAX_SHOWN = 60  # characters of a value quoted in a message
_SHOW = 3  # bad lines quoted in a message


def clip(value, limit: int = MAX_SHOWN) -> str:
  """repr(value), cut to `limit` characters with the full length noted."""
  text = repr(value)
  return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _decode(path: Path, raw: bytes, encoding: str) -> str:
  if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig") and raw.startswith(codecs.BOM_UTF8):
    raw = raw[len(codecs.BOM_UTF8) :]
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    byte = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(
      f"{path}: line {line}, byte {byte}: not {encoding} text ({e.reason}); pass the file's encoding, "
      "e.g. encoding='latin-1' (--config.dataset.encoding=latin-1)"
    ) from None
  except LookupError:
    raise ValueError(f"encoding={encoding!r} is not a codec Python knows") from None


def _lines(text: str) -> list[str]:
  """The file's lines as pandas splits them (LF, CRLF or CR)."""
  return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _records(path: Path, text: str, sep: str) -> tuple[list[str], int, list[int], list[int]]:
  """(header fields, its line, file line of each non-blank data record, its field count); lines from 1."""
  if '"' not in text:  # fast path: no quoting, a record is a line
    nonblank = [(i + 1, ln) for i, ln in enumerate(_lines(text)) if ln != ""]
    (first, header), body = nonblank[0], nonblank[1:]
    return header.split(sep), first, [i for i, _ in body], [ln.count(sep) + 1 for _, ln in body]
  old = csv.field_size_limit()
  csv.field_size_limit(2**31 - 1)  # very long quoted fields are data, not errors
  try:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=False)
    starts, counts, header, first, prev = [], [], None, 1, 0
    for row in reader:
      start, prev = prev + 1, reader.line_num
      if not row:
        continue
      if header is None:
        header, first = row, start
      else:
        starts.append(start)
        counts.append(len(row))
  except csv.Error as e:
    raise DataError(f"{path}: line {reader.line_num + 1}: cannot parse: {clip(str(e), 200)}") from None
  finally:
    csv.field_size_limit(old)
  return header or [], first, starts, counts


def _check_header(path: Path, header: list[str], sep: str, first: int) -> list[str]:
  names = [h.strip() for h in header]
  empty = [i + 1 for i, h in enumerate(names) if h == ""]
  if empty:
    raise DataError(f"{path}: line {first}: column(s) {empty} have no name (header {clip(sep.join(header), 200)})")
  seen: dict[str, list[int]] = {}
  for i, h in enumerate(names):
    seen.setdefault(h, []).append(i + 1)
  dup = {h: pos for h, pos in seen.items() if len(pos) > 1}
  if dup:
    shown = ", ".join(f"{clip(h)} (columns {', '.join(map(str, pos))})" for h, pos in list(dup.items())[:_SHOW])
    raise DataError(f"{path}: line {first}: repeated column name(s) {shown}; rename them")
  return names


def _check_counts(path: Path, text_lines: list[str], sep: str, width: int, lines: list[int], counts) -> None:
  counts = np.asarray(counts)
  bad = np.flatnonzero(counts != width)
  if not bad.size:
    return
  shown = []
  for b in bad[:_SHOW]:
    n, ln = int(counts[b]), lines[b]
    why = (
      f"a field holds an unquoted {sep!r} (quote the field, or pass another sep)"
      if n > width
      else f"a field is missing (write an empty field, {sep}{sep}, for a missing value)"
    )
    shown.append(f"line {ln} has {n} fields, the header has {width}: {why}: {clip(text_lines[ln - 1], 120)}")
  more = f" ({bad.size} such lines in all)" if bad.size > _SHOW else ""
  raise DataError(f"{path}: " + "; ".join(shown) + more)


def read_delimited(
  path: str | os.PathLike,
  sep: str,
  str_columns: Sequence[str] = (),
  decimal: str = ".",
  encoding: str = "utf-8",
) -> pd.DataFrame:
  """Reads a header-first delimited text file strictly (see the module docstring).

  Args:
    path: the file.
    sep: the one-character field delimiter.
    str_columns: columns read as strings (zip codes keep their leading zeros).
    decimal: the decimal mark of numeric columns ('.' or ',').
    encoding: the text encoding (a UTF-8 byte-order mark is dropped).
  Returns:
    The frame, column names stripped of surrounding whitespace; `attrs["lines"]`: int [rows] file lines.
  Raises:
    DataError: naming the file, the line and what is wrong.
  """
  path = Path(path)
  if len(sep) != 1:
    raise ValueError(f"sep={sep!r}: want one character, e.g. ',', ';', '\\t' or '|'")
  text = _decode(path, path.read_bytes(), encoding)
  if not text.strip():
    raise DataError(f"{path}: empty file; want a header line naming the columns, then one line per row")
  header, first, lines, counts = _records(path, text, sep)
  names = _check_header(path, header, sep, first)
  if not lines:
    raise DataError(f"{path}: header only (line {first}: {clip(sep.join(header), 200)}), no data rows")
  text_lines = _lines(text)
  _check_counts(path, text_lines, sep, len(names), lines, counts)
  try:
    df = pd.read_csv(
      io.StringIO(text),
      sep=sep,
      header=0,
      names=names,
      dtype={c: str for c in str_columns if c in names},
      decimal=decimal,
      skip_blank_lines=True,
      keep_default_na=True,
    )
  except (pd.errors.ParserError, ValueError) as e:
    raise DataError(f"{path}: cannot parse: {clip(str(e), 200)}") from None
  if len(df) != len(lines):  # whitespace-only lines: pandas and the count above must agree on the rows
    raise DataError(f"{path}: read {len(df)} rows but the file has {len(lines)} data lines; check blank lines")
  df.attrs["lines"] = np.asarray(lines, np.int64)
  return df


def normalize_ids(values: pd.Series) -> np.ndarray:
  """Id column values with surrounding whitespace removed; string ids that are all integers become int64.

  So ' 12' and '12' are one id, and an id column read as text in one file matches integer ids in another.
  """
  if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
    return values.to_numpy()
  stripped = values.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
  as_int = pd.to_numeric(stripped, errors="coerce")
  whole = as_int.notna().all() and stripped.map(lambda v: isinstance(v, str) and v.lstrip("+-").isdigit()).all()
  return as_int.to_numpy(np.int64) if whole else stripped.to_numpy(object)
