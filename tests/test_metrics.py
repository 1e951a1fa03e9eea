"""Metrics against hand-computed values, an exhaustive average over tie orders, padding and vmap."""

import itertools
import math

import jax
import numpy as np
import pytest

from transfer_meta import metrics as M

L3 = math.log2(3.0)  # discount of position 1 is 1 / L3
RANKING_NAMES = ("ndcg@{k}", "ndcg_bin@{k}", "precision@{k}", "recall@{k}", "hr@{k}", "mrr@{k}")


def _eval(names, scores, target, mask=None, rel=None):
  scores = np.asarray(scores, np.float32)
  mask = np.ones(scores.shape, bool) if mask is None else np.asarray(mask, bool)
  out = M.evaluate_batch(names, scores[None], np.asarray(target, np.float32)[None], mask[None], rel)
  return {k: float(v[0]) for k, v in out.items()}


def _assert_close(got: dict, want: dict, tol=1e-5):
  for name, value in want.items():
    assert got[name] == pytest.approx(value, abs=tol), name


# ---------------------------------------------------------------- names, specs, cutoffs


def test_parse_metric():
  assert M.parse_metric("ndcg@3") == M.MetricSpec("ndcg@3", "ndcg", 3, False)
  assert M.parse_metric("precision@5:index") == M.MetricSpec("precision@5:index", "precision", 5, True)
  assert M.parse_metric("auc:index") == M.MetricSpec("auc:index", "auc", None, True)
  assert M.parse_metric("rmse") == M.MetricSpec("rmse", "rmse", None, False)
  for bad in ("ndcg", "ndcg@0", "mae@3", "mae:index", "auc@5", "map@5", "hr@5:idx", "NDCG@3"):
    with pytest.raises(ValueError, match="valid metrics"):
      M.parse_metric(bad)


def test_parse_relevance():
  assert M.parse_relevance("threshold:4") == M.Relevance("threshold", 4.0)
  assert M.parse_relevance("top:5") == M.Relevance("top", 5)
  for bad in ("top:0", "top:x", "threshold:", "best:3", "top"):
    with pytest.raises(ValueError, match="relevance spec"):
      M.parse_relevance(bad)


def test_check_cutoffs():
  M.check_cutoffs(["mae", "ndcg@3", "auc"], [10, 4, 7])
  with pytest.raises(ValueError, match=r"'precision@5'.*k=5.*smallest query size 5"):
    M.check_cutoffs(["ndcg@3", "precision@5"], [10, 5, 12])
  with pytest.raises(ValueError, match="empty query"):
    M.check_cutoffs(["mae"], [3, 0])


def test_cutoff_refused_at_trace_time():
  with pytest.raises(ValueError, match=r"k=4 is not below the query length Q=4"):
    _eval(["hr@4"], [1, 2, 3, 4], [1, 2, 3, 4], rel="top:1")
  with pytest.raises(ValueError, match=r"k=4"):
    jax.jit(lambda s: M.evaluate_task(["ndcg@4"], s, s, s > 0))(np.ones(4, np.float32))


def test_binary_metric_needs_relevance_spec():
  with pytest.raises(ValueError, match="need a relevance spec"):
    _eval(["mae", "hr@1"], [1, 2, 3], [1, 2, 3])


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_no_ties():
  # Predicted order: idx0 (r3), idx1 (r5), idx2 (r1), idx4 (r2), idx3 (r4). Relevant (>= 4): idx1, idx3.
  scores = [4.5, 4.0, 3.5, 1.0, 2.0]
  target = [3, 5, 1, 4, 2]
  names = ["mae", "rmse", "ndcg@3", "ndcg_bin@3", "precision@3", "recall@3", "hr@3", "mrr@3", "hr@1", "mrr@1", "auc"]
  want = {
    "mae": (1.5 + 1 + 2.5 + 3 + 0) / 5,
    "rmse": math.sqrt((2.25 + 1 + 6.25 + 9 + 0) / 5),
    "ndcg@3": (7 + 31 / L3 + 1 / 2) / (31 + 15 / L3 + 7 / 2),  # gains 2^r - 1
    "ndcg_bin@3": (1 / L3) / (1 + 1 / L3),
    "precision@3": 1 / 3,
    "recall@3": 1 / 2,
    "hr@3": 1.0,
    "mrr@3": 1 / 2,
    "hr@1": 0.0,
    "mrr@1": 0.0,
    "auc": 2 / 6,  # idx1 (4.0) beats 3.5 and 2.0; idx3 (1.0) beats none
  }
  _assert_close(_eval(names, scores, target, rel="threshold:4"), want)
  _assert_close(_eval(names, scores, target, rel="top:2"), want)  # top-2 ratings are the same items
  # Without ties the ':index' variants agree.
  _assert_close(
    _eval([n + ":index" for n in names[2:]], scores, target, rel="top:2"),
    {n + ":index": v for n, v in list(want.items())[2:]},
  )


# target has a rating tie at the 2nd place (4, 4); scores tie idx1, idx2, idx3 at the top.
TIE_SCORES = [2.0, 3.0, 3.0, 3.0, 1.0]
TIE_TARGET = [5.0, 4.0, 4.0, 2.0, 1.0]


def test_hand_computed_ties_expected_over_tie_orders():
  # top:2 is tie-aware: the 2nd-highest rating is 4, so idx0, idx1, idx2 are relevant (as threshold:4).
  # Tie group {1, 2, 3} fills positions 0..2 uniformly; idx0 at 3, idx4 at 4. k = 2.
  want = {
    "precision@2": (2 / 3 + 2 / 3) / 2,  # idx1, idx2 each in the top 2 with prob 2/3
    "recall@2": (4 / 3) / 3,
    "hr@2": 1.0,  # the first two positions both come from the group holding two relevant items
    "mrr@2": 2 / 3 * 1 + 1 / 3 * 1 / 2,  # first relevant at offset 0 w.p. 2/3, else at offset 1
    "hr@1": 2 / 3,
    "ndcg_bin@2": 2 / 3,  # E[DCG] = 2 (1 + 1/L3) / 3, IDCG = 1 + 1/L3
    "ndcg@2": (15 + 15 + 3) * (1 + 1 / L3) / 3 / (31 + 15 / L3),
    "auc": (1 + 1.5 + 1.5) / 6,  # idx0 beats idx4 only; idx1, idx2 tie idx3 (1/2) and beat idx4
  }
  for rel in ("top:2", "threshold:4"):
    _assert_close(_eval(list(want), TIE_SCORES, TIE_TARGET, rel=rel), want)


def test_hand_computed_ties_index_variant():
  # Peer rule: relevance = exactly 2 by index order -> {idx0, idx1}; predicted order idx1, idx2, idx3, idx0, idx4.
  want = {
    "precision@2:index": 1 / 2,
    "recall@2:index": 1 / 2,
    "hr@2:index": 1.0,
    "mrr@2:index": 1.0,
    "ndcg_bin@2:index": 1 / (1 + 1 / L3),
    "ndcg@2:index": (15 + 15 / L3) / (31 + 15 / L3),
    "auc:index": 4 / 6,  # idx0 beats idx4; idx1 beats idx2, idx3 (index order) and idx4
  }
  _assert_close(_eval(list(want), TIE_SCORES, TIE_TARGET, rel="top:2"), want)


def test_constant_predictor_is_random_ranking():
  # Q = 6, one relevant item (threshold:5) or two (threshold:4), constant scores, k = 2.
  target = [5, 4, 3, 3, 2, 1]
  const = [3.0] * 6
  one = _eval(["hr@2", "mrr@2", "precision@2", "recall@2", "ndcg_bin@2", "auc"], const, target, rel="threshold:5")
  _assert_close(
    one,
    {
      "hr@2": 2 / 6,
      "mrr@2": (1 + 1 / 2) / 6,
      "precision@2": (2 / 6) / 2,
      "recall@2": 2 / 6,
      "ndcg_bin@2": (1 + 1 / L3) / 6,
      "auc": 0.5,
    },
  )
  two = _eval(["hr@2", "mrr@2"], const, target, rel="threshold:4")
  # HR = 1 - C(4,2)/C(6,2); MRR: first at 0 w.p. 2/6, at 1 w.p. (4/6)(2/5).
  _assert_close(two, {"hr@2": 1 - 6 / 15, "mrr@2": 2 / 6 + 4 / 15 / 2})
  gains = 2.0 ** np.array(target) - 1
  ndcg = _eval(["ndcg@3"], const, target)["ndcg@3"]
  ideal = sorted(gains, reverse=True)
  assert ndcg == pytest.approx(gains.mean() * (1 + 1 / L3 + 1 / 2) / (ideal[0] + ideal[1] / L3 + ideal[2] / 2))


def test_index_variant_rewards_index_order():
  # Ratings sorted by index: a constant predictor with ':index' ranks perfectly (the peer's artefact).
  target = [5, 4, 3, 3, 2, 1]
  names = ["ndcg@3", "ndcg_bin@3", "precision@3", "recall@3", "hr@1", "mrr@3"]
  idx = _eval([n + ":index" for n in names], [3.0] * 6, target, rel="top:3")
  fair = _eval(names, [3.0] * 6, target, rel="top:3")
  _assert_close(idx, {n + ":index": 1.0 for n in names})
  for n in names:
    assert fair[n] < idx[n + ":index"] - 0.1, n
  # Tie-aware top:3 has 4 relevant items (two 3s tie at the 3rd place); ':index' keeps exactly 3.
  assert fair["precision@3"] == pytest.approx(4 / 6)
  assert _eval(["recall@5:index"], [3.0] * 6, target, rel="top:3")["recall@5:index"] == pytest.approx(1.0)


def test_no_relevant_item_and_single_class_auc():
  names = ["ndcg_bin@2", "precision@2", "recall@2", "hr@2", "mrr@2", "auc"]
  out = _eval(names, [1, 2, 3, 4], [1, 2, 3, 3], rel="threshold:4")
  _assert_close(out, {n: 0.0 for n in names[:-1]})
  assert math.isnan(out["auc"])
  assert math.isnan(_eval(["auc"], [1, 2, 3, 4], [4, 5, 4, 5], rel="threshold:4")["auc"])
  assert _eval(["ndcg@2"], [1, 2, 3], [0, 0, 0])["ndcg@2"] == 0.0  # all gains 0


# ---------------------------------------------------------------- independent check: all tie orders


def _reference(order, target, rel, k):
  """Metrics of one strict ranking `order` (item indices, best first), written plainly."""
  disc = lambda p: 1.0 / math.log2(p + 2)
  gains = 2.0 ** np.asarray(target) - 1
  ideal = sorted(gains[order], reverse=True)
  idcg = sum(g * disc(p) for p, g in enumerate(ideal[:k]))
  hits = [bool(rel[i]) for i in order[:k]]
  n_rel = int(sum(rel[i] for i in order))
  first = next((p for p, i in enumerate(order) if rel[i]), None)
  pos = {i: p for p, i in enumerate(order)}
  pairs = [(i, j) for i in order for j in order if rel[i] and not rel[j]]
  return {
    f"ndcg@{k}": sum(gains[i] * disc(p) for p, i in enumerate(order[:k])) / idcg if idcg else 0.0,
    f"ndcg_bin@{k}": (
      sum(disc(p) for p, h in enumerate(hits) if h) / sum(disc(p) for p in range(min(k, n_rel))) if n_rel else 0.0
    ),
    f"precision@{k}": sum(hits) / k,
    f"recall@{k}": sum(hits) / n_rel if n_rel else 0.0,
    f"hr@{k}": float(first is not None and first < k),
    f"mrr@{k}": 1.0 / (first + 1) if first is not None and first < k else 0.0,
    "auc": np.mean([pos[i] < pos[j] for i, j in pairs]) if pairs else float("nan"),
  }


def _relevance(target, mask, spec):
  t = np.where(mask, target, -np.inf)
  if spec.startswith("threshold:"):
    return mask & (t >= float(spec.split(":")[1]))
  n = int(spec.split(":")[1])
  return mask & (t >= np.sort(t)[::-1][min(n, mask.sum()) - 1])


# Q = 6 valid + 1 padded item; score ties (partial and constant) and rating ties.
PERM_TARGET = np.array([5, 3, 4, 3, 1, 3, 5], np.float32)
PERM_MASK = np.array([1, 1, 1, 1, 1, 1, 0], bool)


@pytest.mark.parametrize("scores", [[1, 2, 2, 2, 0, 1, 9], [2, 2, 2, 2, 2, 2, 2], [3, 1, 2, 2, 0, 5, 2]])
@pytest.mark.parametrize("rel", ["top:2", "threshold:3", "top:4"])
def test_expectation_equals_average_over_all_tie_orders(scores, rel):
  scores = np.asarray(scores, np.float32)
  valid = np.flatnonzero(PERM_MASK)
  relevant = _relevance(PERM_TARGET, PERM_MASK, rel)
  names = ["auc"] + [n.format(k=k) for k in (1, 2, 3, 5) for n in RANKING_NAMES]
  got = _eval(names, scores, PERM_TARGET, PERM_MASK, rel)
  total = {}
  perms = list(itertools.permutations(valid))
  for perm in perms:  # perm = a uniformly random tie-breaking priority
    priority = {i: p for p, i in enumerate(perm)}
    order = sorted(valid, key=lambda i: (-scores[i], priority[i]))
    for k in (1, 2, 3, 5):
      for name, value in _reference(order, PERM_TARGET, relevant, k).items():
        if name != "auc" or k == 1:
          total[name] = total.get(name, 0.0) + value / len(perms)
  _assert_close(got, total, tol=2e-5)


@pytest.mark.parametrize("rel", ["top:2", "threshold:3", "top:4"])
def test_index_variant_equals_stable_sort(rel):
  scores = np.array([1, 2, 2, 2, 0, 1, 9], np.float32)
  valid = np.flatnonzero(PERM_MASK)
  if rel.startswith("top:"):  # the peer's rule: exactly n by a stable sort of the ratings
    relevant = np.zeros(7, bool)
    relevant[valid[np.argsort(-PERM_TARGET[valid], kind="stable")[: int(rel[4:])]]] = True
  else:
    relevant = _relevance(PERM_TARGET, PERM_MASK, rel)
  order = list(valid[np.argsort(-scores[valid], kind="stable")])
  names = ["auc:index"] + [n.format(k=k) + ":index" for k in (1, 3) for n in RANKING_NAMES]
  want = {}
  for k in (1, 3):
    want.update({n + ":index": v for n, v in _reference(order, PERM_TARGET, relevant, k).items()})
  _assert_close(_eval(names, scores, PERM_TARGET, PERM_MASK, rel), want)


# ---------------------------------------------------------------- padding, vmap, aggregate

ALL = (
  "mae",
  "rmse",
  "auc",
  "auc:index",
  *(n.format(k=k) + s for k in (1, 3) for n in RANKING_NAMES for s in ("", ":index")),
)


@pytest.mark.parametrize("rel", ["top:3", "threshold:4"])
def test_padding_changes_nothing(rel):
  rng = np.random.default_rng(0)
  scores = rng.integers(1, 4, 6).astype(np.float32)  # ties
  target = np.array([5, 4, 4, 2, 1, 3], np.float32)
  base = _eval(ALL, scores, target, rel=rel)
  pad_scores = np.concatenate([scores, [100.0, 3.0, -7.0, 2.0]]).astype(np.float32)
  pad_target = np.concatenate([target, [5.0, 50.0, 4.0, 5.0]]).astype(np.float32)
  mask = np.arange(10) < 6
  _assert_close(_eval(ALL, pad_scores, pad_target, mask, rel), base, tol=1e-6)
  # Padding in front, too: ':index' ranks only the real items' relative order.
  front = np.array([6, 7, 0, 1, 2, 3, 4, 5, 8, 9])
  _assert_close(_eval(ALL, pad_scores[front], pad_target[front], mask[front], rel), base, tol=1e-6)


def test_vmap_equals_loop():
  rng = np.random.default_rng(1)
  T, Q = 5, 8
  scores = rng.integers(0, 4, (T, Q)).astype(np.float32)
  target = rng.integers(1, 6, (T, Q)).astype(np.float32)
  mask = np.arange(Q)[None, :] < rng.integers(5, Q + 1, (T, 1))
  batched = M.evaluate_batch(ALL, scores, target, mask, "top:2")
  one_task = jax.jit(lambda s, t, m: M.evaluate_task(ALL, s, t, m, "top:2"))  # no vmap
  for t in range(T):
    single = one_task(scores[t], target[t], mask[t])
    for name in ALL:
      got, want = float(batched[name][t]), float(single[name])
      assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-6), name


def test_aggregate():
  per_task = {"mae": np.array([1.0, 2.0, 3.0, 99.0]), "auc": np.array([0.5, np.nan, 1.0, np.nan])}
  out = M.aggregate(per_task, np.array([True, True, True, False]))
  assert out == {"mae": 2.0, "auc": 0.75, "auc/tasks": 2.0}
  with pytest.raises(ValueError, match=r"'mae' is NaN on 1 of 2 real tasks"):
    M.aggregate({"mae": np.array([1.0, np.nan, np.nan])}, np.array([True, True, False]))
  with pytest.raises(ValueError, match="shape"):
    M.aggregate({"mae": np.zeros(3)}, np.ones(4, bool))
