"""The MeLU protocol (Lee et al., KDD'19): four cold-start scenarios from user and item age.

Users with `min_ratings..max_ratings` ratings are eligible; they are split at random into existing (80%)
and new (20%) users, and `valid_fraction` of the existing users are held out as 'valid' users (model
selection); the rest are 'train' users. Items are new when released after `year_cutoff`, else existing
(an unknown year, -1, counts as existing; how many such items there are is in the params).

Scenarios (a task = one user's ratings on one item group; `n_query` random ratings are the query,
the rest the support; a task needs `n_query + min_support` ratings, else it is excluded and counted):
  warm               train users x existing items
  new_user           new users   x existing items
  new_item           train users x new items
  new_user_new_item  new users   x new items
'train' tasks are the train users' existing-item ratings minus their warm query (then split again into
query and support), so training never sees an evaluated row; 'valid' tasks are valid users x existing items.
The price: a train task needs 2 * n_query + min_support existing-item ratings. On ML-100K (seed 0, defaults)
245 of the 419 train users have a train task (warm 298, valid 36, new_user 87, new_item 225,
new_user_new_item 59); `split.excluded` counts every user left out of each set.

Differences from the MeLU code: MeLU applies the 13..100 filter to each scenario's task; here it selects
users on all their ratings and each task needs `n_query + min_support` (min_support=3 gives MeLU's 13).
MeLU's ML-1M items came with IMDb years; the cutoffs are in `common.YEAR_CUTOFFS`.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.split import ColdStartSplit

NAME = "melu"
VERSION = "1.0"
SCENARIOS = ("warm", "new_user", "new_item", "new_user_new_item")
METRICS = ("mae", "rmse", "ndcg@1", "ndcg@3")


def melu(
  data: Interactions,
  seed: int = 0,
  *,
  year_cutoff: int | None = None,
  min_ratings: int = 13,
  max_ratings: int = 100,
  new_user_fraction: float = 0.2,
  valid_fraction: float = 0.1,
  n_query: int = 10,
  min_support: int = 1,
) -> ColdStartSplit:
  """Builds the MeLU split (see the module docstring).

  Args:
    data: interactions with `item_year`.
    seed: the split's seed (user split and every support/query draw).
    year_cutoff: new item = release year > year_cutoff; None: the dataset's default
      (ml-100k 1996, ml-1m 1997) or the 80% quantile of known years.
    min_ratings, max_ratings: inclusive bounds on an eligible user's number of ratings.
    new_user_fraction: share of eligible users that are new; valid_fraction: share of existing users in 'valid'.
    n_query: query ratings per task; min_support: least support ratings per task.
  Returns:
    ColdStartSplit with sets 'train', 'valid' and the four scenarios; target = rating.
  """
  seed = common.check_int("seed", seed, 0)
  min_ratings = common.check_int("min_ratings", min_ratings, 1)
  max_ratings = common.check_int("max_ratings", max_ratings, 1)
  if min_ratings > max_ratings:
    raise ValueError(f"parameter min_ratings={min_ratings} must be <= max_ratings={max_ratings}")
  new_user_fraction = common.check_fraction("new_user_fraction", new_user_fraction)
  valid_fraction = common.check_fraction("valid_fraction", valid_fraction)
  n_query, min_support = common.check_int("n_query", n_query, 1), common.check_int("min_support", min_support, 1)
  cutoff, cutoff_source = common.resolve_year_cutoff(data, year_cutoff)
  item_new = data.item_year > cutoff
  params = {
    "year_cutoff": cutoff,
    "year_cutoff_source": cutoff_source,
    "min_ratings": min_ratings,
    "max_ratings": max_ratings,
    "new_user_fraction": new_user_fraction,
    "valid_fraction": valid_fraction,
    "n_query": n_query,
    "min_support": min_support,
    "relevance": "graded",
    "ndcg_gain": "2^r - 1",
    "items_new": int(item_new.sum()),
    "items_existing": int((~item_new).sum()),
    "items_unknown_year_counted_existing": int((data.item_year < 0).sum()),
  }

  users, excluded_users = common.eligible_users(data, min_ratings, max_ratings)
  n_new = int(round(new_user_fraction * len(users)))
  n_valid = int(round(valid_fraction * (len(users) - n_new)))
  sizes = {"train": len(users) - n_new - n_valid, "valid": n_valid, "new": n_new}
  if min(sizes.values()) < 1:
    raise DataError(
      f"{NAME}: {len(users)} eligible users give user groups of sizes {sizes}; every group needs a "
      f"user (parameters {params}, users excluded: {excluded_users})"
    )
  train_u, valid_u, new_u = common.permuted_chunks(users, list(sizes.values()), common.stream(seed, "users"))
  params.update(
    {"users_eligible": len(users), "users_train": len(train_u), "users_valid": len(valid_u), "users_new": len(new_u)}
  )

  row_new = item_new[data.item]

  def tasks(stage, user_ids, rows):
    return common.make_tasks(
      user_ids, rows, data.user[rows], common.stream(seed, stage), head=n_query, min_tail=min_support
    )

  existing_rows = lambda ids: np.flatnonzero(np.isin(data.user, ids) & ~row_new)  # noqa: E731
  new_rows = lambda ids: np.flatnonzero(np.isin(data.user, ids) & row_new)  # noqa: E731
  sets, excluded = {}, {"users": excluded_users}
  sets["warm"], excluded["warm"] = tasks("warm", train_u, existing_rows(train_u))
  # Train on what the warm evaluation does not ask about: drop each train user's warm query rows.
  train_rows = np.setdiff1d(existing_rows(train_u), sets["warm"].query_rows)
  sets["train"], excluded["train"] = tasks("train", train_u, train_rows)
  sets["valid"], excluded["valid"] = tasks("valid", valid_u, existing_rows(valid_u))
  sets["new_user"], excluded["new_user"] = tasks("new_user", new_u, existing_rows(new_u))
  sets["new_item"], excluded["new_item"] = tasks("new_item", train_u, new_rows(train_u))
  sets["new_user_new_item"], excluded["new_user_new_item"] = tasks("new_user_new_item", new_u, new_rows(new_u))
  common.require_tasks(NAME, sets, params, excluded)
  return ColdStartSplit(
    protocol=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    task_kind="user",
    tasks=sets,
    scenarios=SCENARIOS,
    target=data.rating.astype(np.float32),
    metrics=METRICS,
    excluded=excluded,
  )
