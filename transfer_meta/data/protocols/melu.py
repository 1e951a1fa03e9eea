"""The MeLU protocol (Lee et al., KDD'19): four cold-start scenarios from user and item age.

Users with `min_ratings..max_ratings` ratings are eligible; they are split at random into existing (80%)
and new (20%) users, and `valid_fraction` of the existing users are held out as 'valid' users (model
selection); the rest are 'train' users. Items are new when released after `year_cutoff` and existing when
released up to `existing_until` (default: `year_cutoff`; an unknown year, -1, counts as existing; how many
such items there are is in the params). Items released in between belong to neither group: their ratings are
in no task (counted in `params['ratings_between_groups']`). The paper's ML-1M split is such a gap: existing
"before 1997", new "after 1998" (`common.YEAR_CUTOFFS` / `EXISTING_UNTIL`: existing_until 1996, cutoff 1998;
the 1997-98 films, 621 of the 3,706 rated, are left out). ML-100K has no gap (cutoff 1996).

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
Users are selected on all their ratings, including those on 1997-98 films (ML-1M: 3,131 users with 13-100).
MeLU's ML-1M items came with IMDb years; ours are MovieLens's own.
Version 1.1: `existing_until` (the ML-1M gap); v1.0 counted ML-1M's 1997 films existing and 1998 new. Splits
without a gap (ML-100K, any given `year_cutoff` alone) are unchanged from v1.0.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.split import ColdStartSplit

NAME = "melu"
VERSION = "1.1"
SCENARIOS = ("warm", "new_user", "new_item", "new_user_new_item")
METRICS = ("mae", "rmse", "ndcg@1", "ndcg@3")


def melu(
  data: Interactions,
  seed: int = 0,
  *,
  year_cutoff: int | None = None,
  existing_until: int | None = None,
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
      (ml-100k 1996, ml-1m 1998) or the 80% quantile of known years.
    existing_until: existing item = release year <= existing_until (or unknown); None: the dataset's default
      when year_cutoff is None too (ml-1m 1996), else year_cutoff. Must be <= year_cutoff.
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
  until = common.resolve_existing_until(data, existing_until, cutoff, given=year_cutoff is not None)
  item_new = data.item_year > cutoff
  item_existing = data.item_year <= until  # unknown years (-1) included
  params = {
    "year_cutoff": cutoff,
    "year_cutoff_source": cutoff_source,
    "existing_until": until,
    "min_ratings": min_ratings,
    "max_ratings": max_ratings,
    "new_user_fraction": new_user_fraction,
    "valid_fraction": valid_fraction,
    "n_query": n_query,
    "min_support": min_support,
    "relevance": "graded",
    "ndcg_gain": "2^r - 1",
    "items_new": int(item_new.sum()),
    "items_existing": int(item_existing.sum()),
    "items_between_groups": int((~item_new & ~item_existing).sum()),
    "ratings_between_groups": int((~item_new & ~item_existing)[data.item].sum()),
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

  row_new, row_existing = item_new[data.item], item_existing[data.item]

  def tasks(stage, user_ids, rows):
    return common.make_tasks(
      user_ids, rows, data.user[rows], common.stream(seed, stage), head=n_query, min_tail=min_support
    )

  existing_rows = lambda ids: np.flatnonzero(np.isin(data.user, ids) & row_existing)  # noqa: E731
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
