"""The RecBole-MetaRec benchmark protocol (user cold start, users as tasks, split 8:1:1).

Reference rule, reproduced on purpose: RecBole-MetaRec keeps users with 13..100 ratings, shuffles their
interactions, takes the users in order of first appearance in the shuffled list, and cuts that list
8:1:1 into train/valid/test users (sizes by RecBole's `_calcu_split_ids`: valid and test rounded down,
train the rest; 466/58/58 of ML-100K's 582 users). A user with more ratings is likelier to appear early,
so this puts heavier users in train: on ML-100K (seed 0) the mean support is about 37 in train and about
19 in test (tests/test_protocols.py measures it). Compare with other papers' numbers only under this rule.

Each task: exactly `n_query` (10) random ratings are the query, the rest the support. Setting 'rating'
fits raw ratings; 'click' fits 1.0 where rating >= click_threshold (4) else 0.0. Ranking metrics are
computed inside each task's query set with relevance = its 5 highest-rated items ("top:5"; in the click
setting relevance = clicked, "threshold:1"); both the
tie-aware variants and the peer-compatible ":index" ones (ties broken by position) are declared. The click
setting also reports AUC over each query's (clicked, not clicked) pairs, a score tie counting 1/2 (as sklearn's
`roc_auc_score`, which the peer calls); a query of one class has no AUC and is left out of its mean (counted in
'auc/tasks').
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.split import ColdStartSplit

NAME = "recbole_metarec"
VERSION = "1.0"
SCENARIOS = ("test",)
_RANKING = ("precision@5", "recall@5", "hr@5", "ndcg_bin@5", "mrr@5")
METRICS = _RANKING + tuple(f"{m}:index" for m in _RANKING)
CLICK_METRICS = (*METRICS, "auc")


def split_sizes(n: int, ratios: Sequence[float]) -> list[int]:
  """RecBole's `_calcu_split_ids` as sizes: all but the first part rounded down, the first takes the rest,
  and a part whose exact share is in (0, 1) gets one task taken from the first (while it has more than one)."""
  total = float(sum(ratios))
  ratios = [r / total for r in ratios]
  cnt = [int(r * n) for r in ratios]
  cnt[0] = n - sum(cnt[1:])
  for i in range(1, len(ratios)):
    if cnt[0] <= 1:
      break
    if 0 < ratios[-i] * n < 1:
      cnt[-i] += 1
      cnt[0] -= 1
  return cnt


def recbole_metarec(
  data: Interactions,
  seed: int = 0,
  *,
  setting: str = "rating",
  min_ratings: int = 13,
  max_ratings: int = 100,
  n_query: int = 10,
  ratios: Sequence[float] = (0.8, 0.1, 0.1),
  click_threshold: float = 4.0,
) -> ColdStartSplit:
  """Builds the RecBole-MetaRec split (see the module docstring).

  Args:
    data: interactions.
    seed: the split's seed (interaction shuffle and every query draw).
    setting: 'rating' (target = rating) or 'click' (target = rating >= click_threshold).
    min_ratings, max_ratings: inclusive bounds on a task's number of ratings.
    n_query: query ratings per task (the rest is support; a task needs at least one support rating).
    ratios: train/valid/test shares of the users (normalised).
  Returns:
    ColdStartSplit with sets 'train', 'valid', 'test' (the scenario); target f32 [N].
  """
  seed = common.check_int("seed", seed, 0)
  setting = common.check_choice("setting", setting, ("rating", "click"))
  min_ratings = common.check_int("min_ratings", min_ratings, 1)
  max_ratings = common.check_int("max_ratings", max_ratings, 1)
  if min_ratings > max_ratings:
    raise ValueError(f"parameter min_ratings={min_ratings} must be <= max_ratings={max_ratings}")
  n_query = common.check_int("n_query", n_query, 1)
  ratios = tuple(float(r) for r in ratios)
  if len(ratios) != 3 or min(ratios) <= 0 or not np.all(np.isfinite(ratios)):
    raise ValueError(f"parameter ratios={ratios!r} must be three positive train/valid/test shares")
  params = {
    "setting": setting,
    "min_ratings": min_ratings,
    "max_ratings": max_ratings,
    "n_query": n_query,
    "ratios": list(ratios),
    "click_threshold": float(click_threshold),
    # Click targets are 0/1: "top:5" would make every item relevant in a query with < 5 clicks.
    "relevance": "top:5" if setting == "rating" else "threshold:1",
    "user_order": "first appearance in shuffled interactions",
  }

  users, excluded_users = common.eligible_users(data, min_ratings, max_ratings)
  rows = np.flatnonzero(np.isin(data.user, users))
  shuffled_users = data.user[rows[common.stream(seed, "order").permutation(rows.shape[0])]]
  uniq, first = np.unique(shuffled_users, return_index=True)
  ordered = uniq[np.argsort(first)]
  sizes = split_sizes(len(ordered), ratios)
  if min(sizes) < 1:
    raise DataError(
      f"{NAME}: {len(ordered)} eligible users give train/valid/test sizes {sizes} "
      f"(parameters {params}, users excluded: {excluded_users})"
    )
  bounds = np.cumsum([0, *sizes])
  sets, excluded = {}, {"users": excluded_users}
  for name, a, b in zip(("train", "valid", "test"), bounds[:-1], bounds[1:]):
    ids = np.sort(ordered[a:b])
    set_rows = rows[np.isin(data.user[rows], ids)]
    sets[name], excluded[name] = common.make_tasks(
      ids, set_rows, data.user[set_rows], common.stream(seed, name), head=n_query, min_tail=1
    )
  common.require_tasks(NAME, sets, params, excluded)
  target = data.rating if setting == "rating" else (data.rating >= click_threshold)
  return ColdStartSplit(
    protocol=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    task_kind="user",
    tasks=sets,
    scenarios=SCENARIOS,
    target=target.astype(np.float32),
    metrics=METRICS if setting == "rating" else CLICK_METRICS,
    excluded=excluded,
  )
