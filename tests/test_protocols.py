"""Protocols: exact sizes on hand-made data, disjointness, determinism, manifests, exclusions, errors.

Measured on ML-100K (seed 0, see test_recbole_metarec_ml100k / test_melu_ml100k):
  recbole_metarec  582 users -> 466/58/58 tasks; mean support train 37.48, valid 24.09, test 18.86
                   (the first-appearance rule puts heavier users in train).
  melu             582 users -> 419 train / 47 valid / 116 new users; tasks: train 245, valid 36, warm 298,
                   new_user 87, new_item 225, new_user_new_item 59 (year cutoff 1996: 288 new items).
  item_cold        train 777, valid 86, new_item 169 items.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

import transfer_meta as tm
from transfer_meta import metrics as metrics_lib
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.protocols import PROTOCOLS, make_protocol
from transfer_meta.data.protocols.recbole_metarec import split_sizes

EXISTING, NEW, UNKNOWN_YEAR = 1990, 2000, -1


def make_data(
  ratings: dict[int, list[int]], years: list[int], n_users: int | None = None, name: str = "fixture"
) -> Interactions:
  """Interactions from {user: [items]}; rating of (u, i) = 1 + (u + i) % 5, item years as given."""
  pairs = [(u, i) for u, items in sorted(ratings.items()) for i in items]
  user = np.array([p[0] for p in pairs], np.int32)
  item = np.array([p[1] for p in pairs], np.int32)
  n_users = max(ratings) + 1 if n_users is None else n_users
  return Interactions(
    name=name,
    user=user,
    item=item,
    rating=(1 + (user + item) % 5).astype(np.float32),
    timestamp=np.arange(len(pairs), dtype=np.int64),
    user_features=FeatureTable(n_users),
    item_features=FeatureTable(len(years)),
    user_raw_ids=np.arange(n_users).astype(object),
    item_raw_ids=np.arange(len(years)).astype(object),
    item_year=np.array(years, np.int32),
  )


# Items 0-11 existing, 12-15 new (2000), 16 unknown year (counts as existing).
YEARS = [EXISTING] * 12 + [NEW] * 4 + [UNKNOWN_YEAR]
MELU_KW = dict(year_cutoff=1995, min_ratings=6, max_ratings=12, n_query=2, min_support=1, valid_fraction=0.25)


@pytest.fixture(scope="module")
def uniform():
  """Users 0-9 eligible, each with 6 existing (one of unknown year for odd users) and 3 new ratings;
  user 10 has 3 ratings, user 11 has 14, user 12 none."""
  ratings = {u: [*range(5), 16 if u % 2 else 5, 12, 13, 14] for u in range(10)}
  ratings[10] = [0, 1, 2]
  ratings[11] = list(range(14))
  return make_data(ratings, YEARS, n_users=13)


def rows_of(ts) -> set[int]:
  return set(ts.all_rows().tolist())


def test_melu_exact_sizes(uniform):
  split = make_protocol("melu", uniform, seed=0, **MELU_KW)
  # 10 eligible: round(0.2 * 10) = 2 new; round(0.25 * 8) = 2 valid; 6 train.
  sizes = {k: (len(v), set(v.support_sizes().tolist()), set(v.query_sizes().tolist())) for k, v in split.tasks.items()}
  assert sizes == {
    "warm": (6, {4}, {2}),
    "train": (6, {2}, {2}),
    "valid": (2, {4}, {2}),
    "new_user": (2, {4}, {2}),
    "new_item": (6, {1}, {2}),
    "new_user_new_item": (2, {1}, {2}),
  }
  assert split.excluded["users"] == {"fewer than 6 ratings": 2, "more than 12 ratings": 1}
  assert all(sum(v.values()) == 0 for k, v in split.excluded.items() if k != "users")
  assert split.params["items_unknown_year_counted_existing"] == 1
  assert split.params["items_new"] == 4 and split.params["items_existing"] == 13
  assert split.params["relevance"] == "graded"
  assert split.metrics == ("mae", "rmse", "ndcg@1", "ndcg@3") and split.task_kind == "user"
  np.testing.assert_array_equal(split.target, uniform.rating)


def check_user_split(split, data: Interactions, new_item: np.ndarray):
  """Invariants of a melu split: groups disjoint, rows in the right item group, no evaluated row trained on."""
  t = split.tasks
  train_u = set(t["warm"].task_ids) | set(t["train"].task_ids) | set(t["new_item"].task_ids)
  new_u = set(t["new_user"].task_ids) | set(t["new_user_new_item"].task_ids)
  valid_u = set(t["valid"].task_ids)
  assert not (train_u & new_u) and not (train_u & valid_u) and not (valid_u & new_u)
  for name, ts in t.items():
    for k in range(len(ts)):
      s, q = ts.support(k), ts.query(k)
      assert not set(s) & set(q) and len(set(s)) == len(s) and len(set(q)) == len(q), name
      rows = np.concatenate([s, q])
      assert np.all(data.user[rows] == ts.task_ids[k]), name
      assert np.all(new_item[data.item[rows]] == (name in ("new_item", "new_user_new_item"))), name
  train_rows = rows_of(t["train"])
  for name in ("valid", *split.scenarios):
    assert not train_rows & set(t[name].query_rows.tolist()), f"{name} query rows appear in train tasks"
  assert not train_rows & set(t["warm"].query_rows.tolist())
  # The warm support is exactly what training saw of those users.
  warm, train = t["warm"], t["train"]
  for k, u in enumerate(warm.task_ids):
    if u in set(train.task_ids):
      j = int(np.flatnonzero(train.task_ids == u)[0])
      assert set(warm.support(k)) == set(train.support(j)) | set(train.query(j))


def test_melu_disjoint(uniform):
  for seed in range(3):
    check_user_split(make_protocol("melu", uniform, seed=seed, **MELU_KW), uniform, np.array(YEARS) > 1995)


def test_melu_exclusions():
  """Type A users (6 existing, 3 new ratings) qualify everywhere; type B (3 existing, 0 new) lose their
  train task (3 - 2 warm query < 3) and have no new-item task; type D (6 existing, 1 new) have too few new
  ratings. Warm, valid and new_user keep every user, so they reveal each user's group."""
  a, b, d = range(0, 8), range(8, 11), range(11, 14)
  ratings = {
    **{u: [*range(6), 12, 13, 14] for u in a},
    **{u: [0, 1, 2] for u in b},
    **{u: [*range(6), 15] for u in d},
    14: [0, 1],
    15: list(range(13)),
  }
  data = make_data(ratings, YEARS)
  kw = {**MELU_KW, "min_ratings": 3}
  checked = 0
  for seed in range(4):
    try:
      split = make_protocol("melu", data, seed=seed, **kw)
    except DataError as e:  # a seed may put no type-A user among the 3 new users
      assert "new_user_new_item" in str(e)
      continue
    t, ex = split.tasks, split.excluded
    train_u, new_u, valid_u = set(t["warm"].task_ids), set(t["new_user"].task_ids), set(t["valid"].task_ids)
    assert (len(train_u), len(valid_u), len(new_u)) == (8, 3, 3)  # 14 eligible: 3 new, round(2.75) valid
    assert train_u | valid_u | new_u == set(range(14))
    assert ex["users"] == {"fewer than 3 ratings": 1, "more than 12 ratings": 1}
    for group, name, new_name in ((train_u, "train", "new_item"), (new_u, None, "new_user_new_item")):
      n_a, n_b, n_d = (len(group & set(x)) for x in (a, b, d))
      if name:
        assert ex[name] == {"no ratings": 0, "fewer than 3 ratings": n_b}
        assert set(t[name].task_ids) == group - set(b)
      assert ex[new_name] == {"no ratings": n_b, "fewer than 3 ratings": n_d}
      assert set(t[new_name].task_ids) == group & set(a)
    check_user_split(split, data, np.array(YEARS) > 1995)
    checked += 1
  assert checked >= 2


def expected_hash(split) -> str:
  digest = hashlib.sha256()
  for name in sorted(split.tasks):
    ts = split.tasks[name]
    for arr in (ts.task_ids, ts.support_ptr, ts.support_rows, ts.query_ptr, ts.query_rows):
      digest.update(np.asarray(arr, np.int64).tobytes())
  digest.update(np.asarray(split.target, np.float32).tobytes())
  return digest.hexdigest()


@pytest.mark.parametrize(
  "name,kw",
  [
    ("melu", MELU_KW),
    ("recbole_metarec", dict(min_ratings=6, n_query=2)),
    ("item_cold", dict(year_cutoff=1995, n_support=2, min_query=1, max_query=3, valid_fraction=0.3)),
  ],
)
def test_determinism_and_manifest(uniform, name, kw):
  a, b = make_protocol(name, uniform, seed=0, **kw), make_protocol(name, uniform, seed=0, **kw)
  assert a.manifest == b.manifest and a.manifest == a.manifest
  assert a.manifest["hash"] == expected_hash(a)
  others = {make_protocol(name, uniform, seed=s, **kw).manifest["hash"] for s in (1, 2, 3)}
  assert a.manifest["hash"] not in others
  m = a.manifest
  assert (m["protocol"], m["seed"], m["version"]) == (name, 0, sys.modules[PROTOCOLS[name].__module__].VERSION)
  for set_name, ts in a.tasks.items():
    assert m["sets"][set_name]["task_ids"] == sorted(ts.task_ids.tolist())


def test_recbole_split_sizes():
  assert split_sizes(582, (0.8, 0.1, 0.1)) == [466, 58, 58]
  assert split_sizes(19, (0.8, 0.1, 0.1)) == [17, 1, 1]
  assert split_sizes(9, (0.8, 0.1, 0.1)) == [7, 1, 1]  # 0.9 of a task rounds up to one
  assert split_sizes(2, (0.8, 0.1, 0.1)) == [1, 0, 1]


def test_recbole_metarec_fixture(uniform):
  split = make_protocol("recbole_metarec", uniform, seed=0, min_ratings=6, max_ratings=12, n_query=2)
  # 10 eligible users: split_sizes -> 8/1/1; each task 9 ratings = 2 query + 7 support.
  assert [len(split.tasks[k]) for k in ("train", "valid", "test")] == [8, 1, 1]
  assert split.scenarios == ("test",)
  users = [set(split.tasks[k].task_ids) for k in ("train", "valid", "test")]
  assert set.union(*users) == set(range(10)) and sum(map(len, users)) == 10
  for ts in split.tasks.values():
    assert set(ts.query_sizes()) == {2} and set(ts.support_sizes()) == {7}
    for k in range(len(ts)):
      assert not set(ts.support(k)) & set(ts.query(k))
      assert np.all(uniform.user[np.concatenate([ts.support(k), ts.query(k)])] == ts.task_ids[k])
  assert split.params["relevance"] == "top:5"
  assert "precision@5" in split.metrics and "ndcg_bin@5:index" in split.metrics and len(split.metrics) == 10
  np.testing.assert_array_equal(split.target, uniform.rating)
  click = make_protocol("recbole_metarec", uniform, seed=0, min_ratings=6, max_ratings=12, n_query=2, setting="click")
  np.testing.assert_array_equal(click.target, (uniform.rating >= 4).astype(np.float32))
  assert click.manifest["sets"] == split.manifest["sets"]  # the setting changes targets, not tasks
  assert "auc" not in split.metrics and click.metrics == (*split.metrics, "auc")
  assert click.params["relevance"] == "threshold:1"


def test_recbole_metarec_click_auc_on_a_hand_fixture(uniform):
  """The click setting's AUC over a real task's query, against a hand count of (clicked, not clicked) pairs."""
  click = make_protocol("recbole_metarec", uniform, seed=0, min_ratings=6, max_ratings=12, n_query=2, setting="click")
  ts = click.tasks["train"]
  # A query of 4: two clicked (ratings 5, 4), two not (3, 1); scores rank one non-click above one click and tie
  # another pair, so AUC = (1 [5 > 3] + 1 [5 > 1] + 0 [4 < 3] + 0.5 [4 = 1]) / 4 = 0.625.
  rating = np.array([5.0, 4.0, 3.0, 1.0], np.float32)
  target = (rating >= click.params["click_threshold"]).astype(np.float32)
  scores = np.array([0.9, 0.2, 0.7, 0.2], np.float32)
  mask = np.array([True, True, True, True])
  got = metrics_lib.evaluate_task(["auc"], scores, target, mask, click.params["relevance"])["auc"]
  assert float(got) == pytest.approx(0.625)
  # On the split's own targets: every train query (2 items) with one click and one non-click scores 1 when the
  # clicked item is scored higher, 0 when lower; one-class queries are undefined and skipped by `aggregate`.
  per_task, expected = [], []
  for k in range(len(ts)):
    t = click.target[ts.query(k)]
    s = np.where(t > 0, 1.0, 0.0).astype(np.float32) * (-1) ** k  # even tasks right, odd tasks reversed
    per_task.append(float(metrics_lib.evaluate_task(["auc"], s, t, np.ones(2, bool), "threshold:1")["auc"]))
    expected.append((1.0 if k % 2 == 0 else 0.0) if t.min() != t.max() else np.nan)
  np.testing.assert_array_equal(per_task, expected)
  assert np.isfinite(expected[::2]).any() and np.isfinite(expected[1::2]).any()  # both directions exercised
  agg = metrics_lib.aggregate({"auc": np.array(per_task)}, np.ones(len(ts), bool))
  assert agg["auc/tasks"] == np.isfinite(expected).sum()


def test_item_cold_fixture():
  # Items 0-5 existing, 6-8 new; item i rated by the first 2 + i users (item 0 by 2 users, item 8 by 10).
  years = [EXISTING] * 6 + [NEW] * 3
  ratings = {u: [i for i in range(9) if u < 2 + i] for u in range(10)}
  data = make_data(ratings, years)
  split = make_protocol(
    "item_cold", data, seed=0, year_cutoff=1995, n_support=3, min_query=2, max_query=4, valid_fraction=0.25
  )
  # Needs 3 + 2 = 5 ratings: items 3-5 existing usable (0-2 excluded), 6-8 new usable.
  assert split.excluded == {
    "train/valid": {"no ratings": 0, "fewer than 5 ratings": 3},
    "new_item": {"no ratings": 0, "fewer than 5 ratings": 0},
  }
  assert set(split.tasks["train"].task_ids) | set(split.tasks["valid"].task_ids) == {3, 4, 5}
  assert len(split.tasks["valid"]) == 1 and sorted(split.tasks["new_item"].task_ids) == [6, 7, 8]
  ts = split.tasks["new_item"]
  assert ts.support_sizes().tolist() == [3, 3, 3] and ts.query_sizes().tolist() == [4, 4, 4]  # 5, 6, 7 capped at 4
  for ts in split.tasks.values():
    for k in range(len(ts)):
      s, q = ts.support(k), ts.query(k)
      assert not set(s) & set(q) and np.all(data.item[np.concatenate([s, q])] == ts.task_ids[k])
  assert split.task_kind == "item" and split.params["relevance"] == "threshold:4"
  rnd = make_protocol(
    "item_cold", data, seed=0, new_by="random", new_fraction=0.4, n_support=3, min_query=2, valid_fraction=0.25
  )
  assert rnd.params["items_new"] == 4  # round(0.4 * 9)
  assert not set(rnd.tasks["new_item"].task_ids) & (set(rnd.tasks["train"].task_ids) | set(rnd.tasks["valid"].task_ids))


def test_zero_task_errors(uniform):
  with pytest.raises(DataError, match=r"'new_item'.*year_cutoff"):
    make_protocol("melu", uniform, seed=0, **{**MELU_KW, "year_cutoff": 2010})  # no new items at all
  with pytest.raises(DataError, match=r"user groups.*min_ratings"):
    make_protocol("melu", uniform, seed=0, **{**MELU_KW, "min_ratings": 12})  # nobody has 12 ratings
  with pytest.raises(DataError, match=r"sizes \[1, 0, 0\]"):
    make_protocol("recbole_metarec", uniform, seed=0, min_ratings=14, max_ratings=14)  # only user 11
  with pytest.raises(DataError, match=r"existing items.*n_support"):
    make_protocol("item_cold", uniform, seed=0, year_cutoff=1995, n_support=20)
  no_years = make_data({0: [0, 1]}, YEARS)
  no_years = Interactions(**{**no_years.__dict__, "item_year": None})
  with pytest.raises(DataError, match="item_year is None"):
    make_protocol("melu", no_years)


@pytest.mark.parametrize(
  "name,kw,param",
  [
    ("melu", dict(n_query=0), "n_query"),
    ("melu", dict(min_support=-1), "min_support"),
    ("melu", dict(valid_fraction=1.0), "valid_fraction"),
    ("melu", dict(new_user_fraction=0.0), "new_user_fraction"),
    ("melu", dict(min_ratings=20, max_ratings=10), "min_ratings"),
    ("melu", dict(year_cutoff=-5), "year_cutoff"),
    ("recbole_metarec", dict(setting="clicks"), "setting"),
    ("recbole_metarec", dict(ratios=(0.8, 0.2)), "ratios"),
    ("recbole_metarec", dict(n_query=2.5), "n_query"),
    ("item_cold", dict(new_by="month"), "new_by"),
    ("item_cold", dict(min_query=9, max_query=3), "min_query"),
    ("item_cold", dict(n_support=0), "n_support"),
    ("item_cold", dict(new_by="random", new_fraction=1.5), "new_fraction"),
    ("item_cold", dict(new_fraction=0.3), "new_fraction"),
    ("item_cold", dict(new_by="random", year_cutoff=1995), "year_cutoff"),
    ("melu", dict(), "seed"),
  ],
)
def test_bad_params(uniform, name, kw, param):
  seed = -1 if param == "seed" else 0
  with pytest.raises(ValueError, match=param):
    make_protocol(name, uniform, seed=seed, **kw)


def test_registry(uniform):
  with pytest.raises(ValueError, match="valid protocols.*melu"):
    make_protocol("meluu", uniform)
  with pytest.raises(TypeError, match="n_queries"):
    make_protocol("melu", uniform, n_queries=3)


def test_year_cutoff_defaults(uniform):
  def renamed(name):
    return Interactions(**{**uniform.__dict__, "name": name})

  assert make_protocol("melu", renamed("ml-100k"), **{**MELU_KW, "year_cutoff": None}).params["year_cutoff"] == 1996
  assert (
    make_protocol("melu", renamed("tfds:movielens/1m-ratings"), **{**MELU_KW, "year_cutoff": None}).params[
      "year_cutoff"
    ]
    == 1998
  )
  # Unknown dataset, known years 12 x 1990 and 4 x 2000: cutoff 1990 leaves 25% new (2000 would leave 0%).
  p = make_protocol("melu", uniform, **{**MELU_KW, "year_cutoff": None}).params
  assert p["year_cutoff"] == 1990 and p["items_new"] == 4 and "closest to 0.2" in p["year_cutoff_source"]


@pytest.fixture(scope="module")
def ml100k_data(request):
  try:
    return request.getfixturevalue("ml100k")
  except pytest.FixtureLookupError:
    return tm.load_dataset("ml-100k")


def test_recbole_metarec_ml100k(ml100k_data):
  split = make_protocol("recbole_metarec", ml100k_data, seed=0)
  counts = ml100k_data.user_counts()
  assert int(((counts >= 13) & (counts <= 100)).sum()) == 582
  assert [len(split.tasks[k]) for k in ("train", "valid", "test")] == [466, 58, 58]
  for ts in split.tasks.values():
    assert set(ts.query_sizes().tolist()) == {10}
    np.testing.assert_array_equal(ts.support_sizes() + 10, counts[ts.task_ids])
  users = [set(split.tasks[k].task_ids.tolist()) for k in ("train", "valid", "test")]
  assert len(set.union(*users)) == 582
  means = {k: float(split.tasks[k].support_sizes().mean()) for k in ("train", "valid", "test")}
  print("recbole_metarec ML-100K mean support", means)  # ~37.5 / 24.1 / 18.9 for seed 0
  assert means["train"] > 1.5 * means["test"]


def test_melu_ml100k(ml100k_data):
  split = make_protocol("melu", ml100k_data, seed=0)
  year = ml100k_data.item_year
  assert split.params["items_new"] == int(((year == 1997) | (year == 1998)).sum()) == 288
  print("melu ML-100K", {k: len(v) for k, v in split.tasks.items()}, split.excluded)
  check_user_split(split, ml100k_data, year > 1996)
  users = split.params
  assert users["users_train"] + users["users_valid"] + users["users_new"] == 582 and users["users_new"] == 116


def test_item_cold_ml100k(ml100k_data):
  split = make_protocol("item_cold", ml100k_data, seed=0)
  counts = ml100k_data.item_counts()
  new = ml100k_data.item_year > 1996
  usable = counts >= 15
  assert len(split.tasks["new_item"]) == int((usable & new).sum())
  assert len(split.tasks["train"]) + len(split.tasks["valid"]) == int((usable & ~new).sum())
  for ts in split.tasks.values():
    np.testing.assert_array_equal(ts.query_sizes(), np.minimum(counts[ts.task_ids] - 10, 50))


# ---------------------------------------------------------------------------------------------------- year gap

GAP = 1997  # items 17, 18: released between the existing (<= 1996) and the new (>= 1999) groups


def _pairs(split, data):
  """{set: [(user, sorted support items, sorted query items)]} — a split in data-independent terms."""
  out = {}
  for name, ts in split.tasks.items():
    out[name] = [
      (int(u), sorted(data.item[ts.support(k)].tolist()), sorted(data.item[ts.query(k)].tolist()))
      for k, u in enumerate(ts.task_ids)
    ]
  return out


def test_melu_year_gap_leaves_those_items_out(uniform):
  """Appending ratings of two 1997 films to every user changes nothing once they fall in the gap: the same
  tasks (as user/item pairs), and the films and their ratings are counted, not silently dropped."""
  ratings = {u: [*range(5), 16 if u % 2 else 5, 12, 13, 14, 17, 18] for u in range(10)}
  ratings[10], ratings[11] = [0, 1, 2], list(range(14))
  gap = make_data(ratings, [*YEARS, GAP, GAP], n_users=13)
  kw = {**MELU_KW, "year_cutoff": 1998, "existing_until": 1996}
  for seed in range(3):
    split = make_protocol("melu", gap, seed=seed, **kw)
    assert _pairs(split, gap) == _pairs(make_protocol("melu", uniform, seed=seed, **MELU_KW), uniform)
    rows = np.concatenate([ts.all_rows() for ts in split.tasks.values()])
    assert not np.isin(gap.item[rows], [17, 18]).any()
  p = split.params
  assert (p["year_cutoff"], p["existing_until"], p["items_between_groups"], p["ratings_between_groups"]) == (
    1998,
    1996,
    2,
    20,
  )
  assert p["items_existing"] == 13 and p["items_new"] == 4


def test_melu_year_gap_defaults_and_checks(uniform):
  def params(name, **kw):
    data = Interactions(**{**uniform.__dict__, "name": name})
    return make_protocol("melu", data, **{**MELU_KW, "year_cutoff": None, **kw}).params

  p = params("ml-1m")  # the paper: existing "before 1997", new "after 1998"
  assert (p["year_cutoff"], p["existing_until"], p["year_cutoff_source"]) == (1998, 1996, "default for ml-1m")
  assert params("tfds:movielens/1m-ratings")["existing_until"] == 1996
  assert params("ml-100k")["existing_until"] == 1996 and params("ml-100k")["year_cutoff"] == 1996
  assert params("ml-1m", year_cutoff=1995)["existing_until"] == 1995  # a given cutoff alone: no gap
  assert params("ml-1m", existing_until=1990)["existing_until"] == 1990
  with pytest.raises(ValueError, match="existing_until=1999 must be <= year_cutoff=1998"):
    params("ml-1m", existing_until=1999)
  with pytest.raises(ValueError, match="existing_until"):
    params("fixture", year_cutoff=1995, existing_until=-3)


def test_melu_ml1m_paper_split(ml1m):
  data = ml1m
  split = make_protocol("melu", data, seed=0)
  counts, year = data.user_counts(), data.item_year
  p = split.params
  assert p["users_eligible"] == int(((counts >= 13) & (counts <= 100)).sum()) == 3131
  assert (p["users_train"], p["users_valid"], p["users_new"]) == (2255, 250, 626)
  between = (year >= 1997) & (year <= 1998)
  assert p["items_between_groups"] == int(between.sum()) == 621
  assert p["ratings_between_groups"] == int(between[data.item].sum())
  for name, ts in split.tasks.items():
    y = year[data.item[ts.all_rows()]]
    assert (y >= 1999).all() if name in ("new_item", "new_user_new_item") else (y <= 1996).all(), name
    assert set(ts.query_sizes().tolist()) == {10}
  print("melu ML-1M", {k: len(v) for k, v in split.tasks.items()})
