"""Hard inputs through the CSV loader: each one is a clear, short error naming file, line and column, or is
read correctly (checked against the values written)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import transfer_meta as tm
from transfer_meta.data.interactions import DataError

HEADER = "user,item,rating,timestamp"
ROWS = ["1,10,4,100", "1,11,5,101", "2,10,3,102", "2,12,1,103"]
MAX_MESSAGE = 1000  # characters: every message here stays short


def _write(tmp_path, text: str | bytes, name: str = "ratings.csv"):
  path = tmp_path / name
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text, newline="")
  return path


NO_TS = {"timestamp": None}  # files without a timestamp column


def _error(path, **kw) -> str:
  with pytest.raises(DataError) as info:
    tm.load_dataset("csv", interactions=str(path), **{"columns": NO_TS, **kw})
  msg = str(info.value)
  assert str(path) in msg, msg
  assert len(msg) < MAX_MESSAGE, len(msg)
  return msg


def _expected_ratings(rows=ROWS):
  """(user, item, rating) triples of the rows, as the loader should give them back in raw ids."""
  return sorted((int(u), int(i), float(r)) for u, i, r, _ in (row.split(",") for row in rows))


def _triples(data: tm.Interactions):
  return sorted(
    (int(data.user_raw_ids[u]), int(data.item_raw_ids[i]), float(r))
    for u, i, r in zip(data.user, data.item, data.rating)
  )


def test_empty_file(tmp_path):
  assert "empty file" in _error(_write(tmp_path, ""))
  assert "empty file" in _error(_write(tmp_path, "\n\n  \n", "blank.csv"))


def test_header_only_file(tmp_path):
  msg = _error(_write(tmp_path, HEADER + "\n"))
  assert "header only" in msg and "line 1" in msg and "no data rows" in msg


@pytest.mark.parametrize(
  "bad, fields, why",
  [("3,13,4,104,extra", 5, "unquoted ','"), ("3,13,4", 3, "a field is missing")],
)
def test_rows_with_too_many_or_too_few_fields(tmp_path, bad, fields, why):
  path = _write(tmp_path, "\n".join([HEADER, *ROWS[:2], bad, *ROWS[2:]]) + "\n")
  msg = _error(path)
  assert f"line 4 has {fields} fields, the header has 4" in msg and why in msg and bad in msg


def test_unquoted_delimiter_inside_a_field_is_named_quoted_is_read(tmp_path):
  head = "item,title,genres"
  items = _write(tmp_path, f"{head}\n10,Movie A,Drama\n11,Movie, The,Comedy\n12,C,Drama\n", "items.csv")
  inter = _write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n")
  with pytest.raises(DataError, match=r"items\.csv: line 3 has 4 fields, the header has 3: a field holds an unquoted"):
    tm.load_dataset("csv", interactions=str(inter), items=str(items), item_text=("title",))
  items.write_text(f'{head}\n10,Movie A,Drama\n11,"Movie, The",Comedy\n12,C,Drama\n')
  data = tm.load_dataset("csv", interactions=str(inter), items=str(items), item_text=("title",))
  titles = dict(zip(data.item_raw_ids.tolist(), data.item_features.text["title"].tolist()))
  assert titles == {10: "Movie A", 11: "Movie, The", 12: "C"}


def test_very_long_field_gives_a_short_message(tmp_path):
  long = "x" * 2_000_000
  path = _write(tmp_path, "\n".join([HEADER, *ROWS, f"3,13,{long},104"]) + "\n")
  msg = _error(path)
  assert "non-numeric" in msg and "line(s) 6" in msg and "2000002 chars" in msg


def test_very_long_quoted_field_is_read(tmp_path):
  long = "y" * 300_000  # beyond Python csv's default field limit (131072)
  items = _write(tmp_path, f'item,title\n10,"{long}, and more"\n11,b\n12,c\n', "items.csv")
  inter = _write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n")
  data = tm.load_dataset("csv", interactions=str(inter), items=str(items), item_text=("title",))
  assert data.item_features.text["title"][0] == f"{long}, and more"


def test_multi_hot_with_another_separator_is_an_error(tmp_path):
  items = _write(tmp_path, "item,genres\n10,Drama|Comedy\n11,Comedy\n12,Drama;Comedy\n", "items.csv")
  inter = _write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n")
  with pytest.raises(DataError) as info:
    tm.load_dataset("csv", interactions=str(inter), items=str(items), multi_hot={"items": {"genres": "|"}})
  msg = str(info.value)
  assert "items.csv: line 4, column 'genres'" in msg and "';'" in msg and "'|'" in msg
  # A label with another character in it that does not join known labels stays one label.
  items.write_text("item,genres\n10,Drama|Comedy\n11,Sci-Fi/Fantasy\n12,Drama\n")
  data = tm.load_dataset("csv", interactions=str(inter), items="" + str(items), multi_hot="items.genres=|")
  assert data.item_features.vocab["genres"] == ("Comedy", "Drama", "Sci-Fi/Fantasy")
  np.testing.assert_array_equal(data.item_features.multi_hot["genres"], [[1, 1, 0], [0, 0, 1], [0, 1, 0]])


def test_spreadsheet_export_bom_crlf_blank_lines_spaces_is_read(tmp_path):
  body = "\r\n".join([" user , item ,rating,timestamp", "1, 10,4,100", "", "1,11 ,5,101", "2,10,3,102", "2,12,1,103"])
  path = _write(tmp_path, b"\xef\xbb\xbf" + (body + "\r\n\r\n\r\n").encode())
  data = tm.load_dataset("csv", interactions=str(path))
  assert _triples(data) == _expected_ratings()
  assert all(type(u) is int for u in data.user_raw_ids.tolist())  # ' 10' and '10' are one integer id


def test_line_numbers_count_blank_lines(tmp_path):
  path = _write(tmp_path, "\n".join([HEADER, ROWS[0], "", "", ROWS[1], "3,13,x,104"]) + "\n")
  msg = _error(path)
  assert "non-numeric" in msg and "line(s) 6" in msg, msg


def test_whitespace_only_line_is_named(tmp_path):
  msg = _error(_write(tmp_path, "\n".join([HEADER, ROWS[0], "   ", ROWS[1]]) + "\n"))
  assert "line 3 has 1 fields" in msg


def test_duplicate_header_names(tmp_path):
  msg = _error(_write(tmp_path, "user,item,rating,rating\n1,10,4,5\n"))
  assert "repeated column name(s)" in msg and "'rating' (columns 3, 4)" in msg


def test_empty_header_name(tmp_path):
  msg = _error(_write(tmp_path, "user,,rating\n1,10,4\n"))
  assert "line 1: column(s) [2] have no name" in msg


def test_ids_with_spaces_match_feature_table_ids(tmp_path):
  users = _write(tmp_path, "user,gender\n1 ,F\n 2,M\n", "users.csv")
  inter = _write(tmp_path, "user,item,rating\n 1,a,4\n2 ,b,5\n1,b,3\n")
  data = tm.load_dataset("csv", interactions=str(inter), users=str(users), user_categorical="gender", columns=NO_TS)
  assert data.user_raw_ids.tolist() == [1, 2]
  assert data.item_raw_ids.tolist() == ["a", "b"]
  genders = [data.user_features.vocab["gender"][c] for c in data.user_features.categorical["gender"]]
  assert genders == ["F", "M"]


def test_mixed_id_types_are_strings_everywhere(tmp_path):
  inter = _write(tmp_path, "user,item,rating\n1,10,4\nu2,10,5\n1,11,3\n")
  data = tm.load_dataset("csv", interactions=str(inter), columns=NO_TS)
  assert data.user_raw_ids.tolist() == ["1", "u2"]  # one id type per column, sorted as text
  assert _triples_str(data) == [("1", 10, 4.0), ("1", 11, 3.0), ("u2", 10, 5.0)]


def _triples_str(data):
  return sorted(
    (str(data.user_raw_ids[u]), int(data.item_raw_ids[i]), float(r))
    for u, i, r in zip(data.user, data.item, data.rating)
  )


def test_comma_decimal_ratings(tmp_path):
  path = _write(tmp_path, "user;item;rating\n1;10;4,5\n1;11;3\n2;10;2,5\n")
  msg = _error(path, sep=";")
  assert "line 2, column 'rating'" in msg and "decimal=','" in msg
  data = tm.load_dataset("csv", interactions=str(path), sep=";", decimal=",", columns=NO_TS)
  assert sorted(data.rating.tolist()) == [2.5, 3.0, 4.5]


def test_wrong_separator_is_named(tmp_path):
  msg = _error(_write(tmp_path, "user;item;rating\n1;10;4\n"))
  assert "missing column(s)" in msg and "pass sep=';'" in msg


def test_not_utf8_names_line_and_byte(tmp_path):
  path = _write(tmp_path, "user,item,rating,title\n1,10,4,ok\n1,11,5,caf\xe9\n".encode("latin-1"))
  msg = _error(path)
  assert "line 3, byte 11: not utf-8 text" in msg and "encoding=" in msg
  data = tm.load_dataset("csv", interactions=str(path), encoding="latin-1", columns=NO_TS)
  assert len(data.rating) == 2


def test_quoted_line_break_keeps_line_numbers(tmp_path):
  path = _write(tmp_path, 'user,item,rating,note\n1,10,4,"two\nlines"\n1,11,oops,x\n')
  msg = _error(path)
  assert "non-numeric" in msg and "line(s) 4" in msg, msg


def test_missing_rating_and_missing_id_name_the_line(tmp_path):
  assert "missing value at line(s) 3" in _error(_write(tmp_path, "user,item,rating\n1,10,4\n1,11,\n"))
  assert "missing id at line(s) 2" in _error(_write(tmp_path, "user,item,rating\n,10,4\n1,11,3\n", "b.csv"))


def test_message_lengths_are_bounded_for_many_bad_lines(tmp_path):
  rows = [f"{u},{u},4,1,{'z' * 5000}" for u in range(500)]
  msg = _error(_write(tmp_path, "\n".join([HEADER, *rows]) + "\n"))
  assert "(500 such lines in all)" in msg


def test_load_csv_name_keyword(tmp_path):
  path = _write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n")
  assert tm.load_dataset("csv", interactions=str(path)).name == "ratings"
  assert tm.load_dataset("csv", interactions=str(path), name="ml-100k-mine").name == "ml-100k-mine"


def test_bad_multi_hot_spec():
  from transfer_meta.data.csv_source import parse_multi_hot

  assert parse_multi_hot("items.genres=| users.tags=;") == {"items": {"genres": "|"}, "users": {"tags": ";"}}
  assert parse_multi_hot("items.tags=\\t") == {"items": {"tags": "\t"}}
  for bad in ("genres=|", "items.genres", "movies.genres=|", "items.genres=||"):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
      parse_multi_hot(bad)
