"""Item warm-up (MetaEmb, Pan et al. SIGIR'19; MWUF, Zhu et al. SIGIR'21): cold items get ratings in rounds.

    warm items   (>= min_warm_ratings ratings)     'train': every rating trains the base model
    cold items   (< min_warm_ratings, and >= n_rounds * round_size + min_test ratings)
                 ratings in time order  ->  round a | round b | round c | test (the rest)
                 a seeded `valid_fraction` of them -> 'valid', the others -> the scenarios
    scenario 'cold'    support = nothing              query = the item's test ratings
    scenario 'warm_a'  support = round a              query = the same test ratings
    scenario 'warm_b'  support = rounds a, b          ...
    scenario 'warm_c'  support = rounds a, b, c       ...

Each round holds `round_size` (K) ratings; the support of 'warm_<r>' lists the rounds in order, so a learner that
warms up round by round (`learners.warmup`) updates the item's embedding with round a, then b, then c, as the
literature's warm-up evaluation does; every scenario scores the same test ratings of the same items. 'valid' is
the validation items with `valid_rounds` rounds as support and their test ratings as query. A warm item's task
has `round_size` random ratings as support and the rest as query (both train the base model; meta-learners
resample them per pass). Ratings of one item with equal timestamps are ordered by row index (deterministic).
Cold and validation items' ratings never reach training: only 'train' rows feed the base model and the
reference baselines. Users are not held out (item cold start assumes known users).

Settings (as `recbole_metarec`'s): 'rating' fits raw ratings and reports MAE, RMSE and AUC (relevant = rating >= 4);
'click' fits 1.0 where rating >= `click_threshold` (4) else 0.0 and reports AUC over each cold item's test users
(clicked vs not, ties 1/2), the metric of the MetaEmb / MWUF papers' CTR tables. Same items, rounds and test rows
in both settings (only the target differs).

Where we differ from the papers: they split old / new items by a frequency threshold on MovieLens-1M and large
CTR logs, with three warm-up batches per new item; on MovieLens-100K we default to items with >= 100 ratings as
warm (338 items) and K = 5, so that 601 items can be cold with 3 rounds and at least 5 test ratings.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.split import ColdStartSplit, TaskSet

NAME = "item_warmup"
VERSION = "1.0"
ROUND_NAMES = ("a", "b", "c")
SCENARIOS = ("cold", "warm_a", "warm_b", "warm_c")
METRICS = ("mae", "rmse", "auc")
CLICK_METRICS = ("auc",)  # MAE / RMSE of logits against 0/1 clicks mean nothing
SETTINGS = ("rating", "click")


def time_ordered(data: Interactions, rows: np.ndarray) -> np.ndarray:
  """`rows` sorted by (item, timestamp, row index): each item's ratings in time order, ties by row."""
  rows = np.asarray(rows, np.int64)
  return rows[np.lexsort((rows, data.timestamp[rows], data.item[rows]))]


def warmup_rounds(
  data: Interactions, items: np.ndarray, round_size: int, n_rounds: int
) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
  """Per item (ascending `items`), its first `n_rounds` batches of `round_size` ratings in time order and the rest.

  Returns:
    (rounds: [item][round] int64 [round_size] rows, test: [item] int64 rows after the last round).
  """
  rows = time_ordered(data, np.flatnonzero(np.isin(data.item, items)))
  starts = np.searchsorted(data.item[rows], items)
  ends = np.searchsorted(data.item[rows], items, side="right")
  cut = n_rounds * round_size
  rounds = [[rows[a + r * round_size : a + (r + 1) * round_size] for r in range(n_rounds)] for a in starts]
  return rounds, [rows[a + cut : b] for a, b in zip(starts, ends)]


def item_warmup(
  data: Interactions,
  seed: int = 0,
  *,
  min_warm_ratings: int = 100,
  round_size: int = 5,
  min_test: int = 5,
  valid_fraction: float = 0.1,
  valid_rounds: int = 1,
  setting: str = "rating",
  click_threshold: float = 4.0,
) -> ColdStartSplit:
  """Builds the item warm-up split (see the module docstring).

  Args:
    data: interactions with timestamps.
    seed: the split's seed (which cold items are validation items; the warm items' support draw).
    min_warm_ratings: N, an item with >= N ratings is warm (trains the base model); the others may be cold.
    round_size: K, ratings per warm-up round (3 rounds, a/b/c).
    min_test: a cold item needs >= 3 * K + min_test ratings (else excluded and counted).
    valid_fraction: share of the usable cold items held out as 'valid' (the same rounds / test cut).
    valid_rounds: warm-up rounds in the support of 'valid' (0..3; selection metric's setting).
    setting: 'rating' (target = rating) or 'click' (target = 1.0 where rating >= click_threshold, else 0.0).
    click_threshold: the rating at and above which an interaction is a click ('click' setting only).
  Returns:
    ColdStartSplit with task_kind 'item', sets 'train', 'valid', 'cold', 'warm_a', 'warm_b', 'warm_c'.
  """
  seed = common.check_int("seed", seed, 0)
  round_size = common.check_int("round_size", round_size, 1)
  min_test = common.check_int("min_test", min_test, 1)
  n_rounds = len(ROUND_NAMES)
  need = n_rounds * round_size + min_test
  min_warm = common.check_int("min_warm_ratings", min_warm_ratings, round_size + 1)
  if min_warm <= need:
    raise ValueError(
      f"parameter min_warm_ratings={min_warm} must exceed 3 * round_size + min_test = {need}: no item could be cold"
    )
  valid_fraction = common.check_fraction("valid_fraction", valid_fraction)
  valid_rounds = common.check_int("valid_rounds", valid_rounds, 0)
  if valid_rounds > n_rounds:
    raise ValueError(f"parameter valid_rounds={valid_rounds} must be <= {n_rounds}")
  setting = common.check_choice("setting", setting, SETTINGS)
  counts = data.item_counts()
  warm = counts >= min_warm
  cold = (counts >= need) & ~warm
  params = {
    "min_warm_ratings": min_warm,
    "round_size": round_size,
    "n_rounds": n_rounds,
    "min_test": min_test,
    "valid_fraction": valid_fraction,
    "valid_rounds": valid_rounds,
    "order": "timestamp, then row",
    # Click targets are 0/1: relevant = clicked.
    "relevance": "threshold:4" if setting == "rating" else "threshold:1",
    "items_warm": int(warm.sum()),
    "items_cold": int(cold.sum()),
  }
  if setting == "click":  # rating-setting manifests (and their hashes) stay those of v1.0
    params.update(setting=setting, click_threshold=float(click_threshold))
  warm_ids = np.flatnonzero(warm)
  rows = np.flatnonzero(warm[data.item])
  train, _ = common.make_tasks(
    warm_ids, rows, data.item[rows], common.stream(seed, "warm"), head=round_size, min_tail=1, head_is="support"
  )
  cold_ids = np.flatnonzero(cold)
  rounds, test = warmup_rounds(data, cold_ids, round_size, n_rounds)
  n_valid = int(round(valid_fraction * len(cold_ids)))
  if n_valid < 1 or n_valid >= len(cold_ids):
    raise DataError(
      f"{NAME}: {len(cold_ids)} cold items (ratings in {need}..{min_warm - 1}) cannot be split into valid and "
      f"test items with valid_fraction={valid_fraction}; lower min_test/round_size or raise min_warm_ratings"
    )
  is_valid = np.zeros(len(cold_ids), bool)
  is_valid[common.stream(seed, "valid").choice(len(cold_ids), n_valid, replace=False)] = True

  def rounds_set(idx: np.ndarray, k: int) -> TaskSet:
    support = [np.concatenate([np.zeros(0, np.int64), *rounds[i][:k]]) for i in idx]
    return TaskSet.from_lists(cold_ids[idx], support, [test[i] for i in idx])

  valid_idx, test_idx = np.flatnonzero(is_valid), np.flatnonzero(~is_valid)
  sets = {"train": train, "valid": rounds_set(valid_idx, valid_rounds)}
  sets.update({name: rounds_set(test_idx, k) for k, name in enumerate(SCENARIOS)})
  few = int(((counts > 0) & (counts < need)).sum())
  excluded = {
    "train": {f"fewer than {min_warm} ratings (cold or excluded)": int((~warm).sum())},
    **{
      name: {"no ratings": int((counts == 0).sum()), f"fewer than {need} ratings": few, "validation items": n_valid}
      for name in SCENARIOS
    },
    "valid": {"test items": int(len(test_idx))},
  }
  common.require_tasks(NAME, sets, params, excluded)
  return ColdStartSplit(
    protocol=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    task_kind="item",
    tasks=sets,
    scenarios=SCENARIOS,
    target=(data.rating if setting == "rating" else data.rating >= click_threshold).astype(np.float32),
    metrics=METRICS if setting == "rating" else CLICK_METRICS,
    excluded=excluded,
  )
