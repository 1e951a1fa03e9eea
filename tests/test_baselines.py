"""Baselines on a hand-made split whose every prediction is computed by hand (lam = 2, mu = 3)."""

import numpy as np
import pytest

from transfer_meta import baselines as B
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.split import ColdStartSplit, TaskSet

# row: (user, item, rating)
ROWS = [
  (0, 0, 5),
  (0, 1, 4),
  (1, 0, 1),
  (1, 2, 2),
  (0, 2, 3),  # 0-4: training
  (2, 0, 4),
  (2, 1, 2),
  (2, 2, 5),  # 5-7: user 2
  (2, 3, 3),  # 8
  (1, 1, 3),  # 9: training
  (3, 2, 4),
  (3, 0, 2),
  (3, 1, 5),  # 10-12: user 3
  (0, 3, 5),
  (1, 3, 2),
  (3, 3, 4),  # 13-15: item 3
]
# Training rows 0-4, 9: mu = 18 / 6 = 3.
# Item means (lam 2): item0 (5+1+6)/4 = 3, item1 (4+3+6)/4 = 3.25, item2 (2+3+6)/4 = 2.75, item3 (none) = 3.
# User means (lam 2): user0 (5+4+3+6)/5 = 3.6, user1 (1+2+3+6)/5 = 2.4, users 2, 3 (none) = 3.
LAM = 2.0


def _data():
  u, i, r = (np.array(c) for c in zip(*ROWS))
  return Interactions(
    name="tiny",
    user=u.astype(np.int32),
    item=i.astype(np.int32),
    rating=r.astype(np.float32),
    timestamp=np.arange(len(ROWS), dtype=np.int64),
    user_features=FeatureTable(4),
    item_features=FeatureTable(4),
    user_raw_ids=np.arange(4).astype(object),
    item_raw_ids=np.arange(4).astype(object),
  )


def _split(kind, train, scenario, metrics=("mae",), params=None):
  sets = {"train": train, "valid": train, "test": scenario}
  return ColdStartSplit(
    protocol="tiny",
    version="0",
    seed=0,
    params=params or {"relevance": "threshold:4"},
    task_kind=kind,
    tasks=sets,
    scenarios=("test",),
    target=_data().rating,
    metrics=metrics,
  )


USER_TRAIN = TaskSet.from_lists([0, 1], [[0, 1], [2]], [[4], [3, 9]])
# user 2: support items 0 (4), 1 (2); query items 2 (5), 3 (3). user 3: support item 2 (4); query items 0 (2), 1 (5).
USER_TEST = TaskSet.from_lists([2, 3], [[5, 6], [10]], [[7, 8], [11, 12]])
ITEM_TRAIN = TaskSet.from_lists([0, 1, 2], [[0], [1], [4]], [[2], [9], [3]])
# item 3: support users 0 (5), 2 (3); query users 1 (2), 3 (4).
ITEM_TEST = TaskSet.from_lists([3], [[13, 8]], [[14, 15]])


def _scores(name, kind, seed=0):
  train, test = (USER_TRAIN, USER_TEST) if kind == "user" else (ITEM_TRAIN, ITEM_TEST)
  return B.baseline_scores(name, _data(), _split(kind, train, test), test, seed=seed, lam=LAM)


def test_user_task_predictions_by_hand():
  np.testing.assert_allclose(_scores("constant", "user"), [3, 3, 3, 3])
  np.testing.assert_allclose(_scores("global_mean", "user"), [3, 3, 3, 3])
  np.testing.assert_allclose(_scores("item_mean", "user"), [2.75, 3, 3, 3.25])
  # user 2 residuals: 4 - 3 = 1, 2 - 3.25 = -1.25 -> offset -0.25 / (2 + 2) = -0.0625.
  # user 3 residual: 4 - 2.75 = 1.25 -> offset 1.25 / (1 + 2).
  np.testing.assert_allclose(
    _scores("item_user_offset", "user"), [2.75 - 0.0625, 3 - 0.0625, 3 + 1.25 / 3, 3.25 + 1.25 / 3], rtol=1e-6
  )


def test_item_task_predictions_are_symmetric():
  np.testing.assert_allclose(_scores("global_mean", "item"), [3, 3])
  np.testing.assert_allclose(_scores("item_mean", "item"), [2.4, 3])  # query users 1 and 3
  # item 3 residuals: user0 5 - 3.6 = 1.4, user2 3 - 3 = 0 -> offset 1.4 / (2 + 2) = 0.35.
  np.testing.assert_allclose(_scores("item_user_offset", "item"), [2.75, 3.35], rtol=1e-6)


def test_random_is_seeded_and_in_scale():
  a, b, c = _scores("random", "user", 0), _scores("random", "user", 0), _scores("random", "user", 1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.dtype == np.float32 and a.shape == (4,) and a.min() >= 1 and a.max() <= 5
  click = _split("user", USER_TRAIN, USER_TEST, params={"setting": "click", "relevance": "top:1"})
  s = B.baseline_scores("random", _data(), click, USER_TEST, seed=3)
  assert s.min() >= 0 and s.max() <= 1
  np.testing.assert_allclose(B.baseline_scores("constant", _data(), click, USER_TEST), 0.5)


def test_bad_names_and_parameters():
  split = _split("user", USER_TRAIN, USER_TEST)
  with pytest.raises(ValueError, match=r"unknown baseline 'median'.*item_user_offset"):
    B.baseline_scores("median", _data(), split, USER_TEST)
  with pytest.raises(ValueError, match="lam=-1"):
    B.baseline_scores("item_mean", _data(), split, USER_TEST, lam=-1)


def test_evaluate_baselines_by_hand():
  split = _split("user", USER_TRAIN, USER_TEST, metrics=("mae", "rmse", "ndcg@1", "auc"))
  out = B.evaluate_baselines(_data(), split, ["constant", "item_user_offset"], lam=LAM)
  o2, o3 = -0.0625, 1.25 / 3
  err2 = np.abs([2.75 + o2 - 5, 3 + o2 - 3])
  err3 = np.abs([3 + o3 - 2, 3.25 + o3 - 5])
  offset = out["item_user_offset"]["test"]
  assert offset["mae"] == pytest.approx((err2.mean() + err3.mean()) / 2, rel=1e-5)
  assert offset["rmse"] == pytest.approx((np.sqrt((err2**2).mean()) + np.sqrt((err3**2).mean())) / 2, rel=1e-5)
  # user 2 ranks item 3 (r3, gain 7) first, ideal r5 (gain 31); user 3 ranks item 1 (r5) first.
  assert offset["ndcg@1"] == pytest.approx((7 / 31 + 1) / 2, rel=1e-5)
  # Relevance >= 4: each task has one relevant item; user 2 ranks it last (0), user 3 first (1).
  assert offset["auc"] == pytest.approx(0.5) and offset["auc/tasks"] == 2
  const = out["constant"]["test"]
  assert const["mae"] == pytest.approx(((2 + 0) / 2 + (1 + 2) / 2) / 2)
  assert const["ndcg@1"] == pytest.approx(((31 + 7) / 2 / 31 + (3 + 31) / 2 / 31) / 2, rel=1e-5)  # tie: expectation
  assert const["auc"] == pytest.approx(0.5)


def test_evaluate_baselines_in_task_chunks_equals_one_call():
  """Scoring a scenario's tasks in chunks (each real task in its own chunk, or chunks of 3 with a short last one)
  gives the values of the whole-scenario call, AUC's defined-task count included; a bad chunk is refused."""
  split = _split("user", USER_TRAIN, USER_TEST, metrics=("mae", "rmse", "ndcg@1", "auc"))
  names = ["constant", "item_mean", "item_user_offset", "popularity"]
  whole = B.evaluate_baselines(_data(), split, names, lam=LAM, task_chunk=None)
  assert whole["item_user_offset"]["test"]["mae"] != whole["item_mean"]["test"]["mae"]  # the scorers differ
  for chunk in (1, 3):
    got = B.evaluate_baselines(_data(), split, names, lam=LAM, task_chunk=chunk)
    assert got.keys() == whole.keys()
    for name in names:
      assert got[name]["test"] == pytest.approx(whole[name]["test"], rel=1e-6), (name, chunk)
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match="task_chunk"):
      B.evaluate_baselines(_data(), split, names, task_chunk=bad)


def test_rankers_report_ranking_metrics_only():
  """popularity's scores are counts on the rating scale: its MAE/RMSE are left out, its ranking metrics kept."""
  split = _split("user", USER_TRAIN, USER_TEST, metrics=("mae", "rmse", "ndcg@1", "auc"))
  out = B.evaluate_baselines(_data(), split, ["popularity", "item_mean"], lam=LAM)
  assert set(out["popularity"]["test"]) == {"ndcg@1", "auc", "auc/tasks"}
  assert {"mae", "rmse", "ndcg@1", "auc"} <= set(out["item_mean"]["test"])
  alone = B.evaluate_baselines(_data(), split, ["popularity"], lam=LAM)["popularity"]["test"]
  assert alone["ndcg@1"] == out["popularity"]["test"]["ndcg@1"]  # same scores whatever else is evaluated


def test_evaluate_baselines_refuses_leaks_and_large_cutoffs():
  leaky = TaskSet.from_lists([2], [[5]], [[7, 9]])  # row 9 is a training row
  with pytest.raises(DataError, match=r"1 query rows of scenario 'test' are training rows"):
    B.evaluate_baselines(_data(), _split("user", USER_TRAIN, leaky), ["constant"])
  with pytest.raises(ValueError, match=r"'ndcg@2'.*k=2.*smallest query size 2"):
    B.evaluate_baselines(_data(), _split("user", USER_TRAIN, USER_TEST, metrics=("ndcg@2",)), ["constant"])


def test_pad_queries():
  values = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  ts = TaskSet.from_lists([0, 1], [[0], [1]], [[2], [3, 4, 5]])
  out, mask = B.pad_queries(ts, values, width=4, n_tasks=3)
  np.testing.assert_array_equal(out, [[1, 0, 0, 0], [2, 3, 4, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
