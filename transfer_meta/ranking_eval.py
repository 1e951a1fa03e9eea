"""Runs the ranking protocols of `transfer_meta.ranking` on a task set: chunked catalogue scoring, candidate masks,
sampled negatives, beyond-accuracy metrics and breakdowns by support size and entry popularity.

    cfg = RankingConfig.from_config(config)                       # config.eval_ranking + config.ranking
    scorer = learner_scorer(learner, split.task_kind, cfg.chunk, feats, meta_params, eval_key)
    out = evaluate_set(data, split, "new_user", task_data, scorer, cfg, seed)
    out.metrics    # {"new_user/catalogue": {...}, "new_user/sampled": {...}}
    out.breakdown  # {"new_user/query": {"K=1-5/ndcg@3": x, "K=1-5/tasks": n, ...}, ...}
    out.sample     # the sampled negatives, for the run's ranking_manifest.json

A scorer is `(batch, positions) -> f32 [B, C]`: a score for every catalogue entry (items for user tasks, users for
item tasks) of the B tasks of a batch (`data.tasks`), `positions` their places in the task set. Learners adapt to
each task's support exactly as the query evaluation does (same per-task key, `fold_in(key, task_id)`) and score
the catalogue `chunk` entries at a time (`lax.map` over chunks inside one jit), so memory is B x chunk activations
whatever the catalogue size; baselines use `baselines.catalogue_scores`.

Breakdowns (per seed, flat keys so `evaluate.summarize` averages them over seeds):
  by support size   every metric of 'query' (recomputed from the catalogue scores at the query entries, with the
                    protocol's own metrics), 'catalogue' and 'sampled', per support-size bin ('K=1-5', 'K=6-20',
                    'K=21+' for bins (1, 6, 21)), with 'K=../tasks' the number of tasks in the bin (catalogue and
                    sampled means skip the tasks without a relevant query entry, as the overall means do).
  by popularity     catalogue recall@k of the relevant query entries grouped by their training-row count
                    ('pop=0', 'pop=1-10', 'pop=11-100', 'pop=101+' for bins (0, 1, 11, 101)): the expected share of
                    a bin's relevant entries found in the top k, with 'pop=../entries' their number.
Breakdown keys hold a '/', so the printed results tables (which leave out '/' counts) skip them; results.json has
them under the same scenario keys, and `experiments/ranking.py` tabulates and plots them.

In a run (`train.train_and_evaluate`) with `config.eval_ranking` beyond ('query',), every scenario of every seed
gets '<scenario>/catalogue' and/or '<scenario>/sampled' entries beside '<scenario>' in results.json, for the
learners and the reference baselines, plus the breakdowns; DIR/ranking_manifest.json records the sampled negatives.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transfer_meta import baselines as baselines_lib
from transfer_meta import metrics as metrics_lib
from transfer_meta import ranking
from transfer_meta.data.cross_domain import TARGET, is_cross_domain
from transfer_meta.data.examples import FeatureMatrices
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.data.split import ColdStartSplit
from transfer_meta.data.tasks import TaskData
from transfer_meta.learners.base import Learner


@dataclasses.dataclass(frozen=True)
class RankingConfig:
  protocols: tuple[str, ...]  # from config.eval_ranking, 'query' first
  metrics: tuple[str, ...]  # ranking metric names (catalogue; the sampled protocol drops graded ndcg)
  relevance: str  # '' = the protocol's binary spec, else 'threshold:4' ('threshold:1' in a click setting)
  negatives: int  # N of the sampled protocol
  chunk: int  # catalogue entries scored per step
  beyond_k: int  # list length of coverage/gini/ild/novelty and of the popularity breakdown's recall
  support_bins: tuple[int, ...]  # lower edges of the support-size bins
  popularity_bins: tuple[int, ...]  # lower edges of the training-count bins

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> RankingConfig:
    r = config.ranking
    out = cls(
      ranking.check_protocols(config.eval_ranking),
      tuple(r.metrics),
      str(r.relevance),
      int(r.negatives),
      int(r.chunk),
      int(r.beyond_k),
      tuple(int(b) for b in r.support_bins),
      tuple(int(b) for b in r.popularity_bins),
    )
    ranking.parse_metrics(out.metrics, "catalogue")
    ranking.parse_metrics(out.sampled_metrics, "sampled")
    for name, value, low in (("negatives", out.negatives, 1), ("chunk", out.chunk, 1), ("beyond_k", out.beyond_k, 2)):
      if value < low:
        raise ValueError(f"config.ranking.{name}={value} must be >= {low}")
    for name, bins in (("support_bins", out.support_bins), ("popularity_bins", out.popularity_bins)):
      if not bins or any(a >= b for a, b in zip(bins[:-1], bins[1:])) or bins[0] < 0:
        raise ValueError(f"config.ranking.{name}={bins}: want non-negative, strictly increasing lower edges")
    return out

  @property
  def extra(self) -> tuple[str, ...]:
    """The protocols beyond 'query'."""
    return tuple(p for p in self.protocols if p != "query")

  @property
  def sampled_metrics(self) -> tuple[str, ...]:
    return tuple(n for n in self.metrics if metrics_lib.parse_metric(n).base != "ndcg")


def relevance_spec(split: ColdStartSplit, override: str = "") -> str:
  """The binary relevance of the ranking protocols: `override`, else the split's spec when binary, else
  'threshold:1' in a click setting and 'threshold:4' on ratings (MeLU's protocol grades gains, it has no spec)."""
  if override:
    metrics_lib.parse_relevance(override)
    return override
  spec = split.params.get("relevance")
  try:
    metrics_lib.parse_relevance(spec)
    return spec
  except ValueError:
    return "threshold:1" if split.params.get("setting") == "click" else "threshold:4"


def bin_labels(edges: Sequence[int]) -> list[str]:
  """Lower edges (1, 6, 21) -> ['1-5', '6-20', '21+']; an edge followed by edge + 1 is a single value ('0')."""
  out = []
  for a, b in zip(edges, [*edges[1:], None]):
    out.append(f"{a}+" if b is None else (f"{a}" if b == a + 1 else f"{a}-{b - 1}"))
  return out


def bin_of(values: np.ndarray, edges: Sequence[int]) -> np.ndarray:
  """int [n]: the bin of each value (-1 below the first edge)."""
  return np.searchsorted(np.asarray(edges), np.asarray(values), side="right") - 1


# ---------------------------------------------------------------------------------------------------------------
# What each task's entity has rated.


def _sides(split: ColdStartSplit) -> tuple[str, str]:
  """(task side, catalogue side): ('user', 'item') for user tasks, ('item', 'user') for item tasks."""
  return ("user", "item") if split.task_kind == "user" else ("item", "user")


@dataclasses.dataclass(frozen=True)
class Rated:
  """CSR of every entry each task-side entity has rated, over ALL rows of the data."""

  ptr: np.ndarray  # int64 [E + 1]
  entries: np.ndarray  # int32 [N]
  n_entries: int  # catalogue size C
  outside: np.ndarray | None = None  # bool [C]: entries outside the catalogue (cross-domain: non-target items)

  @classmethod
  def build(cls, data: Interactions, split: ColdStartSplit) -> Rated:
    """On a cross-domain split (`data.cross_domain`) the catalogue is the TARGET domain's items only."""
    task_side, side = _sides(split)
    owner, entry = getattr(data, task_side), getattr(data, side)
    order = np.argsort(owner, kind="stable")
    n_owner = data.n_users if task_side == "user" else data.n_items
    ptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_owner))]).astype(np.int64)
    n_entries = data.n_items if side == "item" else data.n_users
    outside = None
    if is_cross_domain(split):
      outside = np.bincount(data.item[split.row_domain == TARGET], minlength=n_entries) == 0
    return cls(ptr, entry[order].astype(np.int32), n_entries, outside)

  def unrated(self, owners: np.ndarray) -> np.ndarray:
    """bool [B, C]: True where the owner never rated the entry (and the entry is in the catalogue)."""
    out = np.ones((len(owners), self.n_entries), bool)
    if self.outside is not None:
      out[:, self.outside] = False
    for b, o in enumerate(owners):
      out[b, self.entries[self.ptr[o] : self.ptr[o + 1]]] = False
    return out


def sample_negatives(
  unrated: np.ndarray, relevant: np.ndarray, n: int, seed: int, set_name: str, task_ids: np.ndarray
) -> np.ndarray:
  """int32 [B, Q, n]: for each relevant query slot, n distinct entries its owner never rated (0 elsewhere).

  Task t draws from `np.random.default_rng([seed, crc32('sampled/' + set_name), task_id])`, slot by slot, so a
  task's sample is a function of (seed, set, task) alone. Raises DataError when an owner has fewer than n unrated
  entries.
  """
  out = np.zeros((*relevant.shape, n), np.int32)
  stage = zlib.crc32(f"sampled/{set_name}".encode())
  for b in range(relevant.shape[0]):
    if not relevant[b].any():
      continue
    pool = np.flatnonzero(unrated[b])
    if pool.size < n:
      raise DataError(f"task {int(task_ids[b])}: {pool.size} unrated entries, fewer than negatives={n}; lower it")
    rng = np.random.default_rng([int(seed), stage, int(task_ids[b])])
    for q in np.flatnonzero(relevant[b]):
      out[b, q] = rng.choice(pool, n, replace=False)
  return out


# ---------------------------------------------------------------------------------------------------------------
# Scorers.


def catalogue_arrays(feats: FeatureMatrices, side: str, chunk: int) -> dict:
  """The catalogue side's example fields padded to a multiple of `chunk` and split: {key: [n_chunks, chunk, ...]}."""
  n = getattr(feats, f"{side}_cat").shape[0]
  chunk = min(chunk, n)  # a small catalogue is one chunk
  pad = -n % chunk
  ids = np.concatenate([np.arange(n), np.zeros(pad, np.int64)]).astype(np.int32)
  fields = {side: ids, **{f"{side}_{k}": getattr(feats, f"{side}_{k}")[ids] for k in ("cat", "multi", "dense")}}
  return {k: jnp.asarray(v.reshape((n + pad) // chunk, chunk, *v.shape[1:])) for k, v in fields.items()}


def make_catalogue_scorer(learner: Learner, side: str) -> Callable:
  """jitted `(meta_params, batch, key, catalogue) -> f32 [T, n_chunks * chunk]`: adapt per task, score chunks.

  The task's other side (its user, for user tasks) is read from its first query entry; every catalogue chunk
  becomes a query of `chunk` entries scored by `model.apply(task_params, query, support)`.
  """
  varying = (side, f"{side}_cat", f"{side}_multi", f"{side}_dense")

  def one_task(meta_params, support, query, key, catalogue):
    task_params = learner.adapt(meta_params, support, key)
    fixed = {k: v[0] for k, v in query.items() if k not in (*varying, "target", "mask")}

    def score_chunk(chunk):
      c = chunk[side].shape[0]
      q = {**chunk, "target": jnp.zeros(c), "mask": jnp.ones(c, bool)}
      q.update({k: jnp.broadcast_to(v, (c, *v.shape)) for k, v in fixed.items()})
      return learner.model.apply(task_params, q, support)

    return jax.lax.map(score_chunk, catalogue).reshape(-1)

  def score(meta_params, batch, key, catalogue):
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(batch["task_id"])
    return jax.vmap(one_task, in_axes=(None, 0, 0, 0, None))(
      meta_params, batch["support"], batch["query"], keys, catalogue
    )

  return jax.jit(score)


def learner_scorer(
  learner: Learner,
  task_kind: str,
  chunk: int,
  feats: FeatureMatrices,
  meta_params,
  key: jax.Array,
  compiled: tuple[Callable, dict] | None = None,
) -> Callable:
  """A scorer `(batch, positions) -> f32 [B, C]` for one seed's meta-params (see the module docstring).

  `compiled` = (make_catalogue_scorer(...), catalogue_arrays(...)) reuses one jitted scorer across seeds and sets.
  """
  side = "item" if task_kind == "user" else "user"
  fn, catalogue = compiled or (make_catalogue_scorer(learner, side), catalogue_arrays(feats, side, chunk))
  n = getattr(feats, f"{side}_cat").shape[0]
  return lambda batch, positions: np.asarray(fn(meta_params, batch, key, catalogue))[:, :n]


def baseline_scorer(name: str, data: Interactions, split: ColdStartSplit, set_name: str, seed: int) -> Callable:
  """A scorer for reference baseline `name` (`baselines.catalogue_scores`); padded tasks score 0."""
  taskset = split.tasks[set_name]

  def score(batch, positions):
    n = data.n_items if split.task_kind == "user" else data.n_users
    out = np.zeros((batch["task_mask"].shape[0], n), np.float32)
    out[: len(positions)] = baselines_lib.catalogue_scores(name, data, split, taskset, positions, seed)
    return out

  return score


# ---------------------------------------------------------------------------------------------------------------
# One task set.


@dataclasses.dataclass(frozen=True)
class SetResult:
  metrics: dict  # {'<set>/<protocol>': {metric: float}} for the protocols beyond 'query'
  breakdown: dict  # {'<set>/<protocol>': {'K=<bin>/<metric>', 'K=<bin>/tasks', 'pop=<bin>/recall@k', ...: float}}
  sample: dict  # the sampled negatives: {"hash", "tasks": {task_id: {"query": [...], "negatives": [[...]]}}}


def candidates(unrated: np.ndarray, q_index: np.ndarray, q_mask: np.ndarray) -> np.ndarray:
  """bool [B, C]: the catalogue protocol's candidates, `unrated` [B, C] plus each task's real query entries."""
  cand = unrated.copy()
  b, _ = np.nonzero(q_mask)
  cand[b, q_index[q_mask]] = True
  return cand


def _entry_hits(k, scores, cand, q_index, relevant):
  """f32 [B, Q]: P(query entry in the top k) for relevant entries (0 elsewhere), tie-aware, as in `ranking`."""
  s_q = np.take_along_axis(scores, q_index, axis=1)
  g = np.sum((scores[:, None, :] > s_q[:, :, None]) & cand[:, None, :], axis=2)
  m = np.maximum(np.sum((scores[:, None, :] == s_q[:, :, None]) & cand[:, None, :], axis=2), 1)
  return np.where(relevant, np.clip(k - g, 0, m) / m, 0.0)


def evaluate_set(
  data: Interactions,
  split: ColdStartSplit,
  set_name: str,
  task_data: TaskData,
  scorer: Callable,
  cfg: RankingConfig,
  seed: int,
  batch_size: int = 64,
) -> SetResult:
  """Every protocol of `cfg` beyond 'query' on one task set, with beyond-accuracy metrics and breakdowns.

  Args:
    data, split: the interactions and the seed's split; set_name: 'valid' or a scenario.
    task_data: the set's padded tasks (`TaskData.from_split`).
    scorer: `(batch, positions) -> f32 [B, C]` (`learner_scorer`, `baseline_scorer`).
    cfg: the ranking config; seed: the split's seed (negatives and top-k tie order).
    batch_size: tasks per scoring call.
  Returns:
    `SetResult`.
  """
  taskset = split.tasks[set_name]
  task_side, side = _sides(split)
  rel_spec = relevance_spec(split, cfg.relevance)
  counts = baselines_lib.train_counts(data, split)
  n_other = np.unique(getattr(data, task_side)[split.tasks["train"].all_rows()]).size
  tiebreak = np.random.default_rng([int(seed), zlib.crc32(b"ranking/tiebreak")]).permutation(counts.shape[0])
  per: dict = {"query": {}, "catalogue": {}, "sampled": {}}
  lists, hits, pop_bin, tasks_sample = [], [], [], {}
  for tb in task_batches(data, split, set_name, task_data, rel_spec, batch_size):
    scores = np.asarray(scorer(tb.batch, tb.positions), np.float32)[: len(tb.positions)]
    query_scores = np.take_along_axis(scores, tb.q_index, 1)
    relevance = split.params.get("relevance")
    _append(per["query"], metrics_lib.evaluate_batch(split.metrics, query_scores, tb.q_target, tb.q_mask, relevance))
    if "catalogue" in cfg.protocols:
      args = (scores, tb.unrated, tb.q_index, tb.q_target, tb.q_mask, rel_spec)
      _append(per["catalogue"], ranking.catalogue_batch(cfg.metrics, *args))
      cand = candidates(tb.unrated, tb.q_index, tb.q_mask)
      lists.append(ranking.top_k(scores, cand, cfg.beyond_k, tiebreak))
      hits.append(_entry_hits(cfg.beyond_k, scores, cand, tb.q_index, tb.relevant)[tb.relevant])
      pop_bin.append(bin_of(counts[tb.q_index], cfg.popularity_bins)[tb.relevant])
    if "sampled" in cfg.protocols:
      negatives = sample_negatives(tb.unrated, tb.relevant, cfg.negatives, seed, set_name, tb.owners)
      args = (scores, tb.q_index, tb.q_target, tb.q_mask, negatives, rel_spec)
      _append(per["sampled"], ranking.sampled_batch(cfg.sampled_metrics, *args))
      tasks_sample.update(_sample_entries(tb, negatives))
  ones = np.ones(len(taskset), bool)
  metrics, breakdown = {}, {}
  support_bin = bin_of(taskset.support_sizes(), cfg.support_bins)
  for protocol in cfg.protocols:
    values = {k: np.concatenate(v) for k, v in per[protocol].items()}
    if protocol != "query":
      metrics[f"{set_name}/{protocol}"] = ranking.aggregate(values, ones)
    breakdown[f"{set_name}/{protocol}"] = _by_support(values, support_bin, bin_labels(cfg.support_bins))
  if "catalogue" in cfg.protocols:
    metrics[f"{set_name}/catalogue"].update(_beyond(np.concatenate(lists), cfg.beyond_k, data, side, counts, n_other))
    breakdown[f"{set_name}/catalogue"].update(
      _by_popularity(np.concatenate(hits), np.concatenate(pop_bin), cfg.popularity_bins, cfg.beyond_k)
    )
  sample = _sample_dict(tasks_sample, cfg, rel_spec) if "sampled" in cfg.protocols else {}
  return SetResult(metrics, breakdown, sample)


class TaskBatch(NamedTuple):
  positions: np.ndarray  # int [B] task positions in the set (real tasks only)
  batch: dict  # the padded task batch (`TaskData.batch`, batch_size tasks)
  owners: np.ndarray  # int32 [B] task ids (the entity whose ratings make the task)
  q_index: np.ndarray  # int32 [B, Q] catalogue index of each query entry
  q_target: np.ndarray  # f32 [B, Q]
  q_mask: np.ndarray  # bool [B, Q]
  unrated: np.ndarray  # bool [B, C] entries the owner never rated
  relevant: np.ndarray  # bool [B, Q] relevant query entries


def task_batches(
  data: Interactions, split: ColdStartSplit, set_name: str, task_data: TaskData, rel_spec: str, batch_size: int
) -> Iterator[TaskBatch]:
  """The set's tasks in order, `batch_size` at a time, with what every ranking protocol needs."""
  taskset = split.tasks[set_name]
  _, side = _sides(split)
  rated = Rated.build(data, split)
  relevant_fn = _relevant_fn(rel_spec)
  for start in range(0, len(taskset), batch_size):
    positions = np.arange(start, min(start + batch_size, len(taskset)))
    batch = task_data.batch(positions, batch_size)
    real = len(positions)
    owners = taskset.task_ids[positions]
    q_index = np.asarray(batch["query"][side][:real])
    q_target, q_mask = np.asarray(batch["query"]["target"][:real]), np.asarray(batch["query"]["mask"][:real])
    _check_query(q_index, q_mask, owners, set_name)
    relevant = np.asarray(relevant_fn(q_target, q_mask)) & q_mask
    yield TaskBatch(positions, batch, owners, q_index, q_target, q_mask, rated.unrated(owners), relevant)


@functools.lru_cache(maxsize=8)
def _relevant_fn(rel_spec: str) -> Callable:
  """jitted bool [B, Q] relevance of query ratings [B, Q] (one compile per spec and shape)."""
  parsed = metrics_lib.parse_relevance(rel_spec)
  return jax.jit(jax.vmap(lambda t, m: metrics_lib.binary_relevance(t, m, parsed)))


def _sample_entries(tb: TaskBatch, negatives: np.ndarray) -> dict:
  out = {}
  for b, t in enumerate(tb.owners):
    slots = np.flatnonzero(tb.relevant[b])
    out[str(int(t))] = {"query": tb.q_index[b, slots].tolist(), "negatives": negatives[b, slots].tolist()}
  return out


def sample_record(data, split, set_name, task_data, cfg: RankingConfig, seed: int, batch_size: int = 64) -> dict:
  """The sampled protocol's negatives of one set, as `evaluate_set` draws them, without scoring anything."""
  rel_spec = relevance_spec(split, cfg.relevance)
  tasks = {}
  for tb in task_batches(data, split, set_name, task_data, rel_spec, batch_size):
    tasks.update(
      _sample_entries(tb, sample_negatives(tb.unrated, tb.relevant, cfg.negatives, seed, set_name, tb.owners))
    )
  return _sample_dict(tasks, cfg, rel_spec)


def _sample_dict(tasks: dict, cfg: RankingConfig, rel_spec: str) -> dict:
  digest = hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()
  return {"negatives": cfg.negatives, "relevance": rel_spec, "hash": digest, "tasks": tasks}


def _check_query(q_index, q_mask, owners, set_name):
  for b in range(q_index.shape[0]):
    entries = q_index[b][q_mask[b]]
    if np.unique(entries).size != entries.size:
      raise DataError(f"{set_name}: task {int(owners[b])} rates one entry twice in its query; ranking needs one")


def _append(acc: dict, out: dict) -> None:
  for k, v in out.items():
    acc.setdefault(k, []).append(np.asarray(v, np.float64))


def _by_support(values: dict, bins: np.ndarray, labels: list[str]) -> dict:
  out = {}
  for b, label in enumerate(labels):
    inside = bins == b
    out[f"K={label}/tasks"] = float(inside.sum())
    for name, v in values.items():
      ok = inside & ~np.isnan(v)
      out[f"K={label}/{name}"] = float(v[ok].mean()) if ok.any() else float("nan")
  return out


def _by_popularity(hits: np.ndarray, bins: np.ndarray, edges: Sequence[int], k: int) -> dict:
  out = {}
  for b, label in enumerate(bin_labels(edges)):
    inside = bins == b
    out[f"pop={label}/entries"] = float(inside.sum())
    out[f"pop={label}/recall@{k}"] = float(hits[inside].mean()) if inside.any() else float("nan")
  return out


def _beyond(lists: np.ndarray, k: int, data: Interactions, side: str, counts: np.ndarray, n_other: int) -> dict:
  n = counts.shape[0]
  out = {
    f"coverage@{k}": ranking.coverage(lists, n),
    f"gini@{k}": ranking.gini(lists, n),
    f"novelty@{k}": ranking.novelty(lists, counts, n_other),
  }
  table = data.item_features if side == "item" else data.user_features
  for name, vectors in {**table.multi_hot, **table.dense}.items():
    out[f"ild@{k}:{name}"] = ranking.intra_list_diversity(lists, vectors)
  return out


# ---------------------------------------------------------------------------------------------------------------
# A run: every seed and scenario, merged into the per-seed results of the query evaluation.


def _merge(per_seed_entry: dict, set_name: str, res: SetResult) -> None:
  per_seed_entry.update({k: dict(v) for k, v in res.metrics.items()})
  for key, values in res.breakdown.items():
    target = set_name if key.endswith("/query") else key
    per_seed_entry.setdefault(target, {}).update(values)


def rank_seeds(exp, per_seed: list[dict], scorer_of: Callable) -> list[dict]:
  """Adds the ranking protocols of `exp.config` to per-seed results [{set: {metric: float}}] (in place).

  Args:
    exp: the `train.Experiment`.
    per_seed: the query evaluation's results, one dict per seed.
    scorer_of: (seed position n, set name) -> scorer.
  Returns:
    `per_seed`, with '<scenario>/<protocol>' entries and breakdown keys; unchanged when only 'query' is asked.
  """
  cfg = RankingConfig.from_config(exp.config)
  if not cfg.extra:
    return per_seed
  for n, st in enumerate(exp.seeds):
    for name in st.split.scenarios:
      bs = exp.config.eval_batch_size
      res = evaluate_set(exp.data, st.split, name, st.tasks[name], scorer_of(n, name), cfg, st.seed, bs)
      _merge(per_seed[n], name, res)
  return per_seed


def rank_learner(exp, learner: Learner, params_of: Callable, eval_keys) -> Callable:
  """The `scorer_of` of a trained learner: seed n's selected meta-params (`params_of(n)`) and eval key."""
  kind, chunk = exp.seeds[0].split.task_kind, int(exp.config.ranking.chunk)
  side = "item" if kind == "user" else "user"

  @functools.cache
  def compiled():  # built on first use: a run without ranking protocols never pays for it
    return make_catalogue_scorer(learner, side), catalogue_arrays(exp.feats, side, chunk)

  return lambda n, _: learner_scorer(learner, kind, chunk, exp.feats, params_of(n), eval_keys[n], compiled())


def rank_baselines(exp, per_seed: list[dict]) -> list[dict]:
  """`rank_seeds` for every baseline: per_seed [{baseline: {set: {metric}}}] (the output of
  `baselines.evaluate_baselines` per seed), updated in place."""
  for name in exp.config.baselines:
    one = [r[name] for r in per_seed]
    rank_seeds(
      exp,
      one,
      lambda n, set_name, name=name: baseline_scorer(name, exp.data, exp.seeds[n].split, set_name, exp.seeds[n].seed),
    )
  return per_seed


def ranking_manifest(exp) -> list[dict] | None:
  """Per seed, the ranking parameters and the sampled negatives of every scenario (None without extras)."""
  cfg = RankingConfig.from_config(exp.config)
  if not cfg.extra:
    return None
  out = []
  for st in exp.seeds:
    entry = {"seed": st.seed, "protocols": list(cfg.protocols), "config": dataclasses.asdict(cfg)}
    entry["relevance"] = relevance_spec(st.split, cfg.relevance)
    if "sampled" in cfg.protocols:
      entry["sampled"] = {
        name: sample_record(exp.data, st.split, name, st.tasks[name], cfg, st.seed) for name in st.split.scenarios
      }
    out.append(entry)
  return out
