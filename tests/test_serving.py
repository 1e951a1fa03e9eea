"""Serving: load only the meta-initialisation of a finished run, adapt it to a user's ratings, score the catalogue;
the scores equal the evaluator's for the same task."""

from __future__ import annotations

import importlib.util
import os

import chex
import jax
import numpy as np
import pytest

from transfer_meta import evaluate, serving, train
from transfer_meta.checkpoint import Checkpointer
from transfer_meta.data.interactions import DataError
from transfer_meta.learners import get_learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  spec = importlib.util.spec_from_file_location("smoke_cfg", os.path.join(ROOT, "configs", "smoke_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  with config.unlocked():
    config.num_steps, config.eval_every, config.compare_learners, config.baselines = 4, 2, (), ()
  return config


@pytest.fixture(scope="module")
def run(smoke_tiny_runs):
  """conftest's smoke_tiny_runs run 1 (configs/smoke_synthetic.py:tiny, 4 steps, 2 seeds; also test_run_outputs')."""
  workdir, _, config = smoke_tiny_runs(1)
  exp = train.build_experiment(config)
  return workdir, exp, serving.load_meta_params(workdir, seed_index=1, data=exp.data)


def _new_user_task(exp, seed_pos: int, t: int):
  """(raw user id, raw item ids, ratings of the support; dense query items; the task's support/query examples)."""
  st = exp.seeds[seed_pos]
  ts = st.split.tasks["new_user"]
  s_rows, q_rows = ts.support(t), ts.query(t)
  data = exp.data
  batch = st.tasks["new_user"].batch(np.array([t]))
  task = {"support": train.unstack(batch["support"], 0), "query": train.unstack(batch["query"], 0)}
  return (
    data.user_raw_ids[data.user[s_rows[0]]],
    data.item_raw_ids[data.item[s_rows]],
    data.rating[s_rows],
    data.item[q_rows],
    task,
  )


def test_loads_only_the_selected_meta_init(run):
  workdir, exp, bundle = run
  assert bundle.seed == 1 and bundle.step == 4
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "maml"), train.ARRAY_ITEMS, train.JSON_ITEMS)
  rep = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2, *x.shape), x.dtype, sharding=rep), bundle.meta_params)
  stored = ckpt.restore(4, {"best_meta_params": abstract})["best_meta_params"]
  chex.assert_trees_all_equal(bundle.meta_params, train.unstack(stored, 1))


def test_adapt_scores_equal_the_evaluator(run):
  workdir, exp, bundle = run
  user, items, ratings, query_items, task = _new_user_task(exp, 1, 3)
  out = serving.adapt(bundle, items, ratings, user=user)
  assert out.scores.shape == (exp.data.n_items,) and np.isfinite(out.scores).all()
  want = evaluate.score_task(bundle.learner, bundle.meta_params, task["support"], task["query"], jax.random.key(0))
  n_query = query_items.shape[0]
  np.testing.assert_allclose(out.scores[query_items], np.asarray(want)[:n_query], rtol=1e-5, atol=1e-5)
  assert list(out.item_ids[query_items]) == list(exp.data.item_raw_ids[query_items])


def test_new_user_features_match_the_stored_user_and_adaptation_moves_scores(run):
  workdir, exp, bundle = run
  user, items, ratings, _, _ = _new_user_task(exp, 1, 0)
  table = exp.data.user_features
  u = list(map(str, exp.data.user_raw_ids)).index(str(user))
  features = {name: table.vocab[name][table.categorical[name][u]] for name in table.categorical}
  known = serving.adapt(bundle, items, ratings, user=user)
  new = serving.adapt(bundle, items, ratings, user_features=features)
  np.testing.assert_allclose(new.scores, known.scores, rtol=1e-6)
  unadapted = serving.adapt(bundle, [], [], user_features=features)
  assert np.abs(unadapted.scores - new.scores).max() > 1e-4  # the support changed the predictions
  by_dense = serving.adapt(
    bundle,
    [list(map(str, exp.data.item_raw_ids)).index(str(i)) for i in items],
    ratings,
    user_features=features,
    dense_ids=True,
  )
  np.testing.assert_allclose(by_dense.scores, new.scores, rtol=1e-6)


def test_empty_ratings_score_with_the_meta_init_itself(run):
  workdir, exp, bundle = run
  out = serving.adapt(bundle, [], [], user_features={})
  x = {k: v[:3] for k, v in bundle.catalogue.items()}
  x.update(
    user=np.zeros(3, np.int32),
    target=np.zeros(3, np.float32),
    mask=np.ones(3, bool),
    user_cat=np.zeros((3, exp.data.user_features.cat_matrix().shape[1]), np.int32),
    user_multi=np.zeros((3, 0), np.float32),
    user_dense=np.zeros((3, 0), np.float32),
  )
  want = bundle.learner.model.apply(bundle.meta_params, x, None)
  np.testing.assert_allclose(out.scores[:3], want, rtol=1e-5)


def test_bad_requests_are_refused(run):
  workdir, exp, bundle = run
  with pytest.raises(DataError, match="unknown item"):
    serving.adapt(bundle, ["no-such-item"], [4.0])
  with pytest.raises(DataError, match="one finite rating per item"):
    serving.adapt(bundle, [exp.data.item_raw_ids[0]], [4.0, 5.0])
  with pytest.raises(DataError, match="not in its vocabulary"):
    serving.adapt(bundle, [], [], user_features={"gender": "robot"})
  with pytest.raises(DataError, match="unknown user feature"):
    serving.adapt(bundle, [], [], user_features={"shoe_size": "42"})
  with pytest.raises(ValueError, match="seed_index"):
    serving.load_meta_params(workdir, seed_index=5, data=exp.data)
  with pytest.raises(FileNotFoundError, match="config.json"):
    serving.load_meta_params(os.path.join(workdir, "nowhere"))


def test_bf16_run_is_served_as_it_was_evaluated(tmp_path):
  """A model trained and evaluated in bf16 is served in bf16: served scores equal the evaluator's, which
  differ from the same parameters computed in f32 (so the check can fail)."""
  config = _config()
  with config.unlocked():  # 2 steps, one evaluation and checkpoint, no plots: only the served dtype is checked
    config.compute_dtype, config.seeds = "bfloat16", 1
    config.num_steps, config.checkpoint_every, config.plots = 2, 2, False
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  exp = train.build_experiment(config)
  bundle = serving.load_meta_params(workdir, data=exp.data)
  user, items, ratings, query_items, task = _new_user_task(exp, 0, 1)
  out = serving.adapt(bundle, items, ratings, user=user)
  n_query = query_items.shape[0]
  evaluator = get_learner(config.learner_name, exp.model, **config.learner.to_dict())  # the evaluation's model
  key = jax.random.key(0)
  want = np.asarray(evaluate.score_task(evaluator, bundle.meta_params, task["support"], task["query"], key))[:n_query]
  np.testing.assert_allclose(out.scores[query_items], want, rtol=0, atol=1e-6)
  f32 = get_learner(config.learner_name, train.get_model(config.model_name, exp.spec, **config.model.to_dict()))
  as_f32 = np.asarray(evaluate.score_task(f32, bundle.meta_params, task["support"], task["query"], key))[:n_query]
  assert np.abs(as_f32 - want).max() > 1e-4  # bf16 and f32 scores differ: the test sees a wrong dtype
