"""Item cold start: each item is a task; its support is K users who rated it, its query the rest.

Items are new when released after `year_cutoff` (`new_by='year'`) or, for data without years, a seeded
random `new_fraction` of all items (`new_by='random'`). Each item's ratings are shuffled: the first
`n_support` (K) are the support, the next up to `max_query` the query (rows past the cap are unused);
an item needs `n_support + min_query` ratings, else it is excluded and counted. Existing items with
enough ratings are split at random into 'train' and 'valid' (`valid_fraction`); scenario 'new_item' is
the new items. Users are not held out: item cold start assumes known users.
"""

from __future__ import annotations

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.split import ColdStartSplit

NAME = "item_cold"
VERSION = "1.0"
SCENARIOS = ("new_item",)
METRICS = ("mae", "rmse", "auc")


def item_cold(
  data: Interactions,
  seed: int = 0,
  *,
  new_by: str = "year",
  year_cutoff: int | None = None,
  new_fraction: float | None = None,
  n_support: int = 10,
  min_query: int = 5,
  max_query: int = 50,
  valid_fraction: float = 0.1,
) -> ColdStartSplit:
  """Builds the item-cold-start split (see the module docstring).

  Args:
    data: interactions (with `item_year` when new_by='year').
    seed: the split's seed.
    new_by: 'year' (new = release year > year_cutoff; None: dataset default, see `common.resolve_year_cutoff`)
      or 'random' (a `new_fraction` of the items, seeded; default 0.2). Each needs only its own parameter.
    n_support: K, support users per item; min_query, max_query: bounds on the query size.
    valid_fraction: share of the usable existing items in 'valid'.
  Returns:
    ColdStartSplit with task_kind 'item' and sets 'train', 'valid', 'new_item'; target = rating.
  """
  seed = common.check_int("seed", seed, 0)
  new_by = common.check_choice("new_by", new_by, ("year", "random"))
  n_support = common.check_int("n_support", n_support, 1)
  min_query, max_query = common.check_int("min_query", min_query, 1), common.check_int("max_query", max_query, 1)
  if min_query > max_query:
    raise ValueError(f"parameter min_query={min_query} must be <= max_query={max_query}")
  valid_fraction = common.check_fraction("valid_fraction", valid_fraction)
  params = {
    "new_by": new_by,
    "n_support": n_support,
    "min_query": min_query,
    "max_query": max_query,
    "valid_fraction": valid_fraction,
    "relevance": "threshold:4",
  }
  if new_by == "year":
    if new_fraction is not None:
      raise ValueError(f"parameter new_fraction={new_fraction} has no effect with new_by='year'")
    cutoff, source = common.resolve_year_cutoff(data, year_cutoff)
    item_new = data.item_year > cutoff
    params.update(
      year_cutoff=cutoff, year_cutoff_source=source, items_unknown_year_counted_existing=int((data.item_year < 0).sum())
    )
  else:
    if year_cutoff is not None:
      raise ValueError(f"parameter year_cutoff={year_cutoff} has no effect with new_by='random'")
    new_fraction = common.check_fraction("new_fraction", 0.2 if new_fraction is None else new_fraction)
    n_new = int(round(new_fraction * data.n_items))
    item_new = np.zeros(data.n_items, bool)
    item_new[common.stream(seed, "new_items").choice(data.n_items, n_new, replace=False)] = True
    params.update(new_fraction=new_fraction)
  params.update(items_new=int(item_new.sum()), items_existing=int((~item_new).sum()))

  def tasks(stage, is_new):
    ids = np.flatnonzero(item_new == is_new)
    rows = np.flatnonzero(item_new[data.item] == is_new)
    return common.make_tasks(
      ids,
      rows,
      data.item[rows],
      common.stream(seed, stage),
      head=n_support,
      min_tail=min_query,
      max_tail=max_query,
      head_is="support",
    )

  existing, excluded_existing = tasks("existing", False)
  new, excluded_new = tasks("new_item", True)
  n_valid = int(round(valid_fraction * len(existing)))
  if n_valid < 1 or n_valid >= len(existing):
    raise DataError(
      f"{NAME}: {len(existing)} usable existing items cannot be split into train and valid "
      f"(parameters {params}, existing items excluded: {excluded_existing})"
    )
  perm = common.stream(seed, "valid").permutation(len(existing))
  sets = {
    "train": existing.subset(np.sort(perm[n_valid:])),
    "valid": existing.subset(np.sort(perm[:n_valid])),
    "new_item": new,
  }
  excluded = {"train/valid": excluded_existing, "new_item": excluded_new}
  common.require_tasks(NAME, sets, params, excluded)
  return ColdStartSplit(
    protocol=NAME,
    version=VERSION,
    seed=seed,
    params=params,
    task_kind="item",
    tasks=sets,
    scenarios=SCENARIOS,
    target=data.rating.astype(np.float32),
    metrics=METRICS,
    excluded=excluded,
  )
