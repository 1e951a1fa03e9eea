"""`genre_split`: a user-overlap cross-domain benchmark cut from ONE MovieLens dataset by genre.

Domains. Every item goes to the domain holding its FIRST listed genre (`domains.genre_domains`: the first set
column of the multi-hot 'genre', which is the order both MovieLens files list genres in, alphabetical). Default
groups (`SOURCE_GENRES`, `TARGET_GENRES`; parameters `source_genres`, `target_genres` override them):
  source: Action, Adventure, Animation, Children's, Crime, Fantasy, Film-Noir, Horror, Mystery, Sci-Fi,
          Thriller, War, Western
  target: Comedy, Documentary, Drama, Musical, Romance
Under the first-genre rule these split the ratings about evenly (ML-100K 48,242 source / 51,748 target and
10 ratings of 2 genre-less items in no domain; ML-1M 497,898 / 502,311). Items whose first genre is in neither
group, and genre-less items, are in no domain: their rows are in no set (counted in `params`).

Users. A user rating in both domains is overlapping (`split.shared_users`). Among the overlapping users with
>= `min_source` source ratings and >= n_support + min_query target ratings (the candidates), one seeded
permutation gives `valid_fraction` validation users, then a fraction `beta` (β ∈ {0.2, 0.5, 0.8} in the
benchmark) of cold users (`cross.held_out_users`: for a seed the validation users do not depend on β, and the
cold users of β = 0.2 are among those of 0.5, which are among those of 0.8). Their TARGET ratings are held out:
support K = `n_support` random target ratings (0 = zero-shot), query the rest; their source ratings stay
training data. Everyone else's target ratings are training tasks. See `cross` for the sets and
`cross_domain` for what a method reads. Scenario 'cold_target'; metrics MAE, RMSE, nDCG@5 (gain 2^r - 1) and
AUC (relevant = rating >= 4) over each cold user's query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transfer_meta.data import domains as domains_lib
from transfer_meta.data.cross_domain import SOURCE, TARGET, CrossDomainSplit
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common, cross

NAME = "genre_split"
VERSION = "1.0"
SCENARIOS = cross.SCENARIOS
METRICS = cross.METRICS
SOURCE_GENRES = (
  "Action",
  "Adventure",
  "Animation",
  "Children's",
  "Crime",
  "Fantasy",
  "Film-Noir",
  "Horror",
  "Mystery",
  "Sci-Fi",
  "Thriller",
  "War",
  "Western",
)
TARGET_GENRES = ("Comedy", "Documentary", "Drama", "Musical", "Romance")


def genre_split(
  data: Interactions,
  seed: int = 0,
  *,
  beta: float = 0.5,
  n_support: int = 5,
  min_query: int = 10,
  n_query: int = 10,
  valid_fraction: float = 0.1,
  max_query: int | None = None,
  min_source: int = 1,
  source_genres: Sequence[str] = SOURCE_GENRES,
  target_genres: Sequence[str] = TARGET_GENRES,
  genre_feature: str = "genre",
) -> CrossDomainSplit:
  """Builds the genre split (see the module docstring).

  Args:
    data: single-domain interactions (Interactions.domain None) with a multi-hot item genre feature.
    seed: the split's seed (held-out users and every support/query draw).
    beta: share of the candidate overlapping users that are cold in the target domain.
    n_support: K target ratings in each held-out user's support (0: zero-shot).
    min_query: least query ratings of a held-out user (> 5, nDCG@5's cutoff).
    n_query: query size of the training and source tasks.
    valid_fraction: share of the candidates held out for validation.
    max_query: cap on a held-out user's query (None: all their other target ratings; see `cross`).
    min_source: least source ratings of a candidate.
    source_genres, target_genres: the genre groups (disjoint vocabulary entries).
    genre_feature: the multi-hot item feature holding genres.
  Returns:
    CrossDomainSplit with sets 'train', 'valid', 'cold_target' (the scenario) and 'source'; target = rating.
  """
  seed = common.check_int("seed", seed, 0)
  if data.domain is not None:
    raise DataError(
      f"{NAME}: {data.name} already carries domains {data.domains}; genre_split assigns domains by genre, so it "
      "takes single-domain interactions"
    )
  beta = common.check_fraction("beta", beta)
  n_support, min_query, n_query, valid_fraction = cross.check_params(n_support, min_query, n_query, valid_fraction)
  min_source = common.check_int("min_source", min_source, 1)
  if beta + valid_fraction >= 1.0:
    raise ValueError(f"parameters beta={beta} + valid_fraction={valid_fraction} must leave training users (< 1)")
  groups = (tuple(source_genres), tuple(target_genres))
  item_domain, _ = domains_lib.genre_domains(data, groups, genre_feature)
  row_domain = item_domain[data.item]
  U = data.n_users
  n_src = domains_lib.counts_in(data.user, row_domain, U, SOURCE)
  n_tgt = domains_lib.counts_in(data.user, row_domain, U, TARGET)
  overlapping = (n_src > 0) & (n_tgt > 0)
  candidate = overlapping & (n_src >= min_source) & (n_tgt >= n_support + min_query)
  params = {
    "beta": beta,
    "valid_fraction": valid_fraction,
    "min_source": min_source,
    "genre_rule": "first listed genre",
    "source_genres": list(groups[0]),
    "target_genres": list(groups[1]),
    "items_source": int((item_domain == SOURCE).sum()),
    "items_target": int((item_domain == TARGET).sum()),
    "items_in_no_domain": int((item_domain < 0).sum()),
    "ratings_in_no_domain": int((row_domain < 0).sum()),
    "users_overlapping": int(overlapping.sum()),
    "users_candidates": int(candidate.sum()),
  }
  excluded = {
    "candidates": {
      "not overlapping": int((~overlapping).sum()),
      f"fewer than {min_source} source ratings": int((overlapping & (n_src < min_source)).sum()),
      f"fewer than {n_support + min_query} target ratings": int(
        (overlapping & (n_src >= min_source) & (n_tgt < n_support + min_query)).sum()
      ),
    }
  }
  valid, cold, _ = cross.held_out_users(np.flatnonzero(candidate), seed, valid_fraction, beta, "candidate users", NAME)
  return cross.build_split(
    data,
    name=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    row_domain=row_domain,
    domain_names=("source genres", "target genres"),
    valid_users=valid,
    cold_users=cold,
    n_support=n_support,
    min_query=min_query,
    n_query=n_query,
    excluded=excluded,
    max_query=None if max_query is None else common.check_int("max_query", max_query, min_query),
  )
