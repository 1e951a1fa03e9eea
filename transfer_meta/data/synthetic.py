"""Synthetic ratings with planted, known structure (for tests, demos and scale runs).

World, fixed by `seed`:
  user latent  u = E_age[a] + E_gender[g] + E_occupation[o] + user_deviation * z_u       [U, rank]
  user bias    b_u = (feature biases) + user_deviation / 2 * z'_u
  item latent  v = genres @ G / sqrt(#genres) + 0.5 * year01 * w + item_deviation * z_i  [I, rank]
  item bias    b_i = (genre and year biases) + item_deviation / 2 * z'_i
  rating       clip(round(mu + b_u + b_i + <u, v> / sqrt(rank) + noise * eps), 1, 5)  (integers 1..5)
so the features predict much of a new user's taste (a feature model beats the global mean) while
`user_deviation` is what only the user's own ratings reveal (adapting on a support set beats not adapting).

Each user rates `ratings_per_user` (inclusive range, uniform) distinct items, drawn with a popularity skew
(`popularity` > 1: a long tail) by an order-statistics trick: sorted draws plus 0..k-1 are distinct.
Users are generated in fixed chunks with vectorised numpy (int32/float32, no U x I matrix), so ML-25M
sizes (162,541 users, 59,047 items, 25M ratings) fit in bounded memory. All `n_items` items keep their
feature rows, including any that nobody rated. Features mirror ml-100k: user age/gender/occupation,
item release_year (+ `item_year`), multi-hot genre, title "Item 17".
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.builder import RawTable, encode_table
from transfer_meta.data.interactions import Interactions
from transfer_meta.data.movielens import AGE_BUCKETS

GENRES = tuple(
  "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror Musical Mystery "
  "Romance Sci-Fi Thriller War Western".split()
)
_GENRE_W = np.array([15, 8, 3, 7, 30, 6, 3, 43, 1, 1, 5, 3, 4, 15, 6, 15, 4, 2], np.float64)
OCCUPATIONS = tuple(
  "administrator artist doctor educator engineer entertainment executive healthcare homemaker lawyer librarian "
  "marketing none other programmer retired salesman scientist student technician writer".split()
)
_AGE_P = np.array([0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
_CHUNK = 8192  # users per chunk; fixed, so the output does not depend on memory settings
_MU = 3.3


def _check_args(
  n_users, n_items, ratings_per_user, rank, noise, user_deviation, item_deviation, year_range, popularity
) -> None:
  lo, hi = ratings_per_user
  for ok, msg in (
    (n_users >= 1, f"n_users must be >= 1, got {n_users}"),
    (n_items >= 1, f"n_items must be >= 1, got {n_items}"),
    (
      1 <= lo <= hi <= n_items,
      f"ratings_per_user must satisfy 1 <= low <= high <= n_items={n_items}, got {ratings_per_user}",
    ),
    (rank >= 1, f"rank must be >= 1, got {rank}"),
    (min(noise, user_deviation, item_deviation) >= 0, "noise, user_deviation, item_deviation must be >= 0"),
    (year_range[0] <= year_range[1], f"year_range must be (first, last), got {year_range}"),
    (popularity > 0, f"popularity must be > 0, got {popularity}"),
  ):
    if not ok:
      raise ValueError(msg)


def _users(rng, n_users, rank, user_deviation):
  """Feature codes (age, gender, occupation) [U] each, latents f32 [U, rank], biases f32 [U]."""
  codes = (
    rng.choice(len(AGE_BUCKETS), n_users, p=_AGE_P),
    rng.choice(2, n_users, p=[0.3, 0.7]),
    rng.integers(0, len(OCCUPATIONS), n_users),
  )
  latent = user_deviation * rng.standard_normal((n_users, rank))
  bias = user_deviation / 2 * rng.standard_normal(n_users)
  for c, size in zip(codes, (len(AGE_BUCKETS), 2, len(OCCUPATIONS))):
    latent += rng.normal(0, np.sqrt(1 / 3), (size, rank))[c]
    bias += rng.normal(0, 0.2, size)[c]
  return codes, latent.astype(np.float32), bias.astype(np.float32)


def _items(rng, n_items, rank, item_deviation, year_range):
  """Genre multi-hot f32 [I, 18], years int32 [I], latents f32 [I, rank], biases f32 [I]."""
  n_genres = rng.choice([1, 2, 3], n_items, p=[0.5, 0.35, 0.15])
  keys = np.log(_GENRE_W / _GENRE_W.sum()) + rng.gumbel(size=(n_items, len(GENRES)))  # weighted, no repeats
  ranks = np.argsort(np.argsort(-keys, axis=1), axis=1)
  genres = (ranks < n_genres[:, None]).astype(np.float32)
  first, last = year_range
  year = np.minimum(first + np.floor(rng.power(3.0, n_items) * (last - first + 1)), last).astype(np.int32)
  year01 = (year - first) / max(last - first, 1) * 2 - 1
  latent = genres @ rng.standard_normal((len(GENRES), rank)) / np.sqrt(n_genres)[:, None]
  latent += 0.5 * year01[:, None] * rng.standard_normal(rank) + item_deviation * rng.standard_normal((n_items, rank))
  bias = genres @ rng.normal(0, 0.3, len(GENRES)) / n_genres + 0.2 * year01
  bias += item_deviation / 2 * rng.standard_normal(n_items)
  return genres, year, latent.astype(np.float32), bias.astype(np.float32)


def _sample_items(rng, k: np.ndarray, n_items: int, popularity: float) -> np.ndarray:
  """Distinct popularity ranks for each user: int64 [sum k], grouped by user, each in [0, n_items)."""
  kmax = int(k.max())
  draws = np.floor(rng.random((k.size, kmax)) ** popularity * (n_items - k + 1)[:, None]).astype(np.int64)
  valid = np.arange(kmax) < k[:, None]
  draws = np.sort(np.where(valid, draws, n_items), axis=1) + np.arange(kmax)  # strictly increasing per row
  return draws[valid]


def generate(
  n_users: int = 943,
  n_items: int = 1682,
  ratings_per_user: tuple[int, int] = (20, 120),
  rank: int = 8,
  seed: int = 0,
  noise: float = 0.3,
  user_deviation: float = 0.7,
  item_deviation: float = 0.2,
  year_range: tuple[int, int] = (1980, 1998),
  popularity: float = 1.5,
  name: str = "synthetic",
) -> Interactions:
  """Generates ratings with planted feature-dependent low-rank structure (see module docstring).

  Args:
    n_users, n_items: U and I.
    ratings_per_user: inclusive (low, high) count of distinct items each user rates.
    rank: latent dimension.
    seed: everything is a deterministic function of the arguments.
    noise: std of the rating noise before rounding.
    user_deviation: scale of the per-user taste the features cannot explain (0: features say all).
    item_deviation: scale of the per-item deviation from genres and year.
    year_range: inclusive release years (skewed towards the last).
    popularity: exponent of the item-popularity skew (1: uniform).
    name: dataset name.
  Returns:
    `Interactions` with integer ratings 1..5; rows grouped by user, chronological within a user.
  """
  _check_args(n_users, n_items, ratings_per_user, rank, noise, user_deviation, item_deviation, year_range, popularity)
  rng = np.random.default_rng(seed)
  (age, gender, occ), u_lat, u_bias = _users(rng, n_users, rank, user_deviation)
  genres, year, i_lat, i_bias = _items(rng, n_items, rank, item_deviation, year_range)
  by_popularity = rng.permutation(n_items).astype(np.int32)
  counts = rng.integers(ratings_per_user[0], ratings_per_user[1] + 1, n_users)
  start_time = rng.integers(883_000_000, 1_420_000_000, n_users)
  ptr = np.concatenate([[0], np.cumsum(counts)])
  user, item = np.empty(ptr[-1], np.int32), np.empty(ptr[-1], np.int32)
  rating, ts = np.empty(ptr[-1], np.float32), np.empty(ptr[-1], np.int64)
  for c, lo in enumerate(range(0, n_users, _CHUNK)):
    hi = min(lo + _CHUNK, n_users)
    crng = np.random.default_rng([seed, c])
    rows = slice(ptr[lo], ptr[hi])
    u = np.repeat(np.arange(lo, hi, dtype=np.int32), counts[lo:hi])
    i = by_popularity[_sample_items(crng, counts[lo:hi], n_items, popularity)]
    t = start_time[u] + crng.integers(0, 86_400 * 365, u.size)
    order = np.lexsort((t, u))  # chronological within each user, not in popularity order
    user[rows], item[rows], ts[rows] = u, i[order], t[order]
    i = item[rows]
    score = np.einsum("nr,nr->n", u_lat[u], i_lat[i]) / np.float32(np.sqrt(rank))
    score += _MU + u_bias[u] + i_bias[i] + np.float32(noise) * crng.standard_normal(u.size, np.float32)
    rating[rows] = np.clip(np.rint(score), 1, 5)
  user_ids, item_ids = np.arange(n_users).astype(object), np.arange(n_items).astype(object)
  users = RawTable(
    ids=user_ids,
    source=name,
    vocab={"age": AGE_BUCKETS, "occupation": OCCUPATIONS},
    categorical={
      "age": np.asarray(AGE_BUCKETS, object)[age],
      "gender": np.array(["F", "M"])[gender],
      "occupation": np.asarray(OCCUPATIONS, object)[occ],
    },
  )
  genre_lists = np.empty(n_items, object)
  genre_lists[:] = [[GENRES[j] for j in np.flatnonzero(row)] for row in genres]
  items = RawTable(
    ids=item_ids,
    source=name,
    categorical={"release_year": year.astype(str)},
    multi_hot={"genre": genre_lists},
    vocab={"genre": GENRES},
    text={"title": np.char.add("Item ", np.arange(n_items).astype(str)).astype(object)},
  )
  return Interactions(
    name,
    user,
    item,
    rating,
    ts,
    encode_table(users, user_ids, "user"),
    encode_table(items, item_ids, "item"),
    user_ids,
    item_ids,
    (1.0, 5.0),
    year,
  )
