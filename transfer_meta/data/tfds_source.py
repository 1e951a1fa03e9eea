"""TFDS MovieLens ratings (online): `movielens/{100k,1m,20m,25m}-ratings`.

Needs the optional extra `pip install -r requirements-tfds.txt`; TensorFlow is imported only inside
`load_tfds`. The ratings split is read in batches (no per-rating Python loop), so 25M ratings fit in
memory as int/float arrays. Users' demographics exist for 100k and 1m only.

Features: user categorical age (MovieLens-1M buckets, as for ml-100k), gender, occupation (TFDS
`user_occupation_text`), zip_prefix (as ml-100k); item categorical release_year (parsed from a trailing
"(YYYY)" in the title; `Interactions.item_year` -1 where absent), multi-hot genre over TFDS's fixed genre
list, and text title (year stripped). The TFDS genres "Unknown" and "(no genres listed)" are placeholders,
not genres: such items get an all-zero genre row, as in ml-100k.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.builder import RawTable, build_interactions
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.movielens import AGE_BUCKETS, age_bucket, split_title_year, zip_prefix

VARIANTS = ("movielens/100k-ratings", "movielens/1m-ratings", "movielens/20m-ratings", "movielens/25m-ratings")
_DEMOGRAPHICS = ("movielens/100k-ratings", "movielens/1m-ratings")
_PLACEHOLDER_GENRES = ("Unknown", "(no genres listed)")
_USER_KEYS = ("user_gender", "bucketized_user_age", "user_occupation_text", "user_zip_code")
_BATCH = 65536


def _int_ids(values: np.ndarray, what: str, name: str) -> np.ndarray:
  """int64 [n] from byte-string ids (MovieLens ids are integers)."""
  try:
    return np.asarray(values).astype("S").astype(np.int64)
  except ValueError as e:
    raise DataError(f"tfds:{name}: non-integer {what} in batch, e.g. {values[:3].tolist()}") from e


def _decode(values) -> np.ndarray:
  return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


class _FirstRows:
  """Keeps, for each id, the feature values of its first occurrence across batches."""

  def __init__(self):
    self.ids, self.cols = [], {}
    self._seen = np.zeros(0, np.int64)

  def add(self, ids: np.ndarray, cols: dict) -> None:
    uniq, first = np.unique(ids, return_index=True)
    new = ~np.isin(uniq, self._seen)
    rows = first[new]
    self.ids.append(uniq[new])
    self._seen = np.union1d(self._seen, uniq[new])
    for k, v in cols.items():
      self.cols.setdefault(k, []).append(v[rows])

  def result(self) -> tuple[np.ndarray, dict]:
    return np.concatenate(self.ids), {k: np.concatenate(v) for k, v in self.cols.items()}


def load_tfds(name: str, data_dir: str | None = None, download: bool = True, duplicates: str = "error") -> Interactions:
  """Loads a TFDS MovieLens ratings variant (the single 'train' split).

  Args:
    name: one of `VARIANTS`.
    data_dir: TFDS data folder (default: TFDS's, ~/tensorflow_datasets).
    download: let TFDS download and prepare the data when absent.
    duplicates: duplicate (user, item) policy (see `builder.build_interactions`).
  Returns:
    `Interactions` named 'tfds:<name>'; ratings scale (1, 5), or (0.5, 5) for the half-star 20m/25m.
  """
  if name not in VARIANTS:
    raise ValueError(f"unknown TFDS dataset {name!r}; valid: {list(VARIANTS)}")
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"tfds:{name} needs TensorFlow Datasets: pip install -r requirements-tfds.txt ({e})") from e
  ds, info = tfds.load(name, split="train", data_dir=data_dir, download=download, with_info=True, shuffle_files=False)
  genre_names = tuple(info.features["movie_genres"].feature.names)
  demographics = name in _DEMOGRAPHICS
  keys = ("user_id", "movie_id", "user_rating", "timestamp", "movie_title") + (_USER_KEYS if demographics else ())

  def prep(ex):
    out = {k: ex[k] for k in keys}
    out["movie_genres"] = tf.minimum(tf.reduce_sum(tf.one_hot(ex["movie_genres"], len(genre_names)), axis=0), 1.0)
    return out

  cols = {k: [] for k in ("user", "item", "rating", "timestamp")}
  users, items = _FirstRows(), _FirstRows()
  for b in tfds.as_numpy(ds.map(prep).batch(_BATCH)):
    user, item = _int_ids(b["user_id"], "user_id", name), _int_ids(b["movie_id"], "movie_id", name)
    for k, v in zip(cols, (user, item, b["user_rating"], b["timestamp"])):
      cols[k].append(v)
    items.add(item, {"title": b["movie_title"], "genres": b["movie_genres"]})
    if demographics:
      users.add(user, {k: b[k] for k in _USER_KEYS})
  if not cols["user"]:
    raise DataError(f"tfds:{name}: the train split is empty")
  item_ids, icol = items.result()
  title, year = split_title_year(_decode(icol["title"]))
  genre_vocab = tuple(g for g in genre_names if g not in _PLACEHOLDER_GENRES)
  genres = np.empty(item_ids.size, dtype=object)
  genres[:] = [[genre_names[j] for j in np.flatnonzero(row) if genre_names[j] in genre_vocab] for row in icol["genres"]]
  item_table = RawTable(
    ids=item_ids,
    source=f"tfds:{name}",
    text={"title": title},
    multi_hot={"genre": genres},
    categorical={"release_year": np.where(year > 0, year.astype(str), None)},
    vocab={"genre": genre_vocab},
  )
  user_table = None
  if demographics:
    user_ids, ucol = users.result()
    gender = np.where(ucol["user_gender"].astype(bool), "M", "F").astype(object)
    user_table = RawTable(
      ids=user_ids,
      source=f"tfds:{name}",
      vocab={"age": AGE_BUCKETS},
      categorical={
        "age": age_bucket(ucol["bucketized_user_age"]),
        "gender": gender,
        "occupation": _decode(ucol["user_occupation_text"]),
        "zip_prefix": zip_prefix(_decode(ucol["user_zip_code"])),
      },
    )
  scale = (1, 5) if demographics else (0.5, 5)
  cat = {k: np.concatenate(v) for k, v in cols.items()}
  return build_interactions(
    f"tfds:{name}",
    cat["user"],
    cat["item"],
    cat["rating"],
    cat["timestamp"],
    user_table=user_table,
    item_table=item_table,
    item_year=year,
    duplicates=duplicates,
    rating_scale=scale,
    source=f"tfds:{name}",
  )
