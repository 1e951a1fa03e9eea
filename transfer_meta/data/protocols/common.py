"""Small pure numpy pieces the protocols are built from: checks, seeded streams, eligibility, splits.

Every random choice draws from a stream named after its stage (`stream(seed, "warm")`), so changing
one stage (say, `n_query`) never shifts the draws of another (say, which users are new).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.split import TaskSet

# Release-year cutoffs (new item = year > cutoff) for datasets whose papers fix one; matched by name prefix.
#   MovieLens-100K was collected 1997-98, so its newest films are 1997-98 (288 of 1682): cutoff 1996.
#   MeLU (Lee et al., KDD'19, Sec. 4.1) on MovieLens-1M: films released "before 1997" are existing and "after
#   1998" new: cutoff 1998, and `EXISTING_UNTIL` leaves 1997-98 films in neither group (see the melu protocol).
YEAR_CUTOFFS = (("ml-100k", 1996), ("movielens/100k", 1996), ("ml-1m", 1998), ("movielens/1m", 1998))
# Last release year of an existing item, where a paper leaves a gap before its new items (default: the cutoff).
EXISTING_UNTIL = (("ml-1m", 1996), ("movielens/1m", 1996))
# Without a known cutoff, aim for this share of new items (MeLU's ~8:2).
NEW_ITEM_SHARE = 0.2


def check_int(name: str, value, minimum: int) -> int:
  """`value` as an int >= `minimum`, else ValueError naming the parameter."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"parameter {name}={value!r} must be an integer >= {minimum}")
  return int(value)


def check_fraction(name: str, value) -> float:
  """`value` as a float strictly inside (0, 1), else ValueError naming the parameter."""
  if isinstance(value, bool) or not isinstance(value, float | int | np.floating) or not 0.0 < value < 1.0:
    raise ValueError(f"parameter {name}={value!r} must be a fraction strictly between 0 and 1")
  return float(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
  if value not in choices:
    raise ValueError(f"parameter {name}={value!r} must be one of {list(choices)}")
  return value


def stream(seed: int, stage: str) -> np.random.Generator:
  """The random stream of one protocol stage: a pure function of (seed, stage name)."""
  check_int("seed", seed, 0)
  return np.random.default_rng([int(seed), zlib.crc32(stage.encode())])


def eligible_users(data: Interactions, min_ratings: int, max_ratings: int) -> tuple[np.ndarray, dict]:
  """Users with `min_ratings..max_ratings` ratings (inclusive).

  Returns:
    users: int32 [n] ascending dense user ids.
    excluded: {reason: count} for every user left out (users with no ratings at all included).
  """
  counts = data.user_counts()
  ok = (counts >= min_ratings) & (counts <= max_ratings)
  excluded = {
    f"fewer than {min_ratings} ratings": int((counts < min_ratings).sum()),
    f"more than {max_ratings} ratings": int((counts > max_ratings).sum()),
  }
  return np.flatnonzero(ok).astype(np.int32), excluded


def _dataset_default(data: Interactions, table) -> tuple[int, str] | None:
  name = data.name.lower().removeprefix("tfds:")
  for prefix, year in table:
    if name.startswith(prefix):
      return year, prefix
  return None


def resolve_year_cutoff(data: Interactions, year_cutoff: int | None) -> tuple[int, str]:
  """The release-year cutoff (new item = year > cutoff) and where it came from.

  Order: the given value; the dataset's default (`YEAR_CUTOFFS`, by name prefix); else the year that
  leaves the share of new items (among those with a known year) closest to `NEW_ITEM_SHARE` (earlier
  year on a tie). Unknown years (-1) never count as new.
  """
  if data.item_year is None:
    raise DataError(f"{data.name}: item release years are needed (item_year is None); use a source with years")
  if year_cutoff is not None:
    return check_int("year_cutoff", year_cutoff, 0), "given"
  default = _dataset_default(data, YEAR_CUTOFFS)
  if default is not None:
    return default[0], f"default for {default[1]}"
  known = data.item_year[data.item_year >= 0]
  if known.size == 0:
    raise DataError(f"{data.name}: no item has a known release year; pass year_cutoff or use new_by='random'")
  years, counts = np.unique(known, return_counts=True)
  share_new = 1.0 - np.cumsum(counts) / known.size  # share of dated items released after years[j]
  cutoff = int(years[np.argmin(np.abs(share_new - NEW_ITEM_SHARE))])
  return cutoff, f"year leaving the share of new dated items closest to {NEW_ITEM_SHARE}"


def resolve_existing_until(data: Interactions, existing_until: int | None, year_cutoff: int, given: bool) -> int:
  """The last release year of an existing item (existing = year <= it; unknown years count existing).

  Order: the given value; the dataset's default (`EXISTING_UNTIL`) when the cutoff is not given either;
  else `year_cutoff` (no gap). Items released in (existing_until, year_cutoff] are in neither group.

  Raises:
    ValueError: when `existing_until` is above `year_cutoff`.
  """
  if existing_until is None:
    default = None if given else _dataset_default(data, EXISTING_UNTIL)
    existing_until = year_cutoff if default is None else default[0]
  existing_until = check_int("existing_until", existing_until, 0)
  if existing_until > year_cutoff:
    raise ValueError(f"parameter existing_until={existing_until} must be <= year_cutoff={year_cutoff}")
  return existing_until


def permuted_chunks(ids: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
  """Splits `ids` at random into chunks of the given `sizes` (summing to len(ids)); each chunk sorted."""
  assert sum(sizes) == len(ids), (sizes, len(ids))
  perm = np.asarray(ids)[rng.permutation(len(ids))]
  bounds = np.cumsum([0, *sizes])
  return [np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def make_tasks(
  task_ids: np.ndarray,
  rows: np.ndarray,
  keys: np.ndarray,
  rng: np.random.Generator,
  *,
  head: int,
  min_tail: int,
  max_tail: int | None = None,
  head_is: str = "query",
) -> tuple[TaskSet, dict]:
  """Groups candidate `rows` into tasks and cuts each task into a random head and tail.

  Each task's rows are shuffled; the first `head` form one part ('query' or 'support', per `head_is`) and
  the next up to `max_tail` (all when None) the other. A task with fewer than `head + min_tail` rows is
  excluded and counted. Support rows stay in random order (so `TaskSet.cap_support` is a random subset).

  Args:
    task_ids: int [T] ascending ids of the intended tasks (users or items).
    rows: int [n] candidate interaction rows; keys: int [n] the task id of each row (all in `task_ids`).
    rng: the stage's stream. head, min_tail, max_tail: sizes as above.
    head_is: 'query' (user tasks: fixed query) or 'support' (item tasks: K-shot support).
  Returns:
    (TaskSet of the kept tasks in ascending id order, {reason: count} of the excluded tasks).
  """
  assert head_is in ("query", "support"), head_is
  task_ids = np.asarray(task_ids, np.int64)
  rows, keys = np.asarray(rows, np.int64), np.asarray(keys, np.int64)
  order = np.lexsort((rng.random(rows.shape[0]), keys))
  rows, keys = rows[order], keys[order]
  slot = np.searchsorted(task_ids, keys)
  assert np.all(slot < len(task_ids)) and np.all(task_ids[slot] == keys), "rows of tasks outside task_ids"
  counts = np.bincount(slot, minlength=len(task_ids))
  need = head + min_tail
  keep = counts >= need
  pos = np.arange(rows.shape[0]) - np.concatenate([[0], np.cumsum(counts)])[slot]
  n_tail = (counts - head if max_tail is None else np.minimum(counts - head, max_tail))[keep]
  head_mask = keep[slot] & (pos < head)
  tail_mask = keep[slot] & (pos >= head) & (max_tail is None or pos < head + max_tail)
  n_head = np.full(int(keep.sum()), head, np.int64)
  ptr = lambda n: np.concatenate([[0], np.cumsum(n)]).astype(np.int64)  # noqa: E731
  head_part, tail_part = (ptr(n_head), rows[head_mask]), (ptr(n_tail), rows[tail_mask])
  support, query = (tail_part, head_part) if head_is == "query" else (head_part, tail_part)
  tasks = TaskSet(task_ids[keep].astype(np.int32), *support, *query)
  excluded = {"no ratings": int((counts == 0).sum()), f"fewer than {need} ratings": int(((counts > 0) & ~keep).sum())}
  return tasks, excluded


def require_tasks(protocol: str, tasks: Mapping[str, TaskSet], params: Mapping, excluded: Mapping) -> None:
  """DataError naming the first empty task set, the parameters, and why its tasks were excluded."""
  for name, ts in tasks.items():
    if len(ts) == 0:
      raise DataError(
        f"{protocol}: task set {name!r} has zero tasks (excluded: {dict(excluded.get(name, {}))}) "
        f"with parameters {dict(params)}; loosen the parameters or use a larger dataset"
      )


# Warn below this many tasks in any task set (`make_protocol(min_tasks=...)`, `config.min_tasks`).
MIN_TASKS = 20


def few_task_hint(name: str, params: Mapping) -> str:
  """How to get more tasks into task set `name`, in terms of the protocol parameters that shape it."""
  hints = []
  if "new_item" in name and "year_cutoff" in params:
    hints.append(
      f"lower protocol.year_cutoff (now {params['year_cutoff']}, {params.get('year_cutoff_source', 'given')}; "
      "items released after it are new)"
    )
  if "new_item" in name and "new_fraction" in params:
    hints.append("raise protocol.new_fraction (or lower year_cutoff with new_by='year')")
  if "new_user" in name and "new_user_fraction" in params:
    hints.append(f"raise protocol.new_user_fraction (now {params['new_user_fraction']})")
  if name == "valid" and "valid_fraction" in params:
    hints.append(f"raise protocol.valid_fraction (now {params['valid_fraction']})")
  if name in ("valid", "test") and "ratios" in params:
    hints.append(f"change protocol.ratios (now {params['ratios']})")
  if "min_ratings" in params:
    hints.append(f"widen protocol.min_ratings..max_ratings (now {params['min_ratings']}..{params['max_ratings']})")
  for key in ("n_query", "min_support", "n_support", "min_query"):
    if key in params:
      hints.append(f"lower protocol.{key} (now {params[key]})")
  return "; ".join(hints) or "use a larger dataset"


def warn_few_tasks(split, min_tasks: int) -> list[str]:
  """Warns (UserWarning) for each task set of `split` with fewer than `min_tasks` tasks, saying how to fix it.

  Args:
    split: a `ColdStartSplit`.
    min_tasks: the floor; 0 disables the check.
  Returns:
    The warning messages (one per small set), also issued through `warnings.warn`.
  """
  check_int("min_tasks", min_tasks, 0)
  out = []
  for name, ts in split.tasks.items():
    if len(ts) < min_tasks:
      msg = (
        f"{split.protocol} seed {split.seed}: task set {name!r} has only {len(ts)} tasks (< min_tasks={min_tasks}), "
        f"so its metrics are noisy; to get more: {few_task_hint(name, split.params)}; "
        f"excluded: {dict(split.excluded.get(name, {}))}. Set min_tasks=0 (--config.min_tasks=0) to silence this."
      )
      warnings.warn(msg, UserWarning, stacklevel=3)
      out.append(msg)
  return out
