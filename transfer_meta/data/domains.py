"""Domains of interactions: which rows belong to which domain, and the users/items two domains share.

A domain is a label per interaction row. It comes either from the data (`Interactions.domain` int8 [N] with
names `Interactions.domains`, e.g. two datasets merged into one `Interactions`, `with_domains`) or from a
protocol rule (`genre_domains`: an item's first listed genre picks its domain). Either way the result is a row
domain `int8 [N]` with -1 for rows in no domain, and ids stay shared: a user (item) has ONE dense id in every
domain, so the map between the domains' overlapping users (items) is the identity on `shared(...)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions

NO_DOMAIN = -1  # row domain of an interaction that belongs to no domain (never read by a cross-domain split)


def with_domains(data: Interactions, domain: np.ndarray, names: Sequence[str]) -> Interactions:
  """`data` with a domain per interaction.

  Args:
    data: the interactions.
    domain: int [N] ids into `names` (every row in some domain).
    names: >= 2 distinct domain names.
  Returns:
    A copy of `data` with `domain` int8 [N] and `domains` tuple(names) (validated by `Interactions`).
  """
  return dataclasses.replace(data, domain=np.asarray(domain).astype(np.int8), domains=tuple(names))


def genre_domains(
  data: Interactions, groups: Sequence[Sequence[str]], feature: str = "genre"
) -> tuple[np.ndarray, np.ndarray]:
  """Assigns every item to the group holding its FIRST listed genre (first set column of multi-hot `feature`).

  The first listed genre is the first 1 of the item's row in the feature's column (vocabulary) order; for the
  MovieLens files this is also the order the files list an item's genres in (both list them alphabetically).

  Args:
    data: interactions with multi-hot item feature `feature`.
    groups: G disjoint, non-empty lists of genre names (vocabulary entries), one per domain.
  Returns:
    (item_domain int8 [I]: the group index, NO_DOMAIN when the item has no genre or its first genre is in no
    group; first_genre int32 [I]: the column index of the first genre, -1 when none).
  Raises:
    DataError: the feature is missing; ValueError: a genre is unknown, repeated across groups, or a group is empty.
  """
  if feature not in data.item_features.multi_hot:
    raise DataError(f"{data.name}: no multi-hot item feature {feature!r}; have {sorted(data.item_features.multi_hot)}")
  vocab = data.item_features.vocab[feature]
  column = {g: j for j, g in enumerate(vocab)}
  seen: dict[str, int] = {}
  for d, group in enumerate(groups):
    if isinstance(group, str) or len(group) == 0:
      raise ValueError(f"genre group {d} must be a non-empty list of genre names, got {group!r}")
    for g in group:
      if g not in column:
        raise ValueError(f"genre {g!r} (group {d}) is not in the {feature!r} vocabulary {list(vocab)}")
      if g in seen:
        raise ValueError(f"genre {g!r} is in groups {seen[g]} and {d}; groups must be disjoint")
      seen[g] = d
  hot = data.item_features.multi_hot[feature] > 0
  first = np.where(hot.any(axis=1), hot.argmax(axis=1), -1).astype(np.int32)
  group_of_column = np.full(len(vocab) + 1, NO_DOMAIN, np.int8)  # last slot: items with no genre (first = -1)
  for g, d in seen.items():
    group_of_column[column[g]] = d
  return group_of_column[first], first


def row_domain_of(data: Interactions) -> np.ndarray:
  """int8 [N]: the data's own row domains (`Interactions.domain`); DataError when it has none."""
  if data.domain is None:
    raise DataError(f"{data.name}: the interactions carry no domains (Interactions.domain is None)")
  return data.domain


def shared(ids: np.ndarray, row_domain: np.ndarray, n: int, a: int = 0, b: int = 1) -> np.ndarray:
  """int32 [k] ascending: the entities (users or items, `ids` [N] per row, in [0, n)) with rows in domains a and b."""
  in_a = np.bincount(ids[row_domain == a], minlength=n) > 0
  in_b = np.bincount(ids[row_domain == b], minlength=n) > 0
  return np.flatnonzero(in_a & in_b).astype(np.int32)


def counts_in(ids: np.ndarray, row_domain: np.ndarray, n: int, d: int) -> np.ndarray:
  """int64 [n]: rows of each entity in domain d."""
  return np.bincount(ids[row_domain == d], minlength=n)
