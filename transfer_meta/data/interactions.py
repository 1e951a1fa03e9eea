"""`Interactions`: the one data type every source produces.

Everything downstream (protocols, task batches, models) reads only this, never where the data came
from. Arrays are numpy; ids are dense (0..n-1) with a map back to the raw ids of the source.

Side features live in a `FeatureTable` per entity kind (users, items):
    * categorical: int32 [n] ids into `vocab[name]`; index 0 is always `UNKNOWN` (missing value).
    * multi_hot:   float32 [n, V] 0/1 sets (e.g. genres); column labels in `vocab[name]`.
    * dense:       float32 [n, D] vectors (e.g. text embeddings).
    * text:        object [n] strings kept for people (titles); models never read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

UNKNOWN = "<unk>"


class DataError(ValueError):
  """Bad input data: the message names the file/column/row and the problem."""


def _frozen(mapping: Mapping | None) -> dict:
  return dict(sorted((mapping or {}).items()))


@dataclasses.dataclass(frozen=True)
class FeatureTable:
  """Side features of `n` entities (all users or all items)."""

  n: int
  categorical: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> int32 [n]
  multi_hot: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> f32 [n, V]
  dense: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> f32 [n, D]
  text: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> object [n]
  vocab: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for field in ("categorical", "multi_hot", "dense", "text", "vocab"):
      object.__setattr__(self, field, _frozen(getattr(self, field)))
    for name, arr in self.categorical.items():
      _check(arr.shape == (self.n,), f"categorical feature {name!r} has shape {arr.shape}, want ({self.n},)")
      _check(arr.dtype == np.int32, f"categorical feature {name!r} has dtype {arr.dtype}, want int32")
      _check(name in self.vocab, f"categorical feature {name!r} has no vocab")
      _check(self.vocab[name][0] == UNKNOWN, f"vocab of {name!r} must start with {UNKNOWN!r}")
      if self.n:
        _check(
          arr.min() >= 0 and arr.max() < len(self.vocab[name]),
          f"categorical feature {name!r} has ids outside its vocab of {len(self.vocab[name])}",
        )
    for name, arr in self.multi_hot.items():
      _check(arr.ndim == 2 and arr.shape[0] == self.n, f"multi_hot {name!r} has shape {arr.shape}, want ({self.n}, V)")
      _check(arr.dtype == np.float32, f"multi_hot {name!r} has dtype {arr.dtype}, want float32")
      _check(len(self.vocab.get(name, ())) == arr.shape[1], f"multi_hot {name!r} vocab length != {arr.shape[1]}")
    for name, arr in self.dense.items():
      _check(arr.ndim == 2 and arr.shape[0] == self.n, f"dense {name!r} has shape {arr.shape}, want ({self.n}, D)")
      _check(arr.dtype == np.float32, f"dense {name!r} has dtype {arr.dtype}, want float32")
      _check(bool(np.isfinite(arr).all()), f"dense {name!r} has non-finite values")
    for name, arr in self.text.items():
      _check(arr.shape == (self.n,), f"text {name!r} has shape {arr.shape}, want ({self.n},)")

  # Stacked views, in sorted-name order: what task batches and models consume.
  def cat_matrix(self) -> np.ndarray:
    """int32 [n, F]: all categorical features side by side (F may be 0)."""
    cols = [self.categorical[k] for k in self.categorical]
    return np.stack(cols, axis=1) if cols else np.zeros((self.n, 0), np.int32)

  def cat_sizes(self) -> tuple[int, ...]:
    return tuple(len(self.vocab[k]) for k in self.categorical)

  def multi_matrix(self) -> np.ndarray:
    """float32 [n, sum V]: all multi-hot features concatenated (width may be 0)."""
    cols = list(self.multi_hot.values())
    return np.concatenate(cols, axis=1) if cols else np.zeros((self.n, 0), np.float32)

  def dense_matrix(self) -> np.ndarray:
    """float32 [n, sum D]: all dense features concatenated (width may be 0)."""
    cols = list(self.dense.values())
    return np.concatenate(cols, axis=1) if cols else np.zeros((self.n, 0), np.float32)


def _check(ok: bool, msg: str) -> None:
  if not ok:
    raise DataError(msg)


def _check_domains(name: str, domain: np.ndarray | None, domains: tuple[str, ...] | None, n: int) -> None:
  """`domain` and `domains` are both None, or int8 [n] ids into >= 2 distinct names."""
  _check((domain is None) == (domains is None), f"{name}: domain and domains must be given together (or neither)")
  if domain is None:
    return
  _check(
    isinstance(domains, tuple) and len(domains) >= 2 and all(isinstance(d, str) and d for d in domains),
    f"{name}: domains must be a tuple of >= 2 non-empty names, got {domains!r}",
  )
  _check(len(set(domains)) == len(domains), f"{name}: domain names repeat: {domains!r}")
  _check(
    domain.shape == (n,) and domain.dtype == np.int8,
    f"{name}: domain must be int8 [{n}], got {domain.dtype} {domain.shape}",
  )
  if n:
    bad = np.flatnonzero((domain < 0) | (domain >= len(domains)))
    _check(bad.size == 0, f"{name}: domain ids outside [0, {len(domains)}) at rows {bad[:5].tolist()}")


@dataclasses.dataclass(frozen=True)
class Interactions:
  """Ratings with user/item side features. N interactions, U users, I items."""

  name: str
  user: np.ndarray  # int32 [N], dense id in [0, U)
  item: np.ndarray  # int32 [N], dense id in [0, I)
  rating: np.ndarray  # float32 [N], finite, inside rating_scale
  timestamp: np.ndarray  # int64 [N]
  user_features: FeatureTable  # n = U
  item_features: FeatureTable  # n = I
  user_raw_ids: np.ndarray  # object [U]: the source's id of dense user u
  item_raw_ids: np.ndarray  # object [I]
  rating_scale: tuple[float, float] = (1.0, 5.0)
  item_year: np.ndarray | None = None  # int32 [I] release year, -1 where unknown (None: no years)
  # Domains (`transfer_meta.data.domains`): None = one domain; else domain[n] indexes `domains` (names).
  domain: np.ndarray | None = None  # int8 [N], in [0, len(domains))
  domains: tuple[str, ...] | None = None  # distinct names, >= 2

  def __post_init__(self):
    n = self.user.shape[0]
    for field, dtype in (("user", np.int32), ("item", np.int32), ("rating", np.float32), ("timestamp", np.int64)):
      arr = getattr(self, field)
      _check(arr.shape == (n,), f"{self.name}: {field} has shape {arr.shape}, want ({n},)")
      _check(arr.dtype == dtype, f"{self.name}: {field} has dtype {arr.dtype}, want {np.dtype(dtype)}")
    U, I = self.n_users, self.n_items
    _check(self.user_raw_ids.shape == (U,), f"{self.name}: user_raw_ids has {self.user_raw_ids.shape}, want ({U},)")
    _check(self.item_raw_ids.shape == (I,), f"{self.name}: item_raw_ids has {self.item_raw_ids.shape}, want ({I},)")
    if n:
      _check(self.user.min() >= 0 and self.user.max() < U, f"{self.name}: user ids outside [0, {U})")
      _check(self.item.min() >= 0 and self.item.max() < I, f"{self.name}: item ids outside [0, {I})")
      bad = np.flatnonzero(~np.isfinite(self.rating))
      _check(bad.size == 0, f"{self.name}: non-finite rating at interaction rows {bad[:5].tolist()}")
      lo, hi = self.rating_scale
      bad = np.flatnonzero((self.rating < lo) | (self.rating > hi))
      _check(bad.size == 0, f"{self.name}: rating outside {self.rating_scale} at rows {bad[:5].tolist()}")
      key = self.user.astype(np.int64) * I + self.item
      uniq, counts = np.unique(key, return_counts=True)
      dup = uniq[counts > 1]
      _check(
        dup.size == 0,
        f"{self.name}: duplicate (user, item) pairs, e.g. dense ids "
        f"{[(int(k // I), int(k % I)) for k in dup[:3]]}; loaders must resolve duplicates",
      )
    if self.item_year is not None:
      _check(
        self.item_year.shape == (I,) and self.item_year.dtype == np.int32, f"{self.name}: item_year must be int32 [{I}]"
      )
    _check_domains(self.name, self.domain, self.domains, n)

  @property
  def n_users(self) -> int:
    return self.user_features.n

  @property
  def n_items(self) -> int:
    return self.item_features.n

  def __len__(self) -> int:
    return int(self.user.shape[0])

  def user_counts(self) -> np.ndarray:
    """int64 [U]: ratings per user."""
    return np.bincount(self.user, minlength=self.n_users)

  def item_counts(self) -> np.ndarray:
    """int64 [I]: ratings per item."""
    return np.bincount(self.item, minlength=self.n_items)

  def summary(self) -> str:
    return (
      f"{self.name}: {len(self)} ratings, {self.n_users} users, {self.n_items} items, "
      f"user features {list(self.user_features.categorical) + list(self.user_features.multi_hot)}, "
      f"item features {list(self.item_features.categorical) + list(self.item_features.multi_hot)}"
    )
