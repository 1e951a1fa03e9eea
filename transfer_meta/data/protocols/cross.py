"""The part every cross-domain protocol shares: from row domains and held-out users to a `CrossDomainSplit`.

A protocol decides which rows are source / target (`row_domain`) and which target users are held out
(validation and cold); `build_split` then cuts the task sets the same way for every benchmark:
  train        target rows of every other user: query `n_query` random ratings, support the rest
               (a user needs n_query + 1 target ratings; fewer: excluded and counted, its rows unused).
  valid        target rows of the validation users: support `n_support` (K) random ratings, query the rest
  cold_target  the same for the cold users (the test scenario); K = 0 gives an empty support (zero-shot).
               `max_query` (default None: all) caps the query of both at that many random ratings; the rows past
               the cap are in no set (never trained on). The metrics' cost grows with the square of the query
               size: without a cap ML-1M's full queries (up to ~1,000 ratings) do not fit in memory.
  source       source rows of every user: query `n_query`, support the rest (a user needs n_query + 1).
Held-out users must have >= n_support + min_query target ratings (the protocol draws them among such users).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from transfer_meta.data import domains as domains_lib
from transfer_meta.data.cross_domain import COLD, SOURCE, SOURCE_SET, TARGET, CrossDomainSplit, RowSets
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common

SCENARIOS = (COLD,)
METRICS = ("mae", "rmse", "ndcg@5", "auc")
RELEVANCE = "threshold:4"  # AUC's relevance; ndcg@5 is graded (2^r - 1)


def check_params(n_support, min_query: int, n_query: int, valid_fraction) -> tuple[int, int, int, float]:
  """Validated (n_support >= 0, min_query > 5 (ndcg@5's cutoff), n_query >= 1, valid_fraction in (0, 1))."""
  n_support = common.check_int("n_support", n_support, 0)
  min_query = common.check_int("min_query", min_query, 6)
  return (
    n_support,
    min_query,
    common.check_int("n_query", n_query, 1),
    common.check_fraction("valid_fraction", valid_fraction),
  )


def build_split(
  data: Interactions,
  *,
  name: str,
  version: str,
  seed: int,
  params: dict,
  row_domain: np.ndarray,
  domain_names: tuple[str, str],
  valid_users: np.ndarray,
  cold_users: np.ndarray,
  n_support: int,
  min_query: int,
  n_query: int,
  excluded: Mapping,
  max_query: int | None = None,
) -> CrossDomainSplit:
  """Cuts the task sets (module docstring) and assembles the `CrossDomainSplit`.

  Args:
    data: the interactions; row_domain: int8 [N] 0 source / 1 target / -1 none.
    name, version, seed, params: the protocol's; params gain the set sizes.
    valid_users, cold_users: int disjoint held-out target users, each with >= n_support + min_query target rows.
    n_support, min_query, n_query: as in the module docstring.
    excluded: the protocol's own {set or stage: {reason: count}}; the sets' exclusions are added.
  Returns:
    The split; a DataError when a set ends up empty.
  """
  valid_users, cold_users = np.sort(np.asarray(valid_users, np.int64)), np.sort(np.asarray(cold_users, np.int64))
  assert np.intersect1d(valid_users, cold_users).size == 0
  U = data.n_users
  held = np.zeros(U, bool)
  held[valid_users] = held[cold_users] = True
  is_target, is_source = row_domain == TARGET, row_domain == SOURCE
  excluded = {k: dict(v) for k, v in excluded.items()}

  def user_tasks(stage, users, rows, head, min_tail, head_is, max_tail=None):
    return common.make_tasks(
      users,
      rows,
      data.user[rows],
      common.stream(seed, stage),
      head=head,
      min_tail=min_tail,
      max_tail=max_tail,
      head_is=head_is,
    )

  sets = {}
  train_users = np.flatnonzero(~held & (domains_lib.counts_in(data.user, row_domain, U, TARGET) > 0))
  train_rows = np.flatnonzero(is_target & ~held[data.user])
  sets["train"], excluded["train"] = user_tasks("train", train_users, train_rows, n_query, 1, "query")
  for set_name, users in (("valid", valid_users), (COLD, cold_users)):
    rows = np.flatnonzero(is_target & np.isin(data.user, users))
    sets[set_name], excluded[set_name] = user_tasks(set_name, users, rows, n_support, min_query, "support", max_query)
    if len(sets[set_name]) != len(users):
      raise DataError(f"{name}: some held-out {set_name} users have < {n_support + min_query} target ratings")
  source_rows = np.flatnonzero(is_source)
  source_users = np.flatnonzero(domains_lib.counts_in(data.user, row_domain, U, SOURCE) > 0)
  sets[SOURCE_SET], excluded[SOURCE_SET] = user_tasks(SOURCE_SET, source_users, source_rows, n_query, 1, "query")
  common.require_tasks(name, sets, params, excluded)

  shared_users = domains_lib.shared(data.user, row_domain, U)
  shared_items = domains_lib.shared(data.item, row_domain, data.n_items)
  trainable_users = np.unique(data.user[sets["train"].all_rows()])
  roles = {
    "train": np.intersect1d(shared_users, trainable_users).astype(np.int32),
    "valid": valid_users.astype(np.int32),
    COLD: cold_users.astype(np.int32),
  }
  history = {n: RowSets.of_users(ts.task_ids, data.user, source_rows) for n, ts in sets.items()}
  params = {
    **params,
    "n_support": n_support,
    "min_query": min_query,
    "n_query": n_query,
    "max_query": max_query,
    "relevance": RELEVANCE,
    "ndcg_gain": "2^r - 1",
    "users_valid": int(valid_users.size),
    "users_cold": int(cold_users.size),
    "users_train_overlapping": int(roles["train"].size),
    "users_shared": int(shared_users.size),
    "items_shared": int(shared_items.size),
  }
  return CrossDomainSplit(
    protocol=name,
    version=version,
    seed=seed,
    params=params,
    task_kind="user",
    tasks=sets,
    scenarios=SCENARIOS,
    target=data.rating.astype(np.float32),
    metrics=METRICS,
    excluded=excluded,
    domains=tuple(domain_names),
    row_domain=row_domain.astype(np.int8),
    source_rows=source_rows.astype(np.int64),
    shared_users=shared_users,
    shared_items=shared_items,
    roles=roles,
    history=history,
  )


def held_out_users(
  candidates: np.ndarray, seed: int, valid_fraction: float, cold_fraction: float, what: str, name: str
) -> tuple[np.ndarray, np.ndarray, dict]:
  """Draws the validation and cold users among `candidates` (one seeded permutation, stream 'users').

  The permutation's first round(valid_fraction * n) users are 'valid', the next round(cold_fraction * n) 'cold';
  so for one seed the validation users do not depend on `cold_fraction`, and the cold users of a smaller
  fraction are a subset of a larger one's (β = 0.2 ⊂ 0.5 ⊂ 0.8). At least one candidate must remain for training.

  Returns:
    (valid int64 sorted, cold int64 sorted, sizes {'valid', 'cold', 'train'}).
  """
  n = len(candidates)
  n_valid, n_cold = int(round(valid_fraction * n)), int(round(cold_fraction * n))
  sizes = {"valid": n_valid, "cold": n_cold, "train": n - n_valid - n_cold}
  if min(sizes.values()) < 1:
    raise DataError(
      f"{name}: {n} {what} give valid/cold/train sizes {sizes}; each needs >= 1 user "
      "(lower valid_fraction or the cold fraction, or use a larger dataset)"
    )
  valid, cold, _ = common.permuted_chunks(candidates, list(sizes.values()), common.stream(seed, "users"))
  return valid.astype(np.int64), cold.astype(np.int64), sizes
