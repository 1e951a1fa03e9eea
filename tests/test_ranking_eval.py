"""Ranking protocols on a real (synthetic) split: chunked scoring, candidates, sampled negatives, baselines,
breakdowns and the run-level hooks, each checked against an independent computation from the raw data."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import optax
import pytest

from transfer_meta import baselines as B
from transfer_meta import evaluate, report, train
from transfer_meta import ranking_eval as RE
from transfer_meta import results as results_lib
from transfer_meta.learners import get_learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_NEG = 20


def _config(**overrides):
  spec = importlib.util.spec_from_file_location("cfg_smoke", os.path.join(ROOT, "configs", "smoke_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.unlock()
  c.seeds, c.eval_ranking, c.ranking.negatives = 1, ("query", "catalogue", "sampled"), N_NEG
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


@pytest.fixture(scope="module")
def exp():
  return train.build_experiment(_config())


@pytest.fixture(scope="module")
def trained(exp):
  """A MAML learner at its (untrained) initialisation: scores vary by item and user, which is all we need."""
  learner = get_learner("maml", exp.model, **exp.config.learner.to_dict())
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
  meta_params, _ = train.init_one(learner, optax.sgd(0.1), example, jax.random.key(0))
  return learner, meta_params


def _rated(data) -> dict:
  out = {}
  for u, i in zip(data.user.tolist(), data.item.tolist()):
    out.setdefault(u, set()).add(i)
  return out


def _cfg(exp):
  return RE.RankingConfig.from_config(exp.config)


def test_chunked_scores_equal_unchunked_and_the_query_evaluation(exp, trained):
  learner, params = trained
  st, key = exp.seeds[0], jax.random.key(3)
  td = st.tasks["new_user"]
  batch, positions = td.batch(np.arange(5), 8), np.arange(5)
  whole = RE.learner_scorer(learner, "user", 10_000, exp.feats, params, key)(batch, positions)
  chunked = RE.learner_scorer(learner, "user", 7, exp.feats, params, key)(batch, positions)  # 150 = 21 * 7 + 3
  assert whole.shape == chunked.shape == (8, exp.data.n_items)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  assert np.std(whole[0]) > 0  # a real scorer, not a constant
  # At the query entries the catalogue scores are the query evaluation's scores (same adaptation, same key).
  for t in range(5):
    task = {k: train.unstack(batch[k], t) for k in ("support", "query")}
    want = evaluate.score_task(
      learner, params, task["support"], task["query"], jax.random.fold_in(key, batch["task_id"][t])
    )
    n = int(td.query_sizes[t])
    np.testing.assert_allclose(whole[t, task["query"]["item"][:n]], np.asarray(want)[:n], rtol=1e-5, atol=1e-6)


def test_candidates_are_the_unrated_items_plus_the_query(exp):
  st = exp.seeds[0]
  rated = _rated(exp.data)
  rel = RE.relevance_spec(st.split)
  for tb in RE.task_batches(exp.data, st.split, "warm", st.tasks["warm"], rel, 16):
    cand = RE.candidates(tb.unrated, tb.q_index, tb.q_mask)
    for b, user in enumerate(tb.owners):
      query = set(tb.q_index[b][tb.q_mask[b]].tolist())
      want = (set(range(exp.data.n_items)) - rated[int(user)]) | query
      assert set(np.flatnonzero(cand[b]).tolist()) == want
      assert query <= rated[int(user)]  # query entries are rated by the user: candidates only through the query
    break


def test_sampled_negatives_are_never_rated_distinct_and_seeded(exp):
  st, cfg = exp.seeds[0], _cfg(exp)
  rated = _rated(exp.data)
  record = RE.sample_record(exp.data, st.split, "new_user", st.tasks["new_user"], cfg, st.seed)
  assert record["negatives"] == N_NEG and record["tasks"]
  taskset = st.split.tasks["new_user"]
  n_slots = 0
  for t, entry in record["tasks"].items():
    user = int(t)
    pos = int(np.flatnonzero(taskset.task_ids == user)[0])
    query_rows = taskset.query(pos)
    ratings = dict(zip(exp.data.item[query_rows].tolist(), st.split.target[query_rows].tolist()))
    assert all(ratings[q] >= 4 for q in entry["query"])  # threshold:4 (melu has no binary spec)
    assert sorted(entry["query"]) == sorted(q for q, r in ratings.items() if r >= 4)
    for negs in entry["negatives"]:
      assert len(negs) == N_NEG and len(set(negs)) == N_NEG
      assert not set(negs) & rated[user], "a sampled negative is an item the user rated"
      n_slots += 1
  assert n_slots > 10
  again = RE.sample_record(exp.data, st.split, "new_user", st.tasks["new_user"], cfg, st.seed, batch_size=5)
  assert again["hash"] == record["hash"]  # a function of (seed, set, task), not of the batching
  other = RE.sample_record(exp.data, st.split, "new_user", st.tasks["new_user"], cfg, st.seed + 1)
  assert other["hash"] != record["hash"]


def test_too_few_unrated_items_for_the_negatives_is_refused(exp):
  st = exp.seeds[0]
  cfg = RE.RankingConfig.from_config(_config(ranking=dict(exp.config.ranking.to_dict(), negatives=exp.data.n_items)))
  with pytest.raises(ValueError, match="fewer than negatives"):
    RE.sample_record(exp.data, st.split, "warm", st.tasks["warm"], cfg, st.seed)


def test_catalogue_baselines_equal_query_baselines_at_the_query(exp):
  assert set(B.CATALOGUE) == set(B.BASELINES)
  st = exp.seeds[0]
  ts = st.split.tasks["warm"]
  positions = np.arange(len(ts))
  items = exp.data.item[ts.query_rows]
  task_of_row = np.repeat(positions, ts.query_sizes())
  for name in B.applicable(st.split):  # the cross-domain ones: tests/test_cross_domain.py
    cat = B.catalogue_scores(name, exp.data, st.split, ts, positions, seed=1)
    assert cat.shape == (len(ts), exp.data.n_items)
    if name == "random":  # drawn per task from its id: the same whatever the batch
      np.testing.assert_array_equal(cat[3], B.catalogue_scores(name, exp.data, st.split, ts, [3], seed=1)[0])
      continue
    want = B.baseline_scores(name, exp.data, st.split, ts, seed=1)
    np.testing.assert_allclose(cat[task_of_row, items], want, rtol=1e-6, err_msg=name)


def test_popularity_ranks_items_by_training_count(exp):
  st = exp.seeds[0]
  counts = np.bincount(exp.data.item[st.split.tasks["train"].all_rows()], minlength=exp.data.n_items)
  scores = B.catalogue_scores("popularity", exp.data, st.split, st.split.tasks["warm"], [0])[0]
  low, high = B.target_scale(exp.data, st.split)
  np.testing.assert_allclose(scores, low + (high - low) * counts / counts.max(), rtol=1e-6)


def test_constant_scorer_has_the_random_ranking_expectation(exp):
  """All scores tied: E[recall@k] = k / #candidates exactly, and sampled hr@k = k / (N + 1)."""
  st, cfg = exp.seeds[0], _cfg(exp)
  res = RE.evaluate_set(
    exp.data, st.split, "warm", st.tasks["warm"], RE.baseline_scorer("constant", exp.data, st.split, "warm", 0), cfg, 0
  )
  rated = _rated(exp.data)
  ts = st.split.tasks["warm"]
  rel = st.split.target[ts.query_rows] >= 4
  per_task = []
  for t in range(len(ts)):
    q = ts.query(t)
    n_rel = int((st.split.target[q] >= 4).sum())
    if n_rel:
      per_task.append(10 / (exp.data.n_items - len(rated[int(ts.task_ids[t])]) + len(q)))
  cat = res.metrics["warm/catalogue"]
  assert cat["recall@10"] == pytest.approx(np.mean(per_task), rel=1e-5)
  assert cat["recall@10/tasks"] == len(per_task) and rel.any()
  assert cat["auc"] == pytest.approx(0.5)
  assert res.metrics["warm/sampled"]["hr@10"] == pytest.approx(10 / (N_NEG + 1), rel=1e-5)
  # Breakdown counts add up: tasks by support size, relevant entries by popularity.
  bd = res.breakdown["warm/catalogue"]
  assert sum(bd[f"K={b}/tasks"] for b in RE.bin_labels(cfg.support_bins)) == len(ts)
  assert sum(bd[f"pop={b}/entries"] for b in RE.bin_labels(cfg.popularity_bins)) == int(rel.sum())
  sizes = ts.support_sizes()
  assert bd["K=6-20/tasks"] == int(((sizes >= 6) & (sizes <= 20)).sum())


def test_evaluate_set_draws_the_recorded_sample(exp):
  st, cfg = exp.seeds[0], _cfg(exp)
  scorer = RE.baseline_scorer("item_mean", exp.data, st.split, "new_item", 0)
  res = RE.evaluate_set(exp.data, st.split, "new_item", st.tasks["new_item"], scorer, cfg, st.seed, batch_size=7)
  record = RE.sample_record(exp.data, st.split, "new_item", st.tasks["new_item"], cfg, st.seed)
  assert res.sample["hash"] == record["hash"]


def test_bins():
  assert RE.bin_labels((1, 6, 21)) == ["1-5", "6-20", "21+"]
  assert RE.bin_labels((0, 1, 11, 101)) == ["0", "1-10", "11-100", "101+"]
  np.testing.assert_array_equal(RE.bin_of(np.array([0, 1, 5, 6, 20, 21, 300]), (1, 6, 21)), [-1, 0, 0, 1, 1, 2, 2])


def test_run_hooks_add_named_protocols_and_the_manifest(exp, trained, tmp_path):
  learner, params = trained
  _, eval_keys = train.seed_keys([0])
  per_seed = [{name: {"mae": 1.0} for name in exp.eval_sets}]
  out = RE.rank_seeds(exp, per_seed, RE.rank_learner(exp, learner, lambda n: params, eval_keys))
  scenarios = exp.seeds[0].split.scenarios
  for s in scenarios:
    assert {"recall@10", "auc", "coverage@10", "gini@10", "novelty@10", "ild@10:genre"} <= set(out[0][f"{s}/catalogue"])
    assert "ndcg@10" not in out[0][f"{s}/sampled"] and "hr@10" in out[0][f"{s}/sampled"]
    assert "K=1-5/ndcg@3" in out[0][s] and out[0][s]["mae"] == 1.0  # query breakdown beside the query metrics
  assert "valid/catalogue" not in out[0]
  base = RE.rank_baselines(exp, [B.evaluate_baselines(exp.data, exp.seeds[0].split, exp.config.baselines)])
  assert set(base[0]["item_user_offset"]) >= {f"{s}/sampled" for s in scenarios}
  results_lib.write_run_files(exp, str(tmp_path))
  with open(tmp_path / "ranking_manifest.json") as f:
    manifest = json.load(f)
  assert manifest[0]["relevance"] == "threshold:4" and set(manifest[0]["sampled"]) == set(scenarios)


def test_default_config_leaves_evaluation_unchanged():
  c = train.default_config()
  assert tuple(c.eval_ranking) == ("query",)
  assert RE.RankingConfig.from_config(c).extra == ()
  assert "popularity" in c.baselines


def test_bad_ranking_config_is_refused():
  with pytest.raises(ValueError, match="'query' among them"):
    RE.RankingConfig.from_config(_config(eval_ranking=("catalogue",)))
  bad = _config()
  bad.unlock()
  bad.ranking.negatives = 0
  with pytest.raises(ValueError, match="negatives=0 must be >= 1"):
    RE.RankingConfig.from_config(bad)
  bad.ranking.negatives, bad.ranking.support_bins = 5, (6, 1)
  with pytest.raises(ValueError, match="strictly increasing"):
    RE.RankingConfig.from_config(bad)


def test_experiment_tables_put_the_protocols_side_by_side():
  from experiments import ranking as X

  values = {
    "a": {
      "warm": {"mae": [1.0], "ndcg@3": [0.7, 0.9], "K=1-5/ndcg@3": [0.5, 0.7], "K=1-5/tasks": [4, 6]},
      "warm/catalogue": {"recall@10": [0.1, 0.3], "recall@10/tasks": [9, 9], "coverage@10": [0.2, 0.2]},
      "warm/sampled": {"recall@10": [0.4, 0.6]},
    },
    "b": {"warm": {"ndcg@3": [0.5, 0.5]}, "warm/catalogue": {"recall@10": [0.5, 0.7]}, "warm/sampled": {}},
  }
  assert X.query_columns(values["a"]["warm"]) == ["ndcg@3"]
  got = X.side_by_side(values, ["warm"], ["ndcg@3"], ["recall@10"])
  assert got["a"]["warm"] == {
    "query ndcg@3": [0.7, 0.9],
    "catalogue recall@10": [0.1, 0.3],
    "coverage@10": [0.2, 0.2],
    "sampled recall@10": [0.4, 0.6],
  }
  rows = report.summarize({m: {"warm": v["warm"]} for m, v in got.items()})
  assert X.best(rows, "query ndcg@3") == "a (clear)"  # 0.8 ± 0.1 vs 0.5 ± 0
  assert X.best(rows, "catalogue recall@10") == "b (clear)"  # 0.6 ± 0.1 vs 0.2 ± 0.1
  assert X.best(rows, "sampled recall@10") == "a"  # the only method with a value
  close = report.summarize({"a": {"w": {"x": [0.5, 0.7]}}, "b": {"w": {"x": [0.5, 0.56]}}})
  assert X.best(close, "x") == "a (within noise of b)"  # lead 0.07 < std 0.1
  table = X.breakdown(values, "warm", "ndcg@3", "K=", "tasks")
  assert table["a"] == {"warm": {"K=1-5": [0.5, 0.7]}} and table["(tasks)"] == {"warm": {"K=1-5": [4, 6]}}
