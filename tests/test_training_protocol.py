"""Issue 8's training-protocol capabilities: episodic resampling (and its exact resume), the support in the outer
loss, per-side id switches, the trained out-of-vocabulary row, ordinal features as numbers, and residual scoring
over a reference baseline (checked against `baselines.py` computed independently)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import transfer_meta as tm
from transfer_meta import baselines, evaluate, runlog, train
from transfer_meta.data import categorical
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.data.interactions import DataError
from transfer_meta.data.tasks import PRIOR, TaskData, TaskIterator, eval_batches, resample_rng
from transfer_meta.models import get_model
from transfer_meta.models.base import param_paths
from transfer_meta.models.residual import with_residual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U, I = 6, 8


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def data():
  return tm.load_dataset("synthetic", n_users=200, n_items=150, ratings_per_user=(15, 40), seed=0)  # smoke's


@pytest.fixture(scope="module")
def split(data):
  return tm.make_protocol("melu", data, seed=0, n_query=5, min_support=3)


@pytest.fixture(scope="module")
def train_tasks(data, split):
  prior = baselines.reference_prior("item_user_offset", data, split)
  return TaskData.from_split(data, split, "train", buckets=(8, 48), prior=prior)


def _rows(part: dict, t: int) -> set:
  """(user, item, target, prior) of task t's real entries."""
  m = part["mask"][t]
  return set(zip(part["user"][t][m], part["item"][t][m], part["target"][t][m], part[PRIOR][t][m]))


# --- episodic resampling ------------------------------------------------------------------------------------


def test_resampled_keeps_each_tasks_rows_and_sizes_and_moves_them(train_tasks):
  fresh = train_tasks.resampled(resample_rng(0, 1))
  moved = 0
  for t in range(len(train_tasks)):
    s0, q0 = _rows(train_tasks.support, t), _rows(train_tasks.query, t)
    s1, q1 = _rows(fresh.support, t), _rows(fresh.query, t)
    assert s1 | q1 == s0 | q0 and not s1 & q1  # same rows, still disjoint, prior moved with its row
    assert len(s1) == train_tasks.support_sizes[t] and len(q1) == train_tasks.query_sizes[t]
    moved += q1 != q0
  assert moved >= 0.9 * len(train_tasks)
  for part in ("support", "query"):  # padding stays zero and masked
    pad = ~getattr(fresh, part)["mask"]
    assert all(not np.any(v[pad]) for v in getattr(fresh, part).values())


def test_resampling_is_a_pure_function_of_seed_and_pass(train_tasks):
  a = train_tasks.resampled(resample_rng(3, 2)).query["item"]
  assert np.array_equal(a, train_tasks.resampled(resample_rng(3, 2)).query["item"])
  assert not np.array_equal(a, train_tasks.resampled(resample_rng(3, 5)).query["item"])
  assert not np.array_equal(a, train_tasks.resampled(resample_rng(4, 2)).query["item"])


def test_over_passes_the_outer_loss_sees_every_training_rating(train_tasks):
  it = TaskIterator(train_tasks, batch_size=16, seed=0, resample=True)
  fixed = {(u, i) for t in range(len(train_tasks)) for u, i, *_ in _rows(train_tasks.query, t)}
  seen = set()
  for _ in range(-(-len(train_tasks) // 16) * 12):  # 12 passes
    b = next(it)
    m = b["query"]["mask"]
    seen |= set(zip(b["query"]["user"][m], b["query"]["item"][m]))
  everything = {(u, i) for t in range(len(train_tasks)) for u, i, *_ in _rows(train_tasks.support, t)} | fixed
  assert len(fixed) < 0.5 * len(everything)  # a fixed split's outer loss sees a minority of training ratings
  assert len(seen) > 0.95 * len(everything)


def test_resampling_iterator_restores_exactly(train_tasks):
  per_pass = len(train_tasks) // 16
  a = TaskIterator(train_tasks, 16, seed=1, drop_remainder=True, resample=True)
  first = [next(a) for _ in range(per_pass + 2)]  # crosses a pass boundary
  state = a.state()
  assert state["epoch"] == 1
  rest = [next(a) for _ in range(per_pass)]  # crosses the next one
  b = TaskIterator(train_tasks, 16, seed=1, drop_remainder=True, resample=True)
  b.restore(state)
  for x, y in zip(rest, [next(b) for _ in range(per_pass)]):
    jax.tree.map(np.testing.assert_array_equal, x, y)
  plain = TaskIterator(train_tasks, 16, seed=1, drop_remainder=True)
  plain.restore({"epoch": 1, "position": 0})  # the same tasks in the same order, from the fixed split
  x, y = first[per_pass], next(plain)
  np.testing.assert_array_equal(x["task_id"], y["task_id"])
  assert not np.array_equal(x["query"]["item"], y["query"]["item"])


def test_outer_support_puts_support_then_query_in_the_query(train_tasks):
  idx = np.array([0, 3, 5])
  b = train_tasks.batch(idx, 4, outer_support=True)
  plain = train_tasks.batch(idx, 4)
  for t, task in enumerate(idx):
    n_s, n_q = train_tasks.support_sizes[task], train_tasks.query_sizes[task]
    m = b["query"]["mask"][t]
    assert m.sum() == n_s + n_q and m[: n_s + n_q].all()
    want = np.concatenate([plain["support"]["item"][t][:n_s], plain["query"]["item"][t][:n_q]])
    np.testing.assert_array_equal(b["query"]["item"][t][: n_s + n_q], want)
    np.testing.assert_array_equal(b["query"][PRIOR][t][:n_s], plain["support"][PRIOR][t][:n_s])
  assert not b["query"]["mask"][3].any()  # the padded task stays empty
  jax.tree.map(np.testing.assert_array_equal, b["support"], plain["support"])


def test_evaluation_batches_are_never_resampled(data, split):
  valid = TaskData.from_split(data, split, "valid")
  a = [b["query"]["item"] for b in eval_batches(valid, 32)]
  b = [b["query"]["item"] for b in eval_batches(valid, 32)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --- id switches --------------------------------------------------------------------------------------------

SPEC = FeatureSpec(U, I, (3,), (4,), 0, 2, 0, 0)


def _has(model, x, table: str) -> bool:
  return any(table in p for p in param_paths(model.init(jax.random.key(0), x, x)))


@pytest.mark.parametrize("name", ["melu", "mf", "two_tower"])
def test_user_and_item_ids_switch_separately(name):
  feats = FeatureMatrices(
    np.zeros((U, 1), np.int32),
    np.ones((I, 1), np.int32),
    np.zeros((U, 0), np.float32),
    np.ones((I, 2), np.float32),
    np.zeros((U, 0), np.float32),
    np.zeros((I, 0), np.float32),
  )
  x = make_examples(feats, np.arange(4), np.arange(4))
  user_table, item_table = ("user_id", "item_id") if name != "two_tower" else ("user_tower/id", "item_tower/id")
  for user, item in ((True, False), (False, True), (True, True), (False, False)):
    model = get_model(name, SPEC, use_user_ids=user, use_item_ids=item)
    assert (_has(model, x, user_table), _has(model, x, item_table)) == (user, item)
  both = get_model(name, SPEC, use_ids=True)
  assert _has(both, x, user_table) and _has(both, x, item_table)  # use_ids keeps switching both
  with pytest.raises(ValueError, match="contradicts use_item_ids"):
    get_model(name, SPEC, use_ids=True, use_item_ids=False)
  # Only item ids: two users with the same features score every item the same; item ids separate items.
  model = get_model(name, SPEC, use_user_ids=False, use_item_ids=True)
  params = model.init(jax.random.key(0), x, x)
  params = jax.tree_util.tree_map_with_path(
    lambda p, v: v + 0.3 if item_table in "/".join(str(getattr(k, "key", k)) for k in p) else v, params
  )
  xu = make_examples(feats, np.array([0, 1]), np.array([2, 2]))
  s = model.apply(params, xu, xu)
  assert float(s[0]) == pytest.approx(float(s[1]), abs=1e-6)


def test_transformer_task_side_ids():
  feats = FeatureMatrices(
    np.zeros((U, 1), np.int32),
    np.ones((I, 1), np.int32),
    np.zeros((U, 0), np.float32),
    np.ones((I, 2), np.float32),
    np.zeros((U, 0), np.float32),
    np.zeros((I, 0), np.float32),
  )
  x = make_examples(feats, np.zeros(4, np.int32), np.arange(4), np.arange(4, dtype=np.float32))
  paths = lambda m: param_paths(m.init(jax.random.key(0), x, x))  # noqa: E731
  assert not any("task_id" in p for p in paths(get_model("transformer", SPEC)))
  assert any("task_id" in p for p in paths(get_model("transformer", SPEC, use_user_ids=True)))
  assert not any("token_id" in p for p in paths(get_model("transformer", SPEC, use_item_ids=False)))
  with pytest.raises(ValueError, match="contradicts use_item_ids"):
    get_model("transformer", SPEC, use_ids=False, use_item_ids=True)


# --- OOV rows and ordinal features --------------------------------------------------------------------------


def test_oov_column_maps_unseen_and_rare_values():
  values = np.array([1, 1, 1, 2, 2, 3, 4, 4, 0], np.int32)  # entities 0..8; value 4 only on non-training ones
  train = np.arange(6)  # values 1 (x3), 2 (x2), 3 (x1) in training
  out = categorical.oov_column(values, train, size=5, min_count=2)
  np.testing.assert_array_equal(out, [1, 1, 1, 2, 2, 5, 5, 5, 5])  # 3 rare; 4 and 0 unseen -> OOV 5
  # No rare value but an unseen one: the least frequent training value (2) is held out into the OOV row.
  out = categorical.oov_column(np.array([1, 1, 1, 2, 2, 4], np.int32), np.arange(5), size=5, min_count=2)
  np.testing.assert_array_equal(out, [1, 1, 1, 5, 5, 5])
  with pytest.raises(ValueError, match="must be >= 2"):
    categorical.oov_column(values, train, 5, 1)


def _oov_experiment(min_count: int):
  c = load_config("smoke_synthetic", "tiny")
  c.seeds, c.oov_min_count, c.compare_learners = 1, min_count, ()
  c.num_steps, c.eval_every, c.checkpoint_every = 4, 4, 4
  c.learner_name, c.learner = "none", ml_collections.ConfigDict()
  return train.build_experiment(c)


def _year_table(exp, workdir):
  """(release-year embedding table at init, after training; the new_item scenario's year ids [I])."""
  mlog = runlog.MetricsLog(os.path.join(workdir, "metrics.jsonl"), ["none"])
  trained = train.train_learner(exp, "none", {}, workdir, mlog)
  learner = trained.learner
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
  keys, _ = train.seed_keys([0])
  init = train.make_init(learner, train.make_optimizer(exp.config), example)[1](keys)["meta_params"]
  table = lambda p: np.asarray(p["params"]["item_features"]["cat_0"]["embedding"][0])  # noqa: E731
  return table(init), table(trained.selection.params), exp.seeds[0].tasks["new_item"]


def test_a_year_absent_from_training_rows_reads_a_trained_oov_row(tmp_path):
  exp = _oov_experiment(min_count=3)
  split, data = exp.seeds[0].split, exp.data
  users, items = categorical.train_entities(data, split)
  size = FeatureSpec.from_interactions(data).item_cat_sizes[0]
  years = data.item_features.cat_matrix()[:, 0]
  new_years = sorted(set(years[np.unique(data.item[split.tasks["new_item"].query_rows])]) - set(years[items]))
  assert new_years  # the melu protocol's new items are released after the cutoff: years training never shows
  init, trained, new_item = _year_table(exp, str(tmp_path / "oov"))
  assert init.shape[0] == size + 1
  read = np.unique(new_item.batch(np.arange(len(new_item)))["query"]["item_cat"][..., 0])
  assert size in read and not set(new_years) & set(read)  # cold items read the OOV row, never their own row
  assert np.abs(trained[size] - init[size]).max() > 1e-4  # ... and that row was trained
  # Without OOV the same year's own row is read and training never moves it: the defect this fixes.
  init0, trained0, _ = _year_table(_oov_experiment(min_count=0), str(tmp_path / "plain"))
  np.testing.assert_array_equal(init0[new_years], trained0[new_years])


def test_ordinal_feature_as_standardised_number(data):
  out = categorical.ordinal_as_dense(data, ["release_year"])
  col = out.item_features.dense["release_year_numeric"][:, 0]
  year = data.item_year.astype(np.float64)
  want = (year - year[year > 0].mean()) / year[year > 0].std()
  np.testing.assert_allclose(col[year > 0], want[year > 0], rtol=1e-5, atol=1e-5)
  assert np.all(col[year <= 0] == 0)
  with pytest.raises(DataError, match="not categorical on either side"):
    categorical.ordinal_as_dense(data, ["genre"])
  with pytest.raises(DataError, match="not a number"):
    categorical.ordinal_as_dense(data, ["occupation"])


# --- residual scoring ---------------------------------------------------------------------------------------


def test_reference_prior_uses_training_rows_only_and_leaves_one_out(data, split):
  lam = 5.0
  prior = baselines.reference_prior("item_mean", data, split, lam)
  train = np.unique(split.tasks["train"].all_rows())
  mu = split.target[train].mean()
  for r in list(train[:20]) + list(split.tasks["new_user"].query_rows[:20]):
    others = [j for j in train if data.item[j] == data.item[r] and j != r]
    want = (split.target[others].sum() + lam * mu) / (len(others) + lam)
    assert prior[r] == pytest.approx(want, rel=1e-5)
  # Query targets of an evaluation scenario never reach the prior.
  q = split.tasks["new_user"].query_rows
  target = split.target.copy()
  target[q] = 6.0 - target[q]
  moved = dataclasses.replace(split, target=target)
  np.testing.assert_array_equal(baselines.reference_prior("item_user_offset", data, moved, lam)[q], prior[q])
  np.testing.assert_allclose(baselines.reference_prior("global_mean", data, split), mu, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown reference"):
    baselines.reference_prior("user_mean", data, split)


@pytest.mark.parametrize("kind", ["global_mean", "item_mean", "item_user_offset"])
def test_residual_over_a_zero_network_scores_exactly_the_baseline(data, split, kind):
  spec = FeatureSpec.from_interactions(data)
  model = with_residual(get_model("melu", spec, emb_dim=4, hidden=(8,), global_bias=0.0), kind, lam=5.0)
  scen = TaskData.from_split(data, split, "new_user", prior=baselines.reference_prior(kind, data, split))
  b = scen.batch(np.arange(len(scen)))
  params = model.init(jax.random.key(0), train.unstack(b["query"], 0), train.unstack(b["support"], 0))
  params["params"]["output"] = jax.tree.map(jnp.zeros_like, params["params"]["output"])  # network output 0
  scores = jax.vmap(model.apply, in_axes=(None, 0, 0))(params, b["query"], b["support"])
  want = baselines.baseline_scores(kind, data, split, split.tasks["new_user"], lam=5.0)
  got = np.concatenate([np.asarray(scores[t])[b["query"]["mask"][t]] for t in range(len(scen))])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A trained network moves the scores off the baseline (the residual is learned on top, not instead).
  moved = jax.tree.map(lambda v: v + 0.1, params)
  assert not np.allclose(
    np.asarray(jax.vmap(model.apply, in_axes=(None, 0, 0))(moved, b["query"], b["support"])), scores
  )


def test_residual_without_a_prior_fails_clearly(data):
  spec = FeatureSpec.from_interactions(data)
  model = with_residual(get_model("melu", spec, emb_dim=4, hidden=(8,)), "item_mean")
  x = make_examples(FeatureMatrices.from_interactions(data), np.arange(3), np.arange(3))
  params = model.init(jax.random.key(0), x, x)
  with pytest.raises(ValueError, match="needs examples with key 'prior'"):
    model.apply(params, x, x)
  with pytest.raises(ValueError, match="unknown residual reference"):
    with_residual(model, "median")


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
  """A tiny run with every serving-relevant protocol field on, and its bundle for seed 1."""
  c = load_config("smoke_synthetic", "tiny")
  c.num_steps, c.eval_every, c.compare_learners, c.baselines = 4, 2, (), ()
  c.plots = False  # no check reads the PNGs (tests/test_run_outputs.py checks them)
  c.residual, c.resample_train, c.oov_min_count, c.ordinal_features = "item_user_offset", True, 3, ("release_year",)
  workdir = str(tmp_path_factory.mktemp("protocol_serving"))
  tm.train_and_evaluate(c, workdir)
  exp = train.build_experiment(c)
  return exp, tm.load_meta_params(workdir, seed_index=1, data=tm.load_dataset(c.dataset_name, **c.dataset))


def test_serving_a_residual_oov_run_scores_what_the_evaluator_scores(protocol_run):
  exp, bundle = protocol_run
  st, data = exp.seeds[1], exp.data
  ts = st.split.tasks["new_user"]
  for t in (0, 3):
    s_rows, q_rows = ts.support(t), ts.query(t)
    batch = st.tasks["new_user"].batch(np.array([t]))
    support, query = train.unstack(batch["support"], 0), train.unstack(batch["query"], 0)
    want = evaluate.score_task(bundle.learner, bundle.meta_params, support, query, jax.random.key(0))
    user = data.user_raw_ids[data.user[s_rows[0]]]
    out = tm.adapt(bundle, data.item_raw_ids[data.item[s_rows]], data.rating[s_rows], user=user)
    np.testing.assert_allclose(out.scores[data.item[q_rows]], np.asarray(want)[: q_rows.size], rtol=1e-5, atol=1e-5)
  # New users' stored features went through the OOV maps (some of them read the OOV row), as in evaluation.
  oov = [int(m.shape[0]) for m in bundle.user_maps]
  stored = categorical.remap(data.user_features.cat_matrix()[data.user[ts.support_rows]], bundle.user_maps)
  assert any((stored[:, f] == size).any() for f, size in enumerate(oov))


def test_the_main_configs_residual_model_starts_at_its_reference(data):
  """The shipped config carries every backbone keyword (global_bias=3.5 among them): under `residual` the
  network's output bias must still start at 0, or every score starts 3.5 above the reference."""
  from transfer_meta import keywords

  config = keywords.complete(load_config("melu_ml100k", "smoke"))  # what the command line runs
  assert config.residual and config.model.global_bias == 3.5  # the filled rating-scale default
  model = train.build_model(config, FeatureSpec.from_interactions(data))
  x = make_examples(FeatureMatrices.from_interactions(data), np.arange(3), np.arange(3))
  params = model.init(jax.random.key(0), x, x)
  np.testing.assert_array_equal(np.asarray(params["params"]["output"]["bias"]), 0.0)
