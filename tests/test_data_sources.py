"""Data sources: the generic builder, ml-100k (real files), CSV/Parquet files and TFDS (mocked, offline)."""

import csv
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import transfer_meta as tm
from transfer_meta.data import movielens
from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.interactions import UNKNOWN, DataError

# ---------------------------------------------------------------------------------------------------- builder


def test_dense_ids_follow_sorted_raw_ids_and_rows_keep_source_order():
  d = build_interactions("t", ["b", "a", "c", "a"], [30, 10, 10, 20], [1, 2, 3, 4], [5, 6, 7, 8])
  assert list(d.user_raw_ids) == ["a", "b", "c"] and list(d.item_raw_ids) == [10, 20, 30]
  np.testing.assert_array_equal(d.user, [1, 0, 2, 0])
  np.testing.assert_array_equal(d.item, [2, 0, 0, 1])
  np.testing.assert_array_equal(d.rating, [1, 2, 3, 4])
  assert d.rating.dtype == np.float32 and d.timestamp.dtype == np.int64 and d.user.dtype == np.int32


def _dups(policy, caplog=None):
  # (u1, i1) three times: ts 5 -> 2, ts 9 -> 4, ts 7 -> 5; (u2, i1) twice: ratings 1 and 3 at ts 1 and 1.
  return build_interactions(
    "t",
    [1, 1, 2, 1, 2, 3],
    [1, 1, 1, 1, 1, 1],
    [2, 4, 1, 5, 3, 4],
    [5, 9, 1, 7, 1, 0],
    duplicates=policy,
    source="r.csv",
    first_line=2,
  )


def test_duplicates_error_lists_examples():
  with pytest.raises(DataError, match=r"r\.csv: 2 duplicate \(user, item\) pairs.*user 1 item 1 at line\(s\) 2, 3, 5"):
    _dups("error")


def test_duplicates_last_keeps_latest_timestamp_and_warns(caplog):
  with caplog.at_level(logging.WARNING):
    d = _dups("last")
  assert "resolved 2 duplicate (user, item) pairs (3 rows merged away)" in caplog.text
  # user 1: latest ts 9 -> rating 4; user 2: tie at ts 1 -> the later row (rating 3); user 3 untouched.
  assert sorted(zip(d.user_raw_ids[d.user], d.rating.tolist(), d.timestamp.tolist())) == [
    (1, 4, 9),
    (2, 3, 1),
    (3, 4, 0),
  ]


def test_duplicates_mean_averages_and_warns(caplog):
  with caplog.at_level(logging.WARNING):
    d = _dups("mean")
  assert "resolved 2 duplicate" in caplog.text
  got = dict(zip(d.user_raw_ids[d.user], d.rating.tolist()))
  assert got == {1: pytest.approx(11 / 3), 2: 2.0, 3: 4.0}
  assert dict(zip(d.user_raw_ids[d.user], d.timestamp.tolist())) == {1: 9, 2: 1, 3: 0}


def test_unknown_duplicates_policy():
  with pytest.raises(ValueError, match="duplicates must be one of"):
    build_interactions("t", [1], [1], [1], duplicates="first")


def test_feature_encoding_unknown_missing_and_multi_hot():
  users = RawTable(
    ids=np.array([3, 1, 2, 9]),
    source="u.csv",
    categorical={"g": np.array(["M", None, "F", "M"], object), "year": np.array([1995.0, np.nan, 2001.0, 1.0])},
    multi_hot={"tags": np.array(["x|y", "", None, "y"], object)},
    text={"name": np.array(["a", None, "c", "d"])},
  )
  d = build_interactions("t", [1, 2, 3], [1, 1, 1], [1, 2, 3], user_table=users)
  f = d.user_features
  assert f.n == 3  # user 9 has no interaction: left out
  assert f.vocab["g"] == (UNKNOWN, "F", "M") and f.categorical["g"].tolist() == [0, 1, 2]  # users 1, 2, 3
  assert f.vocab["year"] == (UNKNOWN, "1995", "2001") and f.categorical["year"].tolist() == [0, 2, 1]
  assert f.vocab["tags"] == ("x", "y")
  np.testing.assert_array_equal(f.multi_hot["tags"], [[0, 0], [0, 0], [1, 1]])
  assert f.text["name"].tolist() == ["", "c", "a"]


def test_fixed_vocab_rejects_stray_values():
  users = RawTable(ids=np.array([1]), source="u.csv", categorical={"g": np.array(["X"])}, vocab={"g": ("F", "M")})
  with pytest.raises(DataError, match=r"u\.csv: column 'g': values \['X'\] are not in the vocabulary"):
    build_interactions("t", [1], [1], [1], user_table=users)


def test_ids_absent_from_feature_table():
  items = RawTable(ids=np.array([1, 2]), source="items.csv")
  with pytest.raises(
    DataError,
    match=r"item ids \[5, 7\] \(2 of 3\) occur in the interactions but not in the item "
    r"feature table items\.csv",
  ):
    build_interactions("t", [1, 1, 1], [1, 5, 7], [1, 2, 3], item_table=items)


def test_feature_table_with_repeated_ids():
  with pytest.raises(DataError, match=r"u\.csv: user feature table lists ids more than once, e.g. \[2\]"):
    build_interactions("t", [1], [1], [1], user_table=RawTable(ids=np.array([1, 2, 2]), source="u.csv"))


# ---------------------------------------------------------------------------------------------------- ml-100k


def _raw_rows(name):
  with open(movielens.cached_files()[name], encoding="utf-8") as f:
    return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def test_ml100k_counts_and_dtypes(ml100k):
  d = ml100k
  assert (len(d), d.n_users, d.n_items) == (100_000, 943, 1682)
  assert sorted(np.unique(d.rating).tolist()) == [1, 2, 3, 4, 5] and d.rating_scale == (1.0, 5.0)
  inter = _raw_rows("ml-100k.inter")  # independent parse: per-user counts and the first rows
  counts = pd.Series([int(r[0]) for r in inter]).value_counts().sort_index()
  np.testing.assert_array_equal(d.user_counts(), counts.to_numpy())
  assert d.user_raw_ids[d.user[0]] == 196 and d.item_raw_ids[d.item[0]] == 242 and d.timestamp[0] == 881250949


def test_ml100k_vocab_sizes(ml100k):
  u, i = ml100k.user_features, ml100k.item_features
  assert {k: len(v) for k, v in u.vocab.items()} == {"age": 8, "gender": 3, "occupation": 22, "zip_prefix": 12}
  assert {k: len(v) for k, v in i.vocab.items()} == {"genre": 18, "release_year": 72}
  assert u.vocab["age"] == (UNKNOWN, "<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
  assert "unknown" not in i.vocab["genre"] and "Children's" in i.vocab["genre"]


def test_ml100k_user_features_match_independent_rules(ml100k):
  u = ml100k.user_features
  label = lambda name, dense: u.vocab[name][u.categorical[name][dense]]
  for uid, age, gender, occ, zip_code in _raw_rows("ml-100k.user"):
    dense = int(uid) - 1  # raw ids are 1..943
    age = int(age)
    want = (
      "<18"
      if age < 18
      else "18-24"
      if age < 25
      else "25-34"
      if age < 35
      else "35-44"
      if age < 45
      else ("45-49" if age < 50 else "50-55" if age < 56 else "56+")
    )
    assert label("age", dense) == want
    assert (label("gender", dense), label("occupation", dense)) == (gender, occ)
    assert label("zip_prefix", dense) == (zip_code[0] if zip_code[0].isdigit() else "non-US")
  assert (u.categorical["zip_prefix"] == u.vocab["zip_prefix"].index("non-US")).sum() == 18


def _item(d, raw):
  i = int(np.flatnonzero(d.item_raw_ids == raw)[0])
  f = d.item_features
  genres = [g for g, x in zip(f.vocab["genre"], f.multi_hot["genre"][i]) if x]
  return f.text["title"][i], int(d.item_year[i]), f.vocab["release_year"][f.categorical["release_year"][i]], genres


def test_ml100k_item_defects(ml100k):
  assert _item(ml100k, 1) == ("Toy Story", 1995, "1995", ["Animation", "Children's", "Comedy"])
  assert _item(ml100k, 267) == ("", -1, UNKNOWN, [])  # title/year "unkonwn", genre "unknown"
  assert _item(ml100k, 1412) == (
    "Land Before Time III: The Time of the Great Giving",
    1995,
    "1995",
    ["Animation", "Children's"],
  )  # year column "V"; year from the title
  assert _item(ml100k, 1373) == ("Good Morning", 1971, "1971", [])  # placeholder genre "unknown"
  assert (ml100k.item_features.multi_hot["genre"].sum(1) == 0).sum() == 2
  assert (ml100k.item_year == -1).sum() == 1
  years = {int(r[0]): int(r[2]) for r in _raw_rows("ml-100k.item") if r[2].isdigit()}
  assert len(years) == 1680
  assert all(ml100k.item_year[raw - 1] == y for raw, y in years.items())


def test_ml100k_second_load_is_offline(ml100k, monkeypatch):
  folder = movielens.cache_folder()
  assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]

  def no_network(*a, **k):
    raise AssertionError("pip must not run when the cache is valid")

  monkeypatch.setattr(subprocess, "run", no_network)
  d = tm.load_dataset("ml-100k")
  np.testing.assert_array_equal(d.rating, ml100k.rating)


def test_cache_dir_from_env_and_argument(tmp_path, monkeypatch):
  monkeypatch.setenv("TRANSFER_META_CACHE", str(tmp_path / "env"))
  assert movielens.cache_folder() == tmp_path / "env" / "ml-100k"
  assert movielens.cache_folder(tmp_path / "arg") == tmp_path / "arg" / "ml-100k"


def _corrupt_cache(ml100k, tmp_path):
  good = movielens.cached_files()
  folder = movielens.cache_folder(tmp_path)
  folder.mkdir(parents=True)
  for name, path in good.items():
    shutil.copy(path, folder / name)
  with open(folder / "ml-100k.user", "a") as f:
    f.write("944\t30\tM\tother\t12345\n")
  return good, folder


def test_corrupt_cache_is_fetched_again_once(ml100k, tmp_path, monkeypatch):
  good, folder = _corrupt_cache(ml100k, tmp_path)
  calls = []
  monkeypatch.setattr(movielens, "fetch", lambda f: (calls.append(f), shutil.copy(good["ml-100k.user"], f)))
  d = movielens.load_ml100k(cache_dir=tmp_path)
  assert calls == [folder] and d.n_users == 943


def test_corrupt_cache_after_refetch_is_an_error(ml100k, tmp_path, monkeypatch):
  _, folder = _corrupt_cache(ml100k, tmp_path)
  calls = []
  monkeypatch.setattr(movielens, "fetch", lambda f: calls.append(f))  # leaves the corrupt file
  with pytest.raises(DataError, match=r"SHA-256 still wrong for ml-100k.user \(expected 4f670007"):
    movielens.load_ml100k(cache_dir=tmp_path)
  assert calls == [folder]


def test_fetch_errors_offline(tmp_path, monkeypatch):
  def pip_fails(cmd, **kw):
    assert cmd[:3] == [sys.executable, "-m", "pip"] and "recbole==1.2.1" in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "no network")

  monkeypatch.setattr(subprocess, "run", pip_fails)
  with pytest.raises(DataError, match="(?s)PyPI is needed once.*no network"):
    movielens.fetch(tmp_path)

  def pip_bogus_wheel(cmd, **kw):
    tmp_dir = cmd[cmd.index("-d") + 1]
    with open(f"{tmp_dir}/recbole-1.2.1-py3-none-any.whl", "wb") as f:
      f.write(b"not a wheel")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(subprocess, "run", pip_bogus_wheel)
  with pytest.raises(DataError, match="expected one recbole==1.2.1 wheel with SHA-256 9c99482"):
    movielens.fetch(tmp_path)
  assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- CSV


def _write(path, text):
  path.write_text(text)
  return path


@pytest.fixture
def files(tmp_path):
  inter = _write(tmp_path / "ratings.csv", "uid,iid,stars,ts\n10,a,4,100\n2,b,5,101\n10,b,3,102\n7,a,1,103\n")
  users = _write(tmp_path / "users.csv", "uid,zip,job\n2,02139,artist\n7,,writer\n10,94043,artist\n99,11111,x\n")
  items = _write(tmp_path / "items.tsv", "iid\tgenres\tyear\ttitle\na\tDrama|Comedy\t1995\tA\nb\t\t\tB\n")
  cols = {"user": "uid", "item": "iid", "rating": "stars", "timestamp": "ts"}
  return inter, users, items, cols


def test_csv_happy_path(files):
  inter, users, items, cols = files
  d = tm.load_dataset(
    "csv",
    interactions=inter,
    users=users,
    items=items,
    columns=cols,
    user_categorical=("zip", "job"),
    multi_hot={"items": {"genres": "|"}},
    item_year_column="year",
    item_text=("title",),
  )
  assert d.name == "ratings" and (len(d), d.n_users, d.n_items) == (4, 3, 2)
  assert list(d.user_raw_ids) == [2, 7, 10] and list(d.item_raw_ids) == ["a", "b"]
  np.testing.assert_array_equal(d.user, [2, 0, 2, 1])
  np.testing.assert_array_equal(d.timestamp, [100, 101, 102, 103])
  u = d.user_features
  assert u.vocab["zip"] == (UNKNOWN, "02139", "94043") and u.categorical["zip"].tolist() == [1, 0, 2]
  assert u.vocab["job"] == (UNKNOWN, "artist", "writer")  # user 99 (no ratings, job 'x') left out
  np.testing.assert_array_equal(d.item_features.multi_hot["genres"], [[1, 1], [0, 0]])
  assert d.item_features.vocab["genres"] == ("Comedy", "Drama")
  assert d.item_year.tolist() == [1995, -1] and d.item_features.text["title"].tolist() == ["A", "B"]


def test_csv_missing_file(tmp_path):
  with pytest.raises(DataError, match=r"nope\.csv: no such file"):
    tm.load_dataset("csv", interactions=tmp_path / "nope.csv")


def test_csv_misnamed_columns_list_available(files):
  inter, *_ = files
  with pytest.raises(
    DataError,
    match=r"missing column\(s\) \{'user': 'user'.*available columns: \['uid', 'iid', "
    r"'stars', 'ts'\]",
  ):
    tm.load_dataset("csv", interactions=inter)


def test_csv_feature_column_missing(files):
  inter, users, _, cols = files
  with pytest.raises(DataError, match=r"users\.csv: missing column\(s\) \{\"feature 'age'\": 'age'\}"):
    tm.load_dataset("csv", interactions=inter, users=users, columns=cols, user_categorical=("age",))


@pytest.mark.parametrize(
  "value, message",
  [
    ("four", r"column 'stars': non-numeric value\(s\) \['four'\] at line\(s\) 3"),
    ("", r"column 'stars': missing value at line\(s\) 3"),
    ("6", r"column 'stars': rating\(s\) \[6\.0\] outside \[1, 5\] at line\(s\) 3"),
  ],
)
def test_csv_bad_ratings(tmp_path, value, message):
  inter = _write(tmp_path / "r.csv", f"user,item,stars\n1,1,4\n1,2,{value}\n2,1,3\n")
  with pytest.raises(DataError, match=r"r\.csv: " + message):
    tm.load_dataset("csv", interactions=inter, columns={"rating": "stars", "timestamp": None})


def test_csv_duplicates_policy(tmp_path, caplog):
  inter = _write(tmp_path / "r.csv", "user,item,rating,timestamp\n1,1,4,5\n1,1,2,3\n2,1,3,1\n")
  with pytest.raises(DataError, match=r"1 duplicate \(user, item\) pairs, e.g. user 1 item 1 at line\(s\) 2, 3"):
    tm.load_dataset("csv", interactions=inter)
  with caplog.at_level(logging.WARNING):
    d = tm.load_dataset("csv", interactions=inter, duplicates="last")
  assert d.rating.tolist() == [4, 3] and "resolved 1 duplicate" in caplog.text
  assert tm.load_dataset("csv", interactions=inter, duplicates="mean").rating.tolist() == [3, 3]


def test_csv_ids_absent_from_feature_table(files, tmp_path):
  inter, _, _, cols = files
  users = _write(tmp_path / "few_users.csv", "uid,job\n2,artist\n")
  with pytest.raises(DataError, match=r"user ids \[7, 10\] \(2 of 3\) .* user feature table .*few_users\.csv"):
    tm.load_dataset("csv", interactions=inter, users=users, columns=cols, user_categorical=("job",))


def test_csv_bad_year_and_unsupported_extension(files, tmp_path):
  inter, _, _, cols = files
  items = _write(tmp_path / "items.csv", "iid,year\na,1995\nb,soon\n")
  with pytest.raises(DataError, match=r"items\.csv: column 'year': non-numeric value\(s\) \['soon'\]"):
    tm.load_dataset("csv", interactions=inter, items=items, columns=cols, item_year_column="year")
  with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
    tm.load_dataset("csv", interactions=_write(tmp_path / "r.xlsx", "x"))


def test_parquet_with_list_multi_hot(tmp_path):
  pd.DataFrame(
    {"user": ["u1", "u2", "u2"], "item": [1, 1, 2], "rating": [0.5, 5.0, 2.5], "timestamp": [1, 2, 3]}
  ).to_parquet(tmp_path / "r.parquet")
  pd.DataFrame({"item": [1, 2], "tags": [["x"], ["y", "x"]]}).to_parquet(tmp_path / "items.parquet")
  d = tm.load_dataset(
    "csv",
    interactions=tmp_path / "r.parquet",
    items=tmp_path / "items.parquet",
    multi_hot={"items": {"tags": "|"}},
    rating_scale=(0.5, 5),
  )
  np.testing.assert_array_equal(d.item_features.multi_hot["tags"], [[1, 0], [1, 1]])
  assert d.rating_scale == (0.5, 5.0) and d.rating.tolist() == [0.5, 5.0, 2.5]
  pd.DataFrame({"user": [1], "item": [1], "rating": [9.0]}).to_parquet(tmp_path / "bad.parquet")
  with pytest.raises(DataError, match=r"outside \[1, 5\] at row\(s\) 0"):
    tm.load_dataset("csv", interactions=tmp_path / "bad.parquet", columns={"timestamp": None})


# ---------------------------------------------------------------------------------------------------- TFDS


def test_tfds_refuses_unknown_names():
  with pytest.raises(ValueError, match=r"unknown TFDS dataset 'movielens/100k-movies'; valid: .*25m-ratings"):
    tm.load_dataset("tfds:movielens/100k-movies")


def test_tfds_missing_package_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="requirements-tfds.txt"):
    tm.load_dataset("tfds:movielens/1m-ratings")


def _mock_examples(demographics):
  # genre label ids index TFDS's list: 2 Animation, 3 Children, 4 Comedy, 11 IMAX, 17 Unknown, 20 (no genres listed)
  rows = [
    (b"7", b"42", 4.0, 10, b"Toy Story (1995)", [2, 3, 4], True, 25.0, b"engineer", b"94043"),
    (b"3", b"42", 2.5, 11, b"Toy Story (1995)", [2, 3, 4], False, 1.0, b"student", b"T8H1N"),
    (b"7", b"5", 5.0, 12, b"No Year Here", [17], True, 25.0, b"engineer", b"94043"),
    (b"12", b"900", 1.0, 13, b"Heat (1995) ", [11, 20], False, 56.0, b"retired", b""),
  ]
  keys = (
    "user_id",
    "movie_id",
    "user_rating",
    "timestamp",
    "movie_title",
    "movie_genres",
    "user_gender",
    "bucketized_user_age",
    "user_occupation_text",
    "user_zip_code",
  )
  extra = {"raw_user_age": 30.0, "user_occupation_label": 0} if demographics else {}
  return [dict(zip(keys if demographics else keys[:6], r), **extra) for r in rows]


@pytest.mark.parametrize("variant", ["100k", "25m"])
def test_tfds_mocked(variant, tmp_path):
  tf = pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  demographics = variant == "100k"
  examples = _mock_examples(demographics)

  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=self.info.features.get_tensor_spec())

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp_path)):
    d = tm.load_dataset(f"tfds:movielens/{variant}-ratings", data_dir=str(tmp_path))
  assert d.name == f"tfds:movielens/{variant}-ratings" and (len(d), d.n_users, d.n_items) == (4, 3, 3)
  assert list(d.user_raw_ids) == [3, 7, 12] and list(d.item_raw_ids) == [5, 42, 900]
  np.testing.assert_array_equal(d.user, [1, 0, 1, 2])
  np.testing.assert_array_equal(d.rating, [4.0, 2.5, 5.0, 1.0])
  assert d.rating_scale == ((1.0, 5.0) if demographics else (0.5, 5.0))
  f = d.item_features
  assert d.item_year.tolist() == [-1, 1995, 1995] and f.text["title"].tolist() == ["No Year Here", "Toy Story", "Heat"]
  assert [f.vocab["release_year"][c] for c in f.categorical["release_year"]] == [UNKNOWN, "1995", "1995"]
  genres = [[g for g, x in zip(f.vocab["genre"], row) if x] for row in f.multi_hot["genre"]]
  assert genres == [[], ["Animation", "Children", "Comedy"], ["IMAX"]]  # placeholders give no genre
  u = d.user_features
  if not demographics:
    assert u.categorical == {}
    return
  label = lambda name: [u.vocab[name][c] for c in u.categorical[name]]
  assert label("age") == ["<18", "25-34", "56+"] and label("gender") == ["F", "M", "F"]
  assert label("occupation") == ["student", "engineer", "retired"]
  assert label("zip_prefix") == ["non-US", "9", UNKNOWN]
