"""Ranking that cannot saturate: one task's query judged against the whole catalogue or against sampled negatives.

The query-only metrics (`transfer_meta.metrics`) rank a task's own ~10 query items; a recommender's job is to pick
a handful out of the whole catalogue. Two evaluation protocols here, pure, jit- and vmap-able per task:

  catalogue  Candidates: every catalogue entry (items for user tasks, users for item tasks) the task's entity has
             never rated, plus the task's query entries. Relevant: the query entries the relevance spec marks
             ('threshold:4', 'top:5', as in `metrics.parse_relevance`; it reads the query ratings only). Rated
             entries outside the query (support, training rows, other scenarios' rows) are left out: their label
             is known and the model saw some of them. Non-relevant query entries stay in as known negatives.
  sampled    Each relevant query entry against N entries the entity never rated (the "1 + N" protocol; the
             sample is drawn on the host by `ranking_eval.sample_negatives`, seeded and recorded). The task's
             value is the mean over its relevant entries.

Metric names as in `metrics`: recall@k, precision@k, hr@k, mrr@k, ndcg_bin@k, auc, and (catalogue only) graded
ndcg@k with gain 2^r - 1 over the query ratings (unrated candidates gain 0). ':index' variants are refused: a
catalogue has no query order to break ties by.

Ties are handled as in `metrics`: every value is the exact expectation over uniformly random tie-breaking among
the candidates. For query entry q, g_q = #candidates scored strictly higher and m_q = #candidates scored equal
(itself included); the formulas of `metrics` then apply unchanged, but are evaluated from the Q query entries
against the C candidates in O(Q * C) instead of O(C^2), so a 59k-item catalogue costs a few MB per task.

Undefined cases: a task whose query has no relevant entry has nothing to find; every binary metric is NaN for
it (graded ndcg too when all query gains are 0), and `aggregate` skips NaN tasks and reports how many it
averaged as '<name>/tasks'. AUC is also NaN when no candidate is a negative.

Beyond accuracy (host-side numpy, over each task's top-k list; the list breaks score ties by a seeded random
order of the catalogue, so a constant scorer recommends random entries rather than the lowest ids):
  coverage@k   share of catalogue entries in at least one task's top k.
  gini@k       Gini coefficient of how often each catalogue entry is recommended (0: even, ->1: one entry).
  ild@k:<f>    intra-list diversity: mean over tasks of the mean pairwise cosine distance (1 - cos) between the
               k entries' feature vectors <f> (genre multi-hot, text embeddings); a zero vector has cosine 0 to
               everything (distance 1).
  novelty@k    mean over tasks and list entries of -log2 p_i, p_i = (c_i + 1) / (n + 1), c_i = training rows of
               entry i, n = distinct entities of the other side in the training rows (add-one smoothed, so an
               entry no one rated in training has finite novelty log2(n + 1)).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from transfer_meta import metrics as metrics_lib

PROTOCOLS = ("query", "catalogue", "sampled")
CATALOGUE_METRICS = ("ndcg", "ndcg_bin", "precision", "recall", "hr", "mrr", "auc")
SAMPLED_METRICS = ("ndcg_bin", "precision", "recall", "hr", "mrr", "auc")


def check_protocols(names: Sequence[str]) -> tuple[str, ...]:
  """Validates `config.eval_ranking`: distinct names from `PROTOCOLS`, 'query' included."""
  names = tuple(names)
  bad = [n for n in names if n not in PROTOCOLS]
  if bad or "query" not in names or len(set(names)) != len(names):
    raise ValueError(f"eval_ranking={names!r}: want distinct names from {list(PROTOCOLS)}, 'query' among them")
  return names


def parse_metrics(names: Sequence[str], protocol: str) -> list[metrics_lib.MetricSpec]:
  """Metric specs valid under `protocol` ('catalogue' or 'sampled'); others fail naming the valid ones."""
  valid = CATALOGUE_METRICS if protocol == "catalogue" else SAMPLED_METRICS
  specs = [metrics_lib.parse_metric(n) for n in names]
  for s in specs:
    if s.base not in valid or s.index:
      raise ValueError(f"metric {s.name!r} is not defined under '{protocol}' ranking; valid bases: {list(valid)}")
  return specs


def _discounts(k: int) -> jax.Array:
  """f32 [k + 1]: D[p] = sum over positions < p of 1 / log2(pos + 2)."""
  return jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.log2(jnp.arange(k) + 2.0))])


def _expected_dcg(gains, g, m, k):
  """E[DCG@k] = sum_q gain_q * (D[min(g+m, k)] - D[min(g, k)]) / m_q (positions g..g+m-1 equally likely)."""
  d = _discounts(k)
  return jnp.sum(gains * (d[jnp.minimum(g + m, k)] - d[jnp.minimum(g, k)]) / m)


def _first_relevant_in_top(rel, g, m, k):
  """(P(first relevant entry at position p) for p = start + j, j < k; positions) as in `metrics`."""
  big = jnp.iinfo(jnp.int32).max
  start = jnp.min(jnp.where(rel, g, big))
  in_group = rel & (g == start)
  size = jnp.max(jnp.where(in_group, m, 1)).astype(jnp.float32)
  n_in = jnp.sum(in_group).astype(jnp.float32)
  j = jnp.arange(k, dtype=jnp.float32)
  left = jnp.maximum(size - j, 1.0)
  ratio = jnp.where(j < size, (size - n_in - j) / left, 0.0)
  none_before = jnp.concatenate([jnp.ones(1), jnp.cumprod(ratio)[:-1]])
  prob = jnp.where(j < size, none_before * n_in / left, 0.0)
  return prob, start + jnp.arange(k)


def catalogue_task(
  metric_names: Sequence[str],
  scores: jax.Array,
  candidates: jax.Array,
  query_index: jax.Array,
  query_target: jax.Array,
  query_mask: jax.Array,
  relevance_spec: str,
) -> dict[str, jax.Array]:
  """Catalogue-ranking metrics of one task.

  Args:
    metric_names: names valid under 'catalogue' (static).
    scores: f32 [C] a score for every catalogue entry.
    candidates: bool [C] entries the entity never rated (the query entries are added here).
    query_index: int [Q] catalogue index of each query entry (anything where padded).
    query_target: f32 [Q] the query ratings; query_mask: bool [Q], False marks padding.
    relevance_spec: binary relevance over the query ratings ('threshold:4', 'top:5').
  Returns:
    {name: f32 scalar}, NaN where undefined (see the module docstring).
  """
  specs = parse_metrics(metric_names, "catalogue")
  rel_spec = metrics_lib.parse_relevance(relevance_spec)
  scores = jnp.asarray(scores, jnp.float32)
  qmask = jnp.asarray(query_mask, bool)
  idx = jnp.where(qmask, jnp.asarray(query_index, jnp.int32), 0)
  target = jnp.asarray(query_target, jnp.float32)
  # The query entries are candidates (max, not set: padded slots index entry 0 too).
  cand = jnp.asarray(candidates, jnp.int32).at[idx].max(qmask.astype(jnp.int32)) > 0
  s_q = scores[idx]  # [Q]
  higher = (scores[None, :] > s_q[:, None]) & cand[None, :]  # [Q, C]
  g = jnp.sum(higher, axis=1)
  m = jnp.maximum(jnp.sum((scores[None, :] == s_q[:, None]) & cand[None, :], axis=1), 1)
  rel = metrics_lib.binary_relevance(target, qmask, rel_spec) & qmask
  n_rel = jnp.sum(rel).astype(jnp.float32)
  nan = jnp.float32(jnp.nan)
  out = {}
  for s in specs:
    if s.base == "ndcg":
      gains = jnp.where(qmask, jnp.exp2(target) - 1.0, 0.0)
      ideal = jnp.sort(gains)[::-1][: s.k]
      idcg = jnp.sum(ideal * jnp.diff(_discounts(s.k))[: ideal.shape[0]])
      out[s.name] = jnp.where(idcg > 0, _expected_dcg(gains, g, m, s.k) / jnp.where(idcg > 0, idcg, 1.0), nan)
      continue
    if s.base == "auc":
      n_cand = jnp.sum(cand)
      rel_below = jnp.sum(rel[None, :] & (s_q[None, :] < s_q[:, None]), axis=1)
      rel_equal = jnp.sum(rel[None, :] & (s_q[None, :] == s_q[:, None]), axis=1)
      neg_below = (n_cand - g - m) - rel_below
      neg_equal = m - rel_equal
      n_neg = n_cand - n_rel
      total = jnp.sum(jnp.where(rel, neg_below + 0.5 * neg_equal, 0.0))
      value = total / jnp.maximum(n_rel * n_neg, 1.0)
      out[s.name] = jnp.where((n_rel > 0) & (n_neg > 0), value, nan)
      continue
    if s.base in ("precision", "recall"):
      hits = jnp.sum(jnp.where(rel, jnp.clip(s.k - g, 0, m) / m, 0.0))
      value = hits / s.k if s.base == "precision" else hits / jnp.maximum(n_rel, 1.0)
    elif s.base == "ndcg_bin":
      idcg = _discounts(s.k)[jnp.minimum(n_rel.astype(jnp.int32), s.k)]
      value = _expected_dcg(rel.astype(jnp.float32), g, m, s.k) / jnp.maximum(idcg, 1e-9)
    else:
      prob, pos = _first_relevant_in_top(rel, g, m, s.k)
      inside = jnp.where(pos < s.k, prob, 0.0)
      value = jnp.sum(inside) if s.base == "hr" else jnp.sum(inside / (pos + 1.0))
    out[s.name] = jnp.where(n_rel > 0, value, nan)
  return out


def sampled_task(
  metric_names: Sequence[str],
  scores: jax.Array,
  query_index: jax.Array,
  query_target: jax.Array,
  query_mask: jax.Array,
  negatives: jax.Array,
  relevance_spec: str,
) -> dict[str, jax.Array]:
  """Sampled-negative metrics of one task: each relevant query entry ranked against its own N negatives.

  Args:
    metric_names: names valid under 'sampled' (static).
    scores: f32 [C] a score for every catalogue entry.
    query_index, query_target, query_mask: [Q] as in `catalogue_task`.
    negatives: int [Q, N] catalogue indices of the entries each query entry is ranked against (rows of
      non-relevant or padded query entries are ignored).
    relevance_spec: binary relevance over the query ratings.
  Returns:
    {name: f32 scalar}: the mean over the task's relevant query entries; NaN when there is none.
  """
  specs = parse_metrics(metric_names, "sampled")
  rel_spec = metrics_lib.parse_relevance(relevance_spec)
  scores = jnp.asarray(scores, jnp.float32)
  qmask = jnp.asarray(query_mask, bool)
  idx = jnp.where(qmask, jnp.asarray(query_index, jnp.int32), 0)
  rel = metrics_lib.binary_relevance(jnp.asarray(query_target, jnp.float32), qmask, rel_spec) & qmask
  n_rel = jnp.sum(rel).astype(jnp.float32)
  s_q, s_neg = scores[idx], scores[jnp.asarray(negatives, jnp.int32)]  # [Q], [Q, N]
  n = s_neg.shape[1]
  g = jnp.sum(s_neg > s_q[:, None], axis=1)  # one relevant entry among N negatives: position g .. g + m - 1
  m = 1 + jnp.sum(s_neg == s_q[:, None], axis=1)
  out = {}
  for s in specs:
    if s.base == "auc":
      per = (n - g - (m - 1) + 0.5 * (m - 1)) / n
    elif s.base in ("hr", "recall", "precision"):
      per = jnp.clip(s.k - g, 0, m) / m / (s.k if s.base == "precision" else 1)
    elif s.base == "ndcg_bin":
      d = _discounts(s.k)
      per = (d[jnp.minimum(g + m, s.k)] - d[jnp.minimum(g, s.k)]) / m
    else:  # mrr: mean of 1 / (p + 1) over the positions p < k the entry may take
      inv = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1.0, s.k + 1.0))])
      per = (inv[jnp.minimum(g + m, s.k)] - inv[jnp.minimum(g, s.k)]) / m
    out[s.name] = jnp.where(n_rel > 0, jnp.sum(jnp.where(rel, per, 0.0)) / jnp.maximum(n_rel, 1.0), jnp.nan)
  return out


@functools.lru_cache(maxsize=32)
def _batched(protocol: str, names: tuple[str, ...], relevance_spec: str):
  fn = catalogue_task if protocol == "catalogue" else sampled_task
  return jax.jit(jax.vmap(lambda *a: fn(names, *a, relevance_spec=relevance_spec)))


def catalogue_batch(metric_names, scores, candidates, query_index, query_target, query_mask, relevance_spec):
  """`catalogue_task` vmapped over tasks and jitted: inputs with a leading [T] -> {name: f32 [T]} in order."""
  out = _batched("catalogue", tuple(metric_names), relevance_spec)(
    scores, candidates, query_index, query_target, query_mask
  )
  return {n: out[n] for n in metric_names}


def sampled_batch(metric_names, scores, query_index, query_target, query_mask, negatives, relevance_spec):
  """`sampled_task` vmapped over tasks and jitted: inputs with a leading [T] -> {name: f32 [T]} in order."""
  out = _batched("sampled", tuple(metric_names), relevance_spec)(
    scores, query_index, query_target, query_mask, negatives
  )
  return {n: out[n] for n in metric_names}


def aggregate(per_task: Mapping[str, np.ndarray], task_mask: np.ndarray) -> dict[str, float]:
  """Mean of each metric over the real tasks where it is defined; '<name>/tasks' counts them.

  Args:
    per_task: {name: f32 [T]} (NaN where undefined).
    task_mask: bool [T]; False marks padded tasks.
  Returns:
    {name: mean (NaN if defined nowhere), name + '/tasks': number of tasks averaged}.
  """
  task_mask = np.asarray(task_mask, bool)
  out = {}
  for name, values in per_task.items():
    v = np.asarray(values, np.float64)[task_mask]
    ok = ~np.isnan(v)
    out[name] = float(v[ok].mean()) if ok.any() else float("nan")
    out[f"{name}/tasks"] = float(ok.sum())
  return out


# ---------------------------------------------------------------------------------------------------------------
# Beyond accuracy (numpy, over top-k lists).


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int, tiebreak: np.ndarray) -> np.ndarray:
  """int [T, k]: each task's k best candidates, best first; ties by `tiebreak` [C] (a rank per entry, lower first).

  Raises ValueError if a task has fewer than k candidates.
  """
  scores, candidates = np.asarray(scores, np.float64), np.asarray(candidates, bool)
  short = np.flatnonzero(candidates.sum(axis=1) < k)
  if short.size:
    raise ValueError(f"{short.size} task(s) have fewer than k={k} candidates (e.g. row {short[0]}); lower k")
  key = np.where(candidates, -scores, np.inf)
  order = np.lexsort((np.broadcast_to(tiebreak, key.shape), key), axis=1)
  return order[:, :k]


def coverage(lists: np.ndarray, n_entries: int) -> float:
  """Share of the `n_entries` catalogue entries in at least one of the lists int [T, k]."""
  return float(np.unique(lists).size / n_entries)


def gini(lists: np.ndarray, n_entries: int) -> float:
  """Gini coefficient of the recommendation counts of all `n_entries` entries (unrecommended ones count 0).

  G = sum_i (2i - n - 1) x_(i) / (n sum x), x sorted ascending, i = 1..n.
  """
  x = np.sort(np.bincount(np.asarray(lists).ravel(), minlength=n_entries).astype(np.float64))
  n = x.size
  i = np.arange(1, n + 1)
  return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def intra_list_diversity(lists: np.ndarray, vectors: np.ndarray) -> float:
  """Mean over lists of the mean pairwise cosine distance (1 - cos) of their entries' `vectors` [C, D].

  A zero vector has cosine 0 with every vector. Lists need k >= 2.
  """
  lists = np.asarray(lists)
  if lists.shape[1] < 2:
    raise ValueError(f"intra-list diversity needs lists of at least 2 entries, got k={lists.shape[1]}")
  v = np.asarray(vectors, np.float64)[lists]  # [T, k, D]
  norm = np.linalg.norm(v, axis=-1, keepdims=True)
  unit = np.where(norm > 0, v / np.where(norm > 0, norm, 1.0), 0.0)
  cos = np.einsum("tkd,tjd->tkj", unit, unit)
  k = lists.shape[1]
  off = ~np.eye(k, dtype=bool)
  return float(np.mean((1.0 - cos)[:, off].mean(axis=1)))


def novelty(lists: np.ndarray, train_counts: np.ndarray, n_other: int) -> float:
  """Mean of -log2((c_i + 1) / (n_other + 1)) over every entry of every list (see the module docstring)."""
  p = (np.asarray(train_counts, np.float64)[np.asarray(lists)] + 1.0) / (n_other + 1.0)
  return float(np.mean(-np.log2(p)))
