"""Catalogue and sampled-negative ranking against brute force over every tie order; beyond-accuracy by hand."""

import itertools
import math

import numpy as np
import pytest

from transfer_meta import metrics as M
from transfer_meta import ranking as R

# Catalogue of C=9 entries. Entries 1 and 4 are rated outside the query (not candidates); the query is entries
# 2, 5, 7, 0 with ratings 5, 3, 4, 1 (threshold:4 -> 2 and 7 relevant). Scores tie across relevant, non-relevant
# and unrated entries; entry 1 (excluded) has the top score and must not count.
C = 9
SCORES = np.array([0.5, 9.0, 0.7, 0.7, 3.0, 0.7, 0.2, 0.5, 0.5], np.float32)
UNRATED = np.array([0, 0, 0, 1, 0, 0, 1, 0, 1], bool)  # entries 3, 6, 8 never rated
Q_INDEX = np.array([2, 5, 7, 0, 0], np.int32)  # last slot is padding
Q_TARGET = np.array([5.0, 3.0, 4.0, 1.0, 0.0], np.float32)
Q_MASK = np.array([1, 1, 1, 1, 0], bool)
NAMES = ("recall@2", "precision@3", "hr@1", "hr@2", "mrr@3", "ndcg_bin@2", "ndcg@3", "auc")


def _tie_orders(entries, scores):
  """Every ranking of `entries` consistent with `scores` (descending; ties in every order)."""
  groups = [[e for e in entries if scores[e] == v] for v in sorted({scores[e] for e in entries}, reverse=True)]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [e for p in perms for e in p]


def _dcg(gains_in_order, k):
  return sum(g / math.log2(p + 2) for p, g in enumerate(gains_in_order[:k]))


def _brute(name, order, relevant, gains):
  """One metric on one concrete ranking `order` (entries, best first)."""
  base, _, k = name.partition("@")
  k = int(k) if k else None
  if base == "auc":
    negatives = [e for e in order if e not in relevant]
    pos = {e: p for p, e in enumerate(order)}
    return np.mean([pos[r] < pos[n] for r in relevant for n in negatives])
  hits = [e in relevant for e in order[:k]]
  if base == "recall":
    return sum(hits) / len(relevant)
  if base == "precision":
    return sum(hits) / k
  if base == "hr":
    return float(any(hits))
  if base == "mrr":
    return next((1.0 / (p + 1) for p, h in enumerate(hits) if h), 0.0)
  if base == "ndcg_bin":
    return _dcg([float(h) for h in hits], k) / _dcg([1.0] * len(relevant), k)
  ideal = sorted(gains.values(), reverse=True)
  return _dcg([gains.get(e, 0.0) for e in order], k) / _dcg(ideal, k)


def _brute_catalogue(name):
  query = [int(e) for e, ok in zip(Q_INDEX, Q_MASK) if ok]
  candidates = sorted(set(np.flatnonzero(UNRATED).tolist()) | set(query))
  target = dict(zip(query, Q_TARGET[: len(query)].tolist()))
  relevant = {e for e in query if target[e] >= 4}
  gains = {e: 2.0 ** target[e] - 1 for e in query}
  return np.mean([_brute(name, o, relevant, gains) for o in _tie_orders(candidates, SCORES)])


def test_catalogue_metrics_equal_brute_force_over_tie_orders():
  got = R.catalogue_batch(
    NAMES, SCORES[None], UNRATED[None], Q_INDEX[None], Q_TARGET[None], Q_MASK[None], "threshold:4"
  )
  for name in NAMES:
    assert float(got[name][0]) == pytest.approx(_brute_catalogue(name), abs=1e-6), name


def test_catalogue_hand_values():
  # Candidates 0(.5) 2(.7) 3(.7) 5(.7) 6(.2) 7(.5) 8(.5); relevant 2 and 7. Entry 2 ties with 3 and 5 for
  # positions 0-2, so P(2 at position 0) = 1/3 = hr@1 (7 sits at 3..5, never first).
  got = R.catalogue_batch(
    ("hr@1", "auc"), SCORES[None], UNRATED[None], Q_INDEX[None], Q_TARGET[None], Q_MASK[None], "threshold:4"
  )
  assert float(got["hr@1"][0]) == pytest.approx(1 / 3)
  # AUC over 2 relevant x 5 negatives: entry 2 beats 0, 6, 8 and ties 3, 5 -> 4; entry 7 beats 6, ties 0, 8 -> 2.
  assert float(got["auc"][0]) == pytest.approx(6 / 10)


def test_catalogue_equals_query_metrics_when_only_the_query_is_a_candidate():
  # With no unrated entry the candidates are the query, so the query-only metrics (metrics.py) must agree.
  rng = np.random.default_rng(0)
  q = 8
  scores = rng.integers(0, 3, size=(6, 12)).astype(np.float32)  # many ties
  index = np.stack([rng.permutation(12)[:q] for _ in range(6)]).astype(np.int32)
  target = rng.integers(1, 6, size=(6, q)).astype(np.float32)
  mask = np.ones((6, q), bool)
  mask[0, 6:] = False
  names = ("precision@3", "recall@3", "hr@2", "mrr@3", "ndcg_bin@3", "ndcg@3", "auc")
  got = R.catalogue_batch(names, scores, np.zeros((6, 12), bool), index, target, mask, "top:3")
  query_scores = np.take_along_axis(scores, index, axis=1)
  want = M.evaluate_batch(names, query_scores, target, mask, "top:3")
  for name in names:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), atol=1e-6, err_msg=name)


def test_catalogue_task_without_relevant_items_is_undefined_and_skipped():
  target = np.array([[1, 2, 3, 1, 0], Q_TARGET], np.float32)
  got = R.catalogue_batch(
    ("recall@2", "auc"),
    np.stack([SCORES] * 2),
    np.stack([UNRATED] * 2),
    np.stack([Q_INDEX] * 2),
    target,
    np.stack([Q_MASK] * 2),
    "threshold:4",
  )
  assert np.isnan(got["recall@2"][0]) and not np.isnan(got["recall@2"][1])
  agg = R.aggregate(got, np.array([True, True]))
  assert agg["recall@2/tasks"] == 1 and agg["recall@2"] == pytest.approx(float(got["recall@2"][1]))


def test_sampled_metrics_equal_brute_force():
  # Relevant query entries 2 (score .7) and 7 (.5), each against its own 3 negatives with ties.
  negatives = np.array([[3, 6, 8], [0, 0, 0], [3, 8, 6], [0, 0, 0], [0, 0, 0]], np.int32)
  names = ("hr@1", "hr@2", "recall@2", "precision@2", "ndcg_bin@2", "mrr@3", "auc")
  got = R.sampled_batch(
    names, SCORES[None], Q_INDEX[None], Q_TARGET[None], Q_MASK[None], negatives[None], "threshold:4"
  )
  for name in names:
    per_item = []
    for slot in (0, 2):
      entry = int(Q_INDEX[slot])
      # Distinct labels for the candidates (negatives are catalogue entries, the positive is `entry`).
      cands = [("pos", entry)] + [("neg", int(n)) for n in negatives[slot]]
      sc = {c: SCORES[c[1]] for c in cands}
      per_item.append(
        np.mean([_brute(name, o, {("pos", entry)}, {("pos", entry): 1.0}) for o in _tie_orders(cands, sc)])
      )
    assert float(got[name][0]) == pytest.approx(np.mean(per_item), abs=1e-6), name


def test_ranking_metric_names_are_checked():
  with pytest.raises(ValueError, match="not defined under 'sampled'"):
    R.parse_metrics(["ndcg@3"], "sampled")
  with pytest.raises(ValueError, match="not defined under 'catalogue'"):
    R.parse_metrics(["recall@5:index"], "catalogue")
  with pytest.raises(ValueError, match="valid metrics"):
    R.parse_metrics(["map@5"], "catalogue")
  with pytest.raises(ValueError, match="'query' among them"):
    R.check_protocols(("catalogue",))
  with pytest.raises(ValueError, match="distinct names"):
    R.check_protocols(("query", "full"))


# ---------------------------------------------------------------- beyond accuracy, by hand

LISTS = np.array([[0, 1], [0, 2], [0, 1]])  # 3 tasks, k=2, catalogue of 5


def test_top_k_breaks_ties_by_the_given_order_and_skips_non_candidates():
  scores = np.array([[1.0, 3.0, 3.0, 3.0, 0.0]])
  cands = np.array([[True, True, False, True, True]])
  tiebreak = np.array([4, 2, 0, 1, 3])  # entry 3 before entry 1 on a tie; entry 2 is not a candidate
  np.testing.assert_array_equal(R.top_k(scores, cands, 3, tiebreak), [[3, 1, 0]])
  with pytest.raises(ValueError, match="fewer than k=5 candidates"):
    R.top_k(scores, cands, 5, tiebreak)


def test_coverage_and_gini_by_hand():
  assert R.coverage(LISTS, 5) == pytest.approx(3 / 5)
  # Counts sorted: 0, 0, 1, 2, 3 (sum 6); sum (2i - 6) x_i = (0)(1) + (2)(2) + (4)(3) = 16; G = 16 / (5 * 6).
  assert R.gini(LISTS, 5) == pytest.approx(16 / 30)
  assert R.gini(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)


def test_intra_list_diversity_by_hand():
  vectors = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], np.float64)
  # List (0, 1): cos = 1/sqrt(2) -> 1 - 0.7071; list (0, 2): orthogonal -> 1; list (1, 3): zero vector -> 1.
  got = R.intra_list_diversity(np.array([[0, 1], [0, 2], [1, 3]]), vectors)
  assert got == pytest.approx(np.mean([1 - 1 / math.sqrt(2), 1.0, 1.0]))
  # k = 3: mean over the 3 pairs of (0, 1, 2).
  three = R.intra_list_diversity(np.array([[0, 1, 2]]), vectors)
  assert three == pytest.approx(np.mean([1 - 1 / math.sqrt(2), 1.0, 1.0]))


def test_novelty_by_hand():
  counts = np.array([7, 3, 0, 1, 1])  # training rows per entry; 7 users in training
  want = np.mean(
    [-math.log2(8 / 8), -math.log2(4 / 8), -math.log2(8 / 8), -math.log2(1 / 8), -math.log2(8 / 8), -math.log2(4 / 8)]
  )
  assert R.novelty(LISTS, counts, 7) == pytest.approx(want)
