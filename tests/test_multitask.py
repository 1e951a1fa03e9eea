"""Multi-task strategy: the first-week label on a hand fixture (ties, first rating in the support vs the query), the
MMoE mixture against a hand computation, the objective and head metrics against numpy, and the strategy end to end
with residual + OOV (issue 8's protocol) on the synthetic data, every stream carrying the task path's prior and
features."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_strategies import load_config

from transfer_meta import baselines, stages, train
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.labels import aux_labels, click_label, first_week_label, known_rows
from transfer_meta.data.split import ColdStartSplit, TaskSet
from transfer_meta.data.tasks import PRIOR
from transfer_meta.models.multitask import head_model, mixture, multitask_net
from transfer_meta.strategies.multitask import average_ranks, check_weights, logloss, multitask_objective, pooled_auc

D = 86400  # seconds per day
# row: (user, item, timestamp, rating)
ROWS = [
  (0, 0, 0, 5),  # 0  user 0, a training task: every row known, anchor 0
  (0, 1, 3 * D, 4),  # 1
  (0, 2, 7 * D - 1, 3),  # 2  one second inside the week -> 1
  (0, 3, 7 * D, 2),  # 3  exactly 7 days later -> 0 (strict)
  (0, 4, 10 * D, 1),  # 4
  (1, 0, 5 * D, 4),  # 5  user 1, test task: support rows 5, 6 tie at 5D (both 1)
  (1, 1, 5 * D, 3),  # 6
  (1, 2, 2 * D, 5),  # 7  query row BEFORE the support: it is its own first rating -> 1
  (1, 3, 11 * D, 2),  # 8  5D + 6 days -> 1 (the earlier query row 7 does not move the anchor)
  (1, 4, 12 * D, 4),  # 9  5D + 7 days -> 0
  (2, 0, 1 * D, 4),  # 10 user 2, valid task: first rating in the support (anchor 1D)
  (2, 1, 4 * D, 2),  # 11 query -> 1
  (2, 2, 9 * D, 5),  # 12 query -> 0
  (2, 5, 0, 3),  # 13 in no task (treated as a query row): its own anchor -> 1, moves nobody else's
]
WANT_WEEK = [1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1]


def _data(rows=ROWS) -> Interactions:
  u, i, t, r = (np.array(c) for c in zip(*rows))
  return Interactions(
    name="tiny",
    user=u.astype(np.int32),
    item=i.astype(np.int32),
    rating=r.astype(np.float32),
    timestamp=t.astype(np.int64),
    user_features=FeatureTable(3),
    item_features=FeatureTable(6),
    user_raw_ids=np.arange(3).astype(object),
    item_raw_ids=np.arange(6).astype(object),
  )


def _split(data: Interactions) -> ColdStartSplit:
  tasks = {
    "train": TaskSet.from_lists([0], [[0, 1]], [[2, 3, 4]]),
    "valid": TaskSet.from_lists([2], [[10]], [[11, 12]]),
    "test": TaskSet.from_lists([1], [[5, 6]], [[7, 8, 9]]),
  }
  return ColdStartSplit("tiny", "0", 0, {}, "user", tasks, ("test",), data.rating, ("mae",))


def test_first_week_label_on_a_hand_fixture():
  data = _data()
  split = _split(data)
  np.testing.assert_array_equal(known_rows(split), [0, 1, 2, 3, 4, 5, 6, 10])
  np.testing.assert_array_equal(first_week_label(data, split), WANT_WEEK)
  labels = aux_labels(data, split)
  np.testing.assert_array_equal(labels["click"], [1, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0])
  np.testing.assert_array_equal(labels["click"], click_label(data))
  assert first_week_label(data, split, days=1.0)[1] == 0 and first_week_label(data, split, days=3.5)[1] == 1
  with pytest.raises(DataError, match="days=0"):
    first_week_label(data, split, days=0)


def test_first_week_label_uses_no_query_timestamp_but_the_rows_own():
  """Moving a query row's timestamp changes that row's label only; moving a known row moves its user's labels."""
  data = _data()
  split = _split(data)
  base = first_week_label(data, split)
  moved = dataclasses.replace(data, timestamp=np.where(np.arange(len(ROWS)) == 7, -30 * D, data.timestamp))
  np.testing.assert_array_equal(first_week_label(moved, split), base)  # row 7 stays 1 (its own anchor)
  later = dataclasses.replace(data, timestamp=np.where(np.arange(len(ROWS)) == 8, 40 * D, data.timestamp))
  got = first_week_label(later, split)
  assert got[8] == 0 and np.array_equal(np.delete(got, 8), np.delete(base, 8))
  earlier_support = dataclasses.replace(data, timestamp=np.where(np.arange(len(ROWS)) == 5, 0, data.timestamp))
  got = first_week_label(earlier_support, split)  # user 1's anchor is now 0: 11D is out of the week
  np.testing.assert_array_equal(got[5:10], [1, 1, 1, 0, 0])


def test_mmoe_mixture_equals_a_hand_computation_and_gates_sum_to_one():
  experts = jnp.array([[[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]]])  # [N=1, K=3, E=2]
  logits = jnp.log(jnp.array([[1.0, 2.0, 1.0]]))  # softmax = (1/4, 1/2, 1/4)
  mixed, gates = mixture(experts, logits)
  np.testing.assert_allclose(gates, [[0.25, 0.5, 0.25]], rtol=1e-6)
  # 0.25 * (1, 2) + 0.5 * (3, -1) + 0.25 * (0, 4) = (1.75, 1.0)
  np.testing.assert_allclose(mixed, [[1.75, 1.0]], rtol=1e-6)
  many = jax.random.normal(jax.random.key(0), (5, 7, 4)) * 10.0
  _, gates = mixture(jnp.zeros((5, 7, 4, 3)), many)
  np.testing.assert_allclose(jnp.sum(gates, axis=-1), np.ones((5, 7)), rtol=1e-6)
  assert bool(jnp.all(gates >= 0))


@pytest.fixture(scope="module")
def exp():
  return train.build_experiment(load_config())


def _x(exp, n=32) -> dict:
  it = stages.STREAMS["labelled_interactions"][0](exp, exp.seeds[0], n)
  return jax.tree.map(jnp.asarray, next(it))


def test_mmoe_with_one_expert_is_the_shared_bottom(exp):
  x = _x(exp)
  heads = {"rating": 3.5, "click": 0.0, "week": 0.0}
  init_m, apply_m = multitask_net(exp.spec, heads, "mmoe", emb_dim=4, hidden=(8,), n_experts=1, tower=(4,))
  init_s, apply_s = multitask_net(exp.spec, heads, "shared_bottom", emb_dim=4, hidden=(8,), tower=(4,))
  pm = init_m(jax.random.key(1), x)
  inner = {k: v for k, v in pm["params"].items() if not k.startswith(("expert_", "gate_"))}
  assert set(init_s(jax.random.key(2), x)["params"]) == set(inner) | {"bottom_0"}
  ps = {"params": {**inner, "bottom_0": pm["params"]["expert_0_0"]}}
  got, want = apply_m(pm, x), apply_s(ps, x)
  for h in heads:  # one expert: every gate is exactly 1
    np.testing.assert_allclose(got[h], want[h], rtol=1e-5, atol=1e-6)
  init_k, apply_k = multitask_net(exp.spec, heads, "mmoe", emb_dim=4, hidden=(8,), n_experts=3, tower=(4,))
  pk = init_k(jax.random.key(3), x)
  assert {f"gate_{h}" for h in heads} <= set(pk["params"]) and {"expert_0_0", "expert_2_0"} <= set(pk["params"])
  rating = head_model(init_k, apply_k, "mmoe", "rating")
  np.testing.assert_array_equal(rating.apply(pk, x), apply_k(pk, x)["rating"])
  with pytest.raises(ValueError, match="valid: \\['shared_bottom', 'mmoe'\\]"):
    multitask_net(exp.spec, heads, "moe")


def test_objective_is_the_weighted_sum_of_numpy_losses(exp):
  x = _x(exp, 64)
  init, apply_heads = multitask_net(exp.spec, {"rating": 3.5, "click": 0.0, "week": 0.0}, "mmoe", emb_dim=4)
  params = init(jax.random.key(0), x)
  rating = head_model(init, apply_heads, "mmoe", "rating")
  weights = {"rating": 0.5, "click": 2.0, "week": 1.5}
  loss, metrics = multitask_objective(apply_heads, rating.apply, weights)(params, x, None)
  s = jax.tree.map(np.asarray, apply_heads(params, x))
  m = np.asarray(x["mask"], bool)
  assert m.all()
  want = {"rating": np.mean((s["rating"] - np.asarray(x["target"])) ** 2)}
  for h in ("click", "week"):
    z, y = s[h].astype(np.float64), np.asarray(x[h], np.float64)
    want[h] = np.mean(-y * np.log(1 / (1 + np.exp(-z))) - (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
  np.testing.assert_allclose(float(loss), sum(weights[h] * want[h] for h in want), rtol=1e-5)
  for h in want:
    np.testing.assert_allclose(float(metrics[f"{h}_loss"]), want[h], rtol=1e-5)
  with pytest.raises(ValueError, match="unknown heads \\['clicks'\\]; valid heads"):
    check_weights({"clicks": 1.0})
  with pytest.raises(ValueError, match="not all 0"):
    check_weights({"rating": 0.0, "click": 0.0, "week": 0.0})
  assert check_weights({"week": 2.0}) == {"rating": 1.0, "click": 1.0, "week": 2.0}


def test_pooled_auc_and_logloss_equal_brute_force():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, 40).astype(np.float64)  # many ties
  labels = rng.random(40) < 0.4
  pos, neg = scores[labels], scores[~labels]
  pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
  np.testing.assert_allclose(pooled_auc(scores, labels), pairs.mean(), rtol=1e-12)
  # average ranks by brute force: 1 + (values below) + (other values equal) / 2, exact halves in float64
  below, equal = (scores[None, :] < scores[:, None]).sum(1), (scores[None, :] == scores[:, None]).sum(1)
  np.testing.assert_array_equal(average_ranks(scores), 1 + below + (equal - 1) / 2)
  assert average_ranks(np.array([])).shape == (0,) and np.isnan(average_ranks(np.array([2.0, np.nan]))).all()
  assert np.isnan(pooled_auc(scores, np.zeros(40)))
  p = 1 / (1 + np.exp(-scores))
  y = labels.astype(np.float64)
  np.testing.assert_allclose(logloss(scores, y), np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)), rtol=1e-12)


def _residual_oov_config():
  config = load_config()
  config.residual, config.oov_min_count, config.resample_train = "item_user_offset", 3, True
  config.seeds = 1
  # One checkpoint per stage (at its end) and no PNGs: no check in this file reads either.
  config.checkpoint_every, config.plots = 100, False
  return config


def test_streams_carry_the_task_paths_prior_oov_features_and_labels():
  config = _residual_oov_config()
  exp = train.build_experiment(config)
  st = exp.seeds[0]
  assert st.prior is not None and exp.spec.user_cat_sizes[0] == exp.data.user_features.cat_sizes()[0] + 1
  oov = st.tasks["train"].feats
  assert not np.array_equal(oov.user_cat, exp.feats.user_cat)  # some values were remapped to the OOV row
  row_of = {(int(u), int(i)): r for r, (u, i) in enumerate(zip(exp.data.user, exp.data.item))}
  labels = aux_labels(exp.data, st.split)
  x = next(stages.STREAMS["labelled_interactions"][0](exp, st, 64))
  rows = np.array([row_of[(int(u), int(i))] for u, i in zip(x["user"], x["item"])])
  np.testing.assert_array_equal(x["user_cat"], oov.user_cat[x["user"]])
  np.testing.assert_array_equal(x["item_cat"], oov.item_cat[x["item"]])
  np.testing.assert_array_equal(x[PRIOR], st.prior[rows])
  for h in ("click", "week"):
    np.testing.assert_array_equal(x[h], labels[h][rows])
  pairs = next(stages.STREAMS["sampled_pairs"][0](exp, st, 64))
  ref = baselines.entity_prior(config.residual, exp.data, st.split, config.residual_lam)
  keep = pairs["sampled"]["mask"]
  assert keep.any()
  np.testing.assert_array_equal(pairs["sampled"][PRIOR][keep], ref[pairs["sampled"]["item"][keep]])
  np.testing.assert_array_equal(pairs["sampled"]["user_cat"], oov.user_cat[pairs["sampled"]["user"]])


# Workdirs of this module's end-to-end runs: both train the config's `none` learner identically (only the strategy
# differs), so the later run reuses it (`train_and_evaluate(reuse_from=...)`, bit-identical to training it again:
# tests/test_strategies.py). Run alone, either test trains it.
_RUNS: list[str] = []


def _run(config, workdir) -> dict:
  """`train_and_evaluate` reusing the learner of an earlier run of this module; checks that it was reused."""
  donors = list(_RUNS)
  results = train.train_and_evaluate(config, str(workdir), reuse_from=donors)
  _RUNS.append(str(workdir))
  assert results["train"].get("reused", {}) == ({config.learner_name: donors[0]} if donors else {})
  return results


def test_multitask_with_residual_and_oov_reports_every_head(tmp_path):
  config = _residual_oov_config()
  config.strategy_name = "multitask"
  config.strategy = dict(batch_size=64, arch="mmoe", n_experts=2, steps=6)
  results = _run(config, tmp_path)
  heads = results["strategy"]["heads"]
  exp = train.build_experiment(config)
  st = exp.seeds[0]
  labels = aux_labels(exp.data, st.split)
  assert set(heads) == set(results["metrics"])  # valid and every scenario
  for name, got in heads.items():
    rows = st.split.tasks[name].query_rows
    for h in ("click", "week"):  # the report's labels are those of the set's query rows, counted independently
      np.testing.assert_allclose(got[f"{h}/positive_rate"]["mean"], labels[h][rows].mean(), rtol=1e-6)
      assert 0.0 <= got[f"{h}/auc"]["mean"] <= 1.0 and got[f"{h}/logloss"]["mean"] > 0
    assert np.isfinite(got["rating/mae"]["mean"]) and got["rating/rmse"]["mean"] >= got["rating/mae"]["mean"]
  row = results["comparisons"]["multitask"]
  assert all(np.isfinite(v["mean"]) for s in row.values() for v in s.values())
  assert results["strategy"]["describe"]["arch"] == "mmoe"


def test_pretrain_finetune_runs_with_residual_and_oov(tmp_path):
  """Issue 8's protocol through a strategy: the residual net starts at the reference (output bias 0), so after a
  few steps the row stays near item_user_offset (without the prior it would score offsets near 0, MAE ~3)."""
  config = _residual_oov_config()
  config.strategy = dict(pretrain_steps=6, batch_size=64, meta_steps=4)
  results = _run(config, tmp_path)
  row = results["comparisons"]["pretrain_finetune"]
  ref = results["baselines"]["item_user_offset"]
  for scenario in ("new_user", "warm"):
    assert np.isfinite(row[scenario]["mae"]["mean"])
    assert abs(row[scenario]["mae"]["mean"] - ref[scenario]["mae"]["mean"]) < 0.25
