"""Reference baselines: predictors computed from a split with no learning, scored with the protocol's metrics.

Every learner's table should beat these; a cold-start method that does not beat `item_user_offset` has learned
nothing a few averages do not already know. "Training rows" are all rows of `split.tasks['train']` (support
and query); mu is their mean target; `lam` (default 5) shrinks every mean toward its prior.

  random            uniform scores in the target scale (the rating scale; [0, 1] in a click setting), seeded.
  constant          the midpoint of the target scale for every item: all scores tie, so every ranking metric
                    is exactly its random-ranking expectation (`metrics` breaks ties by expectation).
  global_mean       mu for every item (also all tied).
  item_mean         per item, (sum of its training targets + lam * mu) / (its training count + lam);
                    an item with no training rows (a new item) gets mu.
  item_user_offset  item_mean + the task user's offset: the sum of the user's support residuals
                    (target - item_mean) / (support size + lam).
  popularity        the item's number of training rows, mapped linearly onto the target scale (max count -> top
                    of the scale). A ranker, the strongest non-personalised one over a full catalogue; its
                    scores are not ratings, so `evaluate_baselines` reports no MAE/RMSE for it (`RANKERS`).

Cross-domain splits (`data.cross_domain`) add two that read the SOURCE rows (`split.source_rows`; every other
scorer above is target-only, fit on the target training rows): with mu_s the source mean, the source item mean
(shrunk toward mu_s; mu_s for an item without source rows) and the user's source offset (the sum of the user's
source residuals from the source item means / (their count + lam); 0 for a user without source rows),
  source_item_user_offset   source item mean + source user offset: source-only (no target row read); on a
                            genre split, where items are in one domain, it is the user's shrunk source mean.
  item_mean_source_offset   target item_mean + source user offset: the reference scorer with the user's offset
                            measured in the source domain instead of on the support (works zero-shot).
  source_item_support_offset  source item mean + the task user's SUPPORT offset against the source item means
                            (the sum of (target - source item mean) over the support / (support size + lam)):
                            `item_user_offset` with the item means read from the source. For item overlap
                            (`ml1m_to_ml100k`: a cold user has no source row, so the source user offset above is
                            0); on a genre split, where a target item has no source row, it is mu_s + offset.

`catalogue_scores` gives the same scorers for EVERY catalogue entry of a task (full-catalogue ranking,
`transfer_meta.ranking_eval`); at a task's query entries they equal `baseline_scores`, except 'random', which
draws per task (seeded by the task id) so a task's draw does not depend on its batch.

User-as-task splits (task_kind 'user') read the definitions as written. Item-as-task splits (task_kind
'item', e.g. `item_cold`) use the symmetric ones, since a new item has no training rows but its support
holds its ratings: `item_mean` is then the mean of the query USER over training rows, and
`item_user_offset` adds the task ITEM's offset from its support residuals. The names stay so one table can
hold both kinds; `ROLES` documents this and the experiment tables carry it as a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from transfer_meta import metrics as metrics_lib
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.split import ColdStartSplit, TaskSet
from transfer_meta.data.tasks import bucket
from transfer_meta.registry import lookup

ROLES = {
  "user": "item_mean = item mean over training rows; offset = the task user's support residual",
  "item": "item_mean = the query user's mean over training rows; offset = the task item's support residual",
}


def target_scale(data: Interactions, split: ColdStartSplit) -> tuple[float, float]:
  """(low, high) of the split's target: [0, 1] in a click setting, else the data's rating scale."""
  return (0.0, 1.0) if split.params.get("setting") == "click" else tuple(map(float, data.rating_scale))


def _query_side(data: Interactions, split: ColdStartSplit) -> np.ndarray:
  """int32 [N]: per row, the entity that varies within a task (item for user tasks, user for item tasks)."""
  return data.item if split.task_kind == "user" else data.user


def _shrunk_means(keys: np.ndarray, values: np.ndarray, n: int, prior: float, lam: float) -> np.ndarray:
  """f32 [n]: (sum of values + lam * prior) / (count + lam) per key in [0, n)."""
  sums = np.bincount(keys, weights=values, minlength=n)
  counts = np.bincount(keys, minlength=n)
  return ((sums + lam * prior) / (counts + lam)).astype(np.float32)


def global_mean(split: ColdStartSplit) -> float:
  """The mean target over the split's training rows (every reference's value for an entity with no rows)."""
  return float(split.target[split.tasks["train"].all_rows()].mean())


def _n_query_side(data: Interactions, split: ColdStartSplit) -> int:
  return data.n_items if split.task_kind == "user" else data.n_users


def _entity_means(data: Interactions, split: ColdStartSplit, lam: float) -> np.ndarray:
  """f32 [n]: the shrunk training mean of every query-side entity."""
  side, train = _query_side(data, split), split.tasks["train"].all_rows()
  n = _n_query_side(data, split)
  return _shrunk_means(side[train], split.target[train].astype(np.float64), n, global_mean(split), lam)


def _entity_mean_rows(data: Interactions, split: ColdStartSplit, rows: np.ndarray, lam: float) -> np.ndarray:
  """f32 [len(rows)]: the shrunk training mean of each row's query-side entity."""
  return _entity_means(data, split, lam)[_query_side(data, split)[rows]]


def train_counts(data: Interactions, split: ColdStartSplit) -> np.ndarray:
  """int64 [n]: training rows of every query-side entity (items for user tasks, users for item tasks)."""
  return np.bincount(_query_side(data, split)[split.tasks["train"].all_rows()], minlength=_n_query_side(data, split))


def _popularity_scores(data: Interactions, split: ColdStartSplit) -> np.ndarray:
  """f32 [n]: training counts mapped linearly onto the target scale (0 -> low, the largest count -> high)."""
  low, high = target_scale(data, split)
  counts = train_counts(data, split).astype(np.float64)
  return (low + (high - low) * counts / max(counts.max(), 1.0)).astype(np.float32)


def _task_offsets(
  data: Interactions, split: ColdStartSplit, taskset: TaskSet, lam: float, means: np.ndarray | None = None
) -> np.ndarray:
  """f32 [T]: each task's support residual over the entity means, shrunk: sum(residual) / (support size + lam).
  `means` f32 [n] replaces the target training means of the query-side entities (the source item means)."""
  rows = taskset.support_rows
  prior = _entity_mean_rows(data, split, rows, lam) if means is None else means[_query_side(data, split)[rows]]
  residual = split.target[rows] - prior
  sizes = taskset.support_sizes()
  task_of_row = np.repeat(np.arange(len(taskset)), sizes)
  return np.bincount(task_of_row, weights=residual, minlength=len(taskset)) / (sizes + lam)


def _random(data, split, taskset, seed, lam):
  low, high = target_scale(data, split)
  return np.random.default_rng(seed).uniform(low, high, taskset.query_rows.shape[0]).astype(np.float32)


def _constant(data, split, taskset, seed, lam):
  low, high = target_scale(data, split)
  return np.full(taskset.query_rows.shape[0], (low + high) / 2, np.float32)


def _global(data, split, taskset, seed, lam):
  return np.full(taskset.query_rows.shape[0], global_mean(split), np.float32)


def _item_mean(data, split, taskset, seed, lam):
  return _entity_mean_rows(data, split, taskset.query_rows, lam)


def _item_user_offset(data, split, taskset, seed, lam):
  offset = _task_offsets(data, split, taskset, lam)
  return (_item_mean(data, split, taskset, seed, lam) + np.repeat(offset, taskset.query_sizes())).astype(np.float32)


def _popularity(data, split, taskset, seed, lam):
  return _popularity_scores(data, split)[_query_side(data, split)[taskset.query_rows]]


def _source_parts(data: Interactions, split: ColdStartSplit, lam: float) -> tuple[np.ndarray, np.ndarray]:
  """(source item means f32 [I], source user offsets f64 [U]) of a cross-domain split (module docstring)."""
  from transfer_meta.data.cross_domain import require_cross_domain  # noqa: PLC0415 (cross_domain imports split)

  rows = require_cross_domain(split, "the source baselines").source_rows
  if split.task_kind != "user":
    raise ValueError(f"the source baselines need user tasks, got task_kind {split.task_kind!r}")
  target = split.target[rows].astype(np.float64)
  mu_s = float(target.mean()) if rows.size else global_mean(split)
  item_means = _shrunk_means(data.item[rows], target, data.n_items, mu_s, lam)
  residual = target - item_means[data.item[rows]]
  sums = np.bincount(data.user[rows], weights=residual, minlength=data.n_users)
  return item_means, sums / (np.bincount(data.user[rows], minlength=data.n_users) + lam)


def _source_offsets_of_queries(data, split, taskset, lam) -> tuple[np.ndarray, np.ndarray]:
  items, offsets = _source_parts(data, split, lam)
  return items, np.repeat(offsets[taskset.task_ids], taskset.query_sizes())


def _source_item_user_offset(data, split, taskset, seed, lam):
  items, offsets = _source_offsets_of_queries(data, split, taskset, lam)
  return (items[data.item[taskset.query_rows]] + offsets).astype(np.float32)


def _item_mean_source_offset(data, split, taskset, seed, lam):
  _, offsets = _source_offsets_of_queries(data, split, taskset, lam)
  return (_item_mean(data, split, taskset, seed, lam) + offsets).astype(np.float32)


def _source_item_support_offset(data, split, taskset, seed, lam):
  items, _ = _source_parts(data, split, lam)
  offset = _task_offsets(data, split, taskset, lam, means=items)
  return (items[data.item[taskset.query_rows]] + np.repeat(offset, taskset.query_sizes())).astype(np.float32)


def reference_prior(kind: str, data: Interactions, split: ColdStartSplit, lam: float = 5.0) -> np.ndarray:
  """f32 [N]: per interaction row, the reference score a residual model starts from (`models/residual.py`).

  'global_mean': mu for every row. 'item_mean' / 'item_user_offset': the row's shrunk item mean over training
  rows (the query user's mean for item tasks, as in `item_mean`); a training row's own target is left out of
  its mean (leave-one-out), so training tasks see the reference as a new user's rows do. The support offset
  of 'item_user_offset' is added per task by the model, from the support alone.
  """
  if kind == "global_mean":
    return np.full(len(data), global_mean(split), np.float32)
  side = _query_side(data, split)
  prior = entity_prior(kind, data, split, lam)[side].astype(np.float64)
  train = np.unique(split.tasks["train"].all_rows())
  n = _n_query_side(data, split)
  target, mu = split.target.astype(np.float64), global_mean(split)
  sums = np.bincount(side[train], weights=target[train], minlength=n)
  counts = np.bincount(side[train], minlength=n).astype(np.float64)
  loo_den = counts[side[train]] - 1 + lam
  loo = np.where(loo_den > 0, (sums[side[train]] - target[train] + lam * mu) / np.maximum(loo_den, 1e-12), mu)
  prior[train] = loo
  return prior.astype(np.float32)


def entity_prior(kind: str, data: Interactions, split: ColdStartSplit, lam: float = 5.0) -> np.ndarray:
  """f32 [n]: the reference prior of a row outside the training rows, per query-side entity (items for user
  tasks): mu for 'global_mean', else the shrunk training mean. What serving adds to a new user's scores."""
  if kind == "global_mean":
    return np.full(_n_query_side(data, split), global_mean(split), np.float32)
  if kind not in ("item_mean", "item_user_offset"):
    raise ValueError(f"unknown reference {kind!r}; valid: ['global_mean', 'item_mean', 'item_user_offset']")
  if lam < 0:
    raise ValueError(f"parameter lam={lam} must be >= 0")
  return _entity_means(data, split, lam)  # the same means the item_mean / item_user_offset baselines score


# name -> fn(data, split, taskset, seed, lam) -> f32 [sum of query sizes], aligned with taskset.query_rows.
BASELINES: dict[str, Callable] = {
  "random": _random,
  "constant": _constant,
  "global_mean": _global,
  "item_mean": _item_mean,
  "item_user_offset": _item_user_offset,
  "popularity": _popularity,
  "source_item_user_offset": _source_item_user_offset,  # cross-domain splits only
  "item_mean_source_offset": _item_mean_source_offset,  # cross-domain splits only
  "source_item_support_offset": _source_item_support_offset,  # cross-domain splits only
}


def _catalogue_random(data, split, taskset, positions, seed, lam):
  low, high = target_scale(data, split)
  n = _n_query_side(data, split)
  rows = [np.random.default_rng([seed, int(taskset.task_ids[p])]).uniform(low, high, n) for p in positions]
  return np.stack(rows).astype(np.float32)


def _catalogue_full(fn):
  """A catalogue scorer that is the same vector for every task: fn(data, split, seed, lam) -> [n]."""
  return lambda data, split, taskset, positions, seed, lam: np.tile(fn(data, split, seed, lam), (len(positions), 1))


def _catalogue_offset(data, split, taskset, positions, seed, lam):
  offsets = _task_offsets(data, split, taskset, lam)[np.asarray(positions)]
  return (_entity_means(data, split, lam)[None, :] + offsets[:, None]).astype(np.float32)


# Baselines whose scores rank but are not predictions of the target: pointwise metrics (MAE/RMSE) are not reported.
RANKERS: tuple[str, ...] = ("popularity",)


def _catalogue_source_support(data, split, taskset, positions, seed, lam):
  items, _ = _source_parts(data, split, lam)
  offsets = _task_offsets(data, split, taskset, lam, means=items)[np.asarray(positions)]
  return (items[None, :] + offsets[:, None]).astype(np.float32)


def _catalogue_source(target_items: bool):
  def fn(data, split, taskset, positions, seed, lam):
    items, offsets = _source_parts(data, split, lam)
    means = _entity_means(data, split, lam) if target_items else items
    return (means[None, :] + offsets[taskset.task_ids[np.asarray(positions)]][:, None]).astype(np.float32)

  return fn


# need a cross-domain split
CROSS_DOMAIN = ("source_item_user_offset", "item_mean_source_offset", "source_item_support_offset")


def applicable(split: ColdStartSplit) -> list[str]:
  """The `BASELINES` that can score `split`, in order: all of them on a cross-domain split, else the others."""
  from transfer_meta.data.cross_domain import is_cross_domain  # noqa: PLC0415

  return [n for n in BASELINES if is_cross_domain(split) or n not in CROSS_DOMAIN]


# name -> fn(data, split, taskset, positions [B], seed, lam) -> f32 [B, n]: every query-side entity (the catalogue)
# scored for the tasks at `positions` of `taskset`. One entry per `BASELINES` entry (tested).
CATALOGUE: dict[str, Callable] = {
  "random": _catalogue_random,
  "constant": _catalogue_full(lambda d, s, seed, lam: np.full(_n_query_side(d, s), sum(target_scale(d, s)) / 2)),
  "global_mean": _catalogue_full(lambda d, s, seed, lam: np.full(_n_query_side(d, s), global_mean(s))),
  "item_mean": _catalogue_full(lambda d, s, seed, lam: _entity_means(d, s, lam)),
  "item_user_offset": _catalogue_offset,
  "popularity": _catalogue_full(lambda d, s, seed, lam: _popularity_scores(d, s)),
  "source_item_user_offset": _catalogue_source(target_items=False),
  "item_mean_source_offset": _catalogue_source(target_items=True),
  "source_item_support_offset": _catalogue_source_support,
}


def catalogue_scores(
  name: str,
  data: Interactions,
  split: ColdStartSplit,
  taskset: TaskSet,
  positions: np.ndarray,
  seed: int = 0,
  lam: float = 5.0,
) -> np.ndarray:
  """Scores of baseline `name` for every catalogue entry of the tasks at `positions` of `taskset`.

  Args:
    name: a key of `CATALOGUE` (= `BASELINES`); unknown names list the valid ones.
    data, split, taskset, seed, lam: as in `baseline_scores`.
    positions: int [B] task positions in `taskset`.
  Returns:
    f32 [B, n]: n = items (user tasks) or users (item tasks), dense-id order.
  """
  if lam < 0:
    raise ValueError(f"parameter lam={lam} must be >= 0")
  scores = lookup(CATALOGUE, name, "baseline")(data, split, taskset, np.asarray(positions, np.int64), seed, float(lam))
  return np.asarray(scores, np.float32)


def baseline_scores(
  name: str, data: Interactions, split: ColdStartSplit, taskset: TaskSet, seed: int = 0, lam: float = 5.0
) -> np.ndarray:
  """Scores of baseline `name` for every query row of `taskset`.

  Args:
    name: a key of `BASELINES` (unknown names list the valid ones).
    data, split: the interactions and the split made from them (training rows: split.tasks['train']).
    taskset: the tasks to score (a scenario of `split`).
    seed: seeds 'random'. lam: shrinkage strength (>= 0).
  Returns:
    f32 [sum of query sizes] aligned with `taskset.query_rows` (task t: `query_ptr[t]:query_ptr[t+1]`).
  """
  if lam < 0:
    raise ValueError(f"parameter lam={lam} must be >= 0")
  return lookup(BASELINES, name, "baseline")(data, split, taskset, seed, float(lam))


def pad_queries(taskset: TaskSet, values: np.ndarray, width: int, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
  """Flat per-query-row `values` [sum of query sizes] -> (f32 [n_tasks, width], mask bool [n_tasks, width])."""
  sizes = taskset.query_sizes()
  t = np.repeat(np.arange(len(taskset)), sizes)
  pos = np.arange(values.shape[0]) - np.repeat(taskset.query_ptr[:-1], sizes)
  out, mask = np.zeros((n_tasks, width), np.float32), np.zeros((n_tasks, width), bool)
  out[t, pos], mask[t, pos] = values, True
  return out, mask


TASK_CHUNK = 128  # tasks per metric call: a call holds [chunk, Q, Q] pairwise AUC terms, not [T, Q, Q]


def evaluate_baselines(
  data: Interactions,
  split: ColdStartSplit,
  names: Sequence[str] | None = None,
  seed: int | None = None,
  lam: float = 5.0,
  task_chunk: int | None = TASK_CHUNK,
) -> dict:
  """Every baseline on every scenario of `split`, scored with the split's metrics and relevance.

  Args:
    data, split: as in `baseline_scores`.
    names: baselines to run (default: every one of `BASELINES` that applies to the split, `applicable`).
    seed: seeds 'random' (default: the split's seed).
    lam: shrinkage strength.
    task_chunk: tasks scored per metric call (>= 1), so memory is bounded by the chunk, not the scenario; None:
      the whole scenario in one call. The values do not depend on it (per-task metrics; tested).
  Returns:
    {baseline: {scenario: {metric: mean over the scenario's tasks}}} (AUC adds '<metric>/tasks'); the `RANKERS`
    carry no pointwise metrics (MAE/RMSE of a count mapped onto the rating scale would mean nothing).
  """
  names = applicable(split) if names is None else list(names)
  seed = split.seed if seed is None else seed
  if task_chunk is not None and (isinstance(task_chunk, bool) or not isinstance(task_chunk, int) or task_chunk < 1):
    raise ValueError(f"task_chunk={task_chunk!r} must be a positive int or None")
  out = {name: {} for name in names}
  train_rows = split.tasks["train"].all_rows()
  for scenario in split.scenarios:
    taskset = split.tasks[scenario]
    metrics_lib.check_cutoffs(split.metrics, taskset.query_sizes())
    leaked = np.intersect1d(train_rows, taskset.query_rows)
    if leaked.size:
      raise DataError(
        f"{split.protocol}: {leaked.size} query rows of scenario {scenario!r} are training rows "
        f"(e.g. rows {leaked[:5].tolist()}); a baseline would see its answers"
      )
    width = bucket(int(taskset.query_sizes().max()))
    n_tasks = -(-len(taskset) // 128) * 128  # a few shapes, so few compiles across seeds
    target, mask = pad_queries(taskset, split.target[taskset.query_rows], width, n_tasks)
    scores = [
      pad_queries(taskset, baseline_scores(n, data, split, taskset, seed, lam), width, n_tasks)[0] for n in names
    ]
    # One call per baseline and task chunk (same shapes: one compile): stacking the baselines along the task axis
    # held every baseline's pairwise AUC terms [T, Q, Q] at once (13 GB for 8 baselines on genre_split's long
    # cold queries), and one call per whole scenario still holds [T, Q, Q] (uncapped beta = 0.8: [640, 600, 600]).
    task_mask = np.arange(n_tasks) < len(taskset)
    step = n_tasks if task_chunk is None else task_chunk
    for name, s in zip(names, scores):
      parts = [
        metrics_lib.evaluate_batch(
          split.metrics, s[i : i + step], target[i : i + step], mask[i : i + step], split.params.get("relevance")
        )
        for i in range(0, n_tasks, step)
      ]
      chunk = {m: np.concatenate([np.asarray(p[m]) for p in parts]) for m in parts[0]}
      if name in RANKERS:
        chunk = {m: v for m, v in chunk.items() if metrics_lib.parse_metric(m).base not in metrics_lib.POINTWISE}
      out[name][scenario] = metrics_lib.aggregate(chunk, task_mask)
  return out
