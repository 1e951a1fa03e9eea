"""Item warm-up: the `item_warmup` protocol on a hand-made fixture (which rating lands in which round; cold
ratings never reach training, poisoned end to end), the round-by-round warm-up against an explicit formula,
MetaEmb's meta-gradient against finite differences of an independently written unrolled loss, the MetaEmb /
MWUF embeddings against hand computations, and errors for bad parameters."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from transfer_meta import train
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.protocols import make_protocol
from transfer_meta.data.streams import training_rows
from transfer_meta.learners.warmup import round_masks, warmup
from transfer_meta.models.warm_start import warm_start_mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, MIN_TEST, MIN_WARM = 2, 2, 11  # a cold item needs 3 * 2 + 2 = 8 ratings, a warm one 11
COUNTS = {0: 12, 1: 14, 2: 11, 3: 8, 4: 9, 5: 10, 6: 10, 7: 8, 8: 3}  # item -> ratings; 8 is excluded


@pytest.fixture(scope="module")
def fixture() -> Interactions:
  """Item i rated by users 0..COUNTS[i]-1; timestamps a seeded permutation, two ties on item 4."""
  item = np.concatenate([np.full(n, i) for i, n in COUNTS.items()]).astype(np.int32)
  user = np.concatenate([np.arange(n) for n in COUNTS.values()]).astype(np.int32)
  ts = np.random.default_rng(3).permutation(len(item)).astype(np.int64)
  first4 = np.flatnonzero(item == 4)
  ts[first4[:2]] = ts[first4].min()  # a tie: the row order decides
  return Interactions(
    name="warmup_fixture",
    user=user,
    item=item,
    rating=(1 + (user + item) % 5).astype(np.float32),
    timestamp=ts,
    user_features=FeatureTable(15),
    item_features=FeatureTable(9),
    user_raw_ids=np.arange(15).astype(object),
    item_raw_ids=np.arange(9).astype(object),
  )


def _split(data, **kw):
  kw = {"min_warm_ratings": MIN_WARM, "round_size": K, "min_test": MIN_TEST, "valid_fraction": 0.2, **kw}
  return make_protocol("item_warmup", data, seed=0, min_tasks=0, **kw)


def test_rounds_are_time_ordered_batches(fixture):
  split = _split(fixture)
  assert sorted(split.tasks["train"].task_ids) == [0, 1, 2]
  cold = sorted(split.tasks["valid"].task_ids.tolist() + split.tasks["cold"].task_ids.tolist())
  assert cold == [3, 4, 5, 6, 7] and len(split.tasks["valid"]) == 1  # round(0.2 * 5)
  assert split.excluded["cold"]["fewer than 8 ratings"] == 1  # item 8
  for k, name in enumerate(("cold", "warm_a", "warm_b", "warm_c")):
    ts = split.tasks[name]
    assert ts.task_ids.tolist() == split.tasks["cold"].task_ids.tolist()  # the same items in every scenario
    for t, i in enumerate(ts.task_ids):
      rows = np.flatnonzero(fixture.item == i)
      by_time = rows[np.lexsort((rows, fixture.timestamp[rows]))]  # independent: time, then row
      np.testing.assert_array_equal(ts.support(t), by_time[: k * K])
      np.testing.assert_array_equal(ts.query(t), by_time[3 * K :])  # the same test ratings after every round
  item4 = np.flatnonzero(fixture.item == 4)
  holder = split.tasks["warm_a" if 4 in split.tasks["warm_a"].task_ids else "valid"]  # both: round a as support
  first = holder.support(int(np.flatnonzero(holder.task_ids == 4)[0]))
  np.testing.assert_array_equal(first, item4[:2])  # the tie on item 4 (its two earliest ratings): lower row first
  v = split.tasks["valid"]
  assert v.support_sizes().tolist() == [K] and v.query_sizes().tolist() == [COUNTS[int(v.task_ids[0])] - 3 * K]
  tr = split.tasks["train"]
  for t, i in enumerate(tr.task_ids):  # a warm item: K random support rows, every other rating in the query
    assert tr.support_sizes()[t] == K and sorted(tr.support(t).tolist() + tr.query(t).tolist()) == sorted(
      np.flatnonzero(fixture.item == i).tolist()
    )
  cold_rows = np.flatnonzero(np.isin(fixture.item, cold))
  assert not set(training_rows(split)) & set(cold_rows.tolist())
  assert split.manifest == _split(fixture).manifest
  assert split.manifest["hash"] != _split(fixture, round_size=1).manifest["hash"]


@pytest.mark.parametrize(
  "kw,param",
  [
    (dict(round_size=0), "round_size"),
    (dict(min_test=0), "min_test"),
    (dict(min_warm_ratings=8), "min_warm_ratings"),
    (dict(valid_fraction=1.0), "valid_fraction"),
    (dict(valid_rounds=4), "valid_rounds"),
  ],
)
def test_bad_params(fixture, kw, param):
  with pytest.raises(ValueError, match=param):
    _split(fixture, **kw)


def test_too_few_cold_items(fixture):
  with pytest.raises(DataError, match="cold items"):
    _split(fixture, min_warm_ratings=9)  # only items 3 and 7 are cold (8 ratings), 2 * 0.2 rounds to 0


def _load_config(arg):
  spec = importlib.util.spec_from_file_location("cfg_warmup", os.path.join(ROOT, "configs", "item_warmup_ml100k.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# Workdirs of the poisoned runs finished in this module: the `warmup` learner trains identically in [smoke] and
# [mwuf_smoke] (same data, protocol and keywords; only the strategy differs), so the second run reuses the first's
# (`train_and_evaluate(reuse_from=...)`, bit-identical to training it again: tests/test_strategies.py). Run alone,
# either case trains it.
_POISONED_RUNS: list[str] = []


@pytest.mark.parametrize("arg", ["smoke", "mwuf_smoke"])
def test_poisoned_cold_ratings_never_reach_training(arg, tmp_path):
  """Every cold and validation item's ratings set to 1e4: training losses stay on the rating scale (had one such
  rating reached a training step, its squared error would be ~1e8), while evaluation sees them. Also the
  throughput count: the learner's tasks are its meta-steps', the strategy's its task stage's (not the config's
  num_steps, which here differs from meta_steps). A learner reused from the other case's run keeps that run's
  records (its losses are checked here too) and its training seconds."""
  config = _load_config(arg)
  with config.unlocked():
    config.num_steps = 2  # the learner's 2 meta-steps; the strategy's meta stage runs its own meta_steps (4)
    config.checkpoint_every = 100  # one checkpoint at the end of each stage: no check here reads them
    config.plots = arg == "smoke"  # the PNGs of this results layout once ([mwuf_smoke]'s are the same layout)
    # Two widths, 10 (every support: at most 3 rounds of 2 ratings) and 200 (every query batch needs more than 10):
    # one batch shape per run, so each step and evaluation program is traced and lowered once instead of once per
    # width (the config's six buckets gave the learner's step 2 shapes and each evaluation 3); padding changes no
    # loss or metric (tests/test_tasks.py), and all-padded rounds change nothing (learners/warmup.py).
    config.buckets = (10, 200)
  exp = train.build_experiment(config)
  split = exp.seeds[0].split
  cold_items = np.concatenate([split.tasks[n].task_ids for n in ("valid", "cold")])
  data = exp.data
  poisoned = Interactions(
    **{
      **data.__dict__,
      "rating": np.where(np.isin(data.item, cold_items), 1e4, data.rating).astype(np.float32),
      "rating_scale": (1.0, 1e4),
    }
  )
  donors = list(_POISONED_RUNS)
  results = train.train_and_evaluate(config, str(tmp_path), data=poisoned, reuse_from=donors)
  _POISONED_RUNS.append(str(tmp_path))
  assert results["train"].get("reused", {}) == ({config.learner_name: donors[0]} if donors else {})
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  losses = [v for r in records for k, v in r.items() if k.startswith("train/") and k.endswith("loss")]
  assert losses and max(losses) < 100.0, max(losses)
  name = config.strategy_name
  assert set(results["comparisons"][name]) == {"valid", "cold", "warm_a", "warm_b", "warm_c"}
  assert results["comparisons"][name]["warm_c"]["mae"]["mean"] > 1e3  # the poisoned test ratings are scored
  speed = results["train"]["learners"]
  assert speed[config.learner_name]["tasks"] == 2 * config.batch_size * config.seeds
  assert speed[name]["tasks"] == config.strategy.meta_steps * config.batch_size * config.seeds == 4 * 8
  for v in speed.values():  # tasks_per_second carries 2 decimals: on a slow (loaded) box that rounding is > 1%
    assert v["tasks_per_second"] == pytest.approx(v["tasks"] / v["seconds"], rel=1e-2, abs=0.006)


def test_round_masks():
  this, seen = round_masks(jnp.array([True] * 5 + [False] * 3), 2)
  np.testing.assert_array_equal(this, [[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0],
                                       [0, 0, 0, 0, 0, 0, 0, 0]])  # fmt: skip
  np.testing.assert_array_equal(seen, np.cumsum(np.asarray(this), axis=0) > 0)


# A tiny hand-checkable backbone: no user features (u = id row + delta), items with a 2-wide multi-hot.
SPEC = FeatureSpec(n_users=4, n_items=3, user_cat_sizes=(), item_cat_sizes=(), user_multi_dim=0, item_multi_dim=2,
                   user_dense_dim=0, item_dense_dim=0)  # fmt: skip
D = 3


def _examples(users, item, target, mask=None):
  n = len(users)
  multi = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)[item]
  return {
    "user": jnp.asarray(users, jnp.int32),
    "item": jnp.full(n, item, jnp.int32),
    "target": jnp.asarray(target, jnp.float32),
    "mask": jnp.ones(n, bool) if mask is None else jnp.asarray(mask),
    "user_cat": jnp.zeros((n, 0), jnp.int32),
    "item_cat": jnp.zeros((n, 0), jnp.int32),
    "user_multi": jnp.zeros((n, 0), jnp.float32),
    "item_multi": jnp.tile(jnp.asarray(multi), (n, 1)),
    "user_dense": jnp.zeros((n, 0), jnp.float32),
    "item_dense": jnp.zeros((n, 0), jnp.float32),
  }


def _random_params(model, x, context, seed=0):
  """model.init, every leaf replaced by a seeded normal draw (so zero-initialised layers are non-trivial)."""
  params = model.init(jax.random.key(0), x, context)
  flat, unravel = ravel_pytree(params)
  return unravel(0.5 * jax.random.normal(jax.random.key(seed), flat.shape))


def _hand_parts(p, x):
  """u, b_user, f, f_b of examples x from the raw parameter arrays (no model code)."""
  q = p["params"]
  u = q["user_id"]["embedding"][x["user"]] + q["user_delta"]
  b_user = q["user_id_bias"]["embedding"][x["user"], 0] + q["user_bias_delta"]
  multi = x["item_multi"]
  count = jnp.maximum(multi.sum(-1, keepdims=True), 1.0)
  f = multi @ q["item_features"]["multi"] / count
  f_b = (multi @ q["item_bias_features"]["multi"] / count)[:, 0]
  return u, b_user, f, f_b


def _dense(layer, h):
  return h @ layer["kernel"] + layer["bias"]


def test_metaemb_and_mwuf_embeddings_by_hand():
  support = _examples([0, 1, 2], 1, [4.0, 2.0, 5.0], mask=[True, True, False])
  query = _examples([3, 0], 1, [3.0, 1.0])
  for method in ("metaemb", "mwuf"):
    cold = warm_start_mf(SPEC, method, "cold", dim=D, hidden=4)
    ids = warm_start_mf(SPEC, method, "ids", dim=D, hidden=4)
    p = _random_params(cold, query, support)
    q = p["params"]
    u, b_user, f, f_b = _hand_parts(p, query)
    if method == "metaemb":
      g = q["item_generator"]
      out = _dense(g["Dense_1"], jnp.tanh(_dense(g["Dense_0"], f)))
      v, b = f + out[:, :D] + q["item_delta"], f_b + out[:, D] + q["item_bias_delta"]
    else:
      su, _, _, _ = _hand_parts(p, support)
      u_ctx = (su[0] + su[1]) / 2.0  # the masked mean over the support's two real users
      sc, sh = q["item_meta_scale"], q["item_meta_shift"]
      scale = 1.0 + _dense(sc["Dense_1"], jax.nn.relu(_dense(sc["Dense_0"], f)))
      shift = _dense(sh["Dense_1"], jax.nn.relu(_dense(sh["Dense_0"], u_ctx)))
      v, b = f + scale * q["item_delta"] + shift, f_b + q["item_bias_delta"]
    want = jnp.sum(u * v, -1) + b_user + b + q["global_bias"]
    np.testing.assert_allclose(cold.apply(p, query, support), want, rtol=1e-5, atol=1e-5)
    v_ids = f + q["item_id"]["embedding"][1] + q["item_delta"]
    b_ids = f_b + q["item_id_bias"]["embedding"][1, 0] + q["item_bias_delta"]
    want_ids = jnp.sum(u * v_ids, -1) + b_user + b_ids + q["global_bias"]
    np.testing.assert_allclose(ids.apply(p, query, support), want_ids, rtol=1e-5, atol=1e-5)


def test_cold_mode_starts_at_the_base_model():
  """Zero-initialised last layers: 'cold' mode equals the base scoring an id whose row is zero."""
  x = _examples([0, 1], 2, [3.0, 4.0])
  for method in ("metaemb", "mwuf"):
    cold, ids = (warm_start_mf(SPEC, method, m, dim=D) for m in ("cold", "ids"))
    p = cold.init(jax.random.key(1), x, x)
    p["params"]["item_id"]["embedding"] = jnp.zeros_like(p["params"]["item_id"]["embedding"])
    np.testing.assert_allclose(cold.apply(p, x, x), ids.apply(p, x, x), rtol=1e-6)


def _with_delta(p, delta, bias_delta):
  q = dict(p["params"], item_delta=delta, item_bias_delta=bias_delta)
  return {"params": q}


def test_warmup_rounds_match_the_explicit_formula():
  """adapt = one SGD step per round on that round's rows (context = rows seen so far): the MF score is linear in
  (delta, bias_delta) with coefficients (u_j, 1), so each step is delta -= lr * 2/n sum_j r_j u_j, by hand."""
  model = warm_start_mf(SPEC, "metaemb", "cold", dim=D, hidden=4)
  support = _examples([0, 1, 2, 3, 0], 1, [4.0, 2.0, 5.0, 1.0, 0.0], mask=[True, True, True, True, False])
  p = _random_params(model, support, support, seed=2)
  lr = 0.05
  learner = warmup(model, round_size=2, inner_steps=1, inner_lr=lr)
  got = learner.adapt(p, support, jax.random.key(0))
  delta, bd = p["params"]["item_delta"], p["params"]["item_bias_delta"]
  u, _, _, _ = _hand_parts(p, support)
  for rows in ([0, 1], [2, 3]):  # round 3 holds only padding: no step
    scores = model.apply(_with_delta(p, delta, bd), support, support)
    r = (scores - support["target"])[jnp.array(rows)]
    delta = delta - lr * 2.0 / len(rows) * jnp.sum(r[:, None] * u[jnp.array(rows)], 0)
    bd = bd - lr * 2.0 / len(rows) * jnp.sum(r)
  np.testing.assert_allclose(got["params"]["item_delta"], delta, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["params"]["item_bias_delta"], bd, rtol=1e-5, atol=1e-6)
  untouched = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), got, p)
  assert all(v for path, v in jax.tree_util.tree_leaves_with_path(untouched) if "delta" not in str(path[-1]))


def test_metaemb_meta_gradient_matches_finite_differences():
  """d/dt of alpha * loss_a(theta + t d) + (1 - alpha) * loss_b(theta'(t)), theta' one explicit SGD step of the
  generated embedding (written here with jax.grad on the two delta leaves, no learner code), by central finite
  differences in float64 along a random direction of the generator, equals <task_grad, d>."""
  alpha, lr = 0.3, 0.1
  support = _examples([0, 1, 2], 0, [4.0, 2.0, 5.0], mask=[True, True, False])
  query = _examples([3, 1, 2, 0], 0, [3.0, 1.0, 2.0, 4.0])
  model = warm_start_mf(SPEC, "metaemb", "cold", dim=D, hidden=4)
  learner = warmup(model, round_size=0, inner_lr=lr, objective="meta", alpha=alpha)
  with jax.enable_x64(True):
    p = jax.tree.map(lambda a: a.astype(jnp.float64), _random_params(model, query, support, seed=4))
    # Both sides jitted: one compile each instead of every op compiled on its own (10.8 -> 3.4 CPU-s, README).
    grads, metrics = jax.jit(learner.task_grad)(p, {"support": support, "query": query}, jax.random.key(0))

    def mse(params, x, ctx):
      w = x["mask"].astype(jnp.float64)
      return jnp.sum(w * (model.apply(params, x, ctx) - x["target"]) ** 2) / jnp.sum(w)

    def meta_loss(params):
      q = params["params"]
      la = lambda dl, bd: mse(_with_delta(params, dl, bd), support, support)
      g_d, g_b = jax.grad(la, argnums=(0, 1))(q["item_delta"], q["item_bias_delta"])
      stepped = _with_delta(params, q["item_delta"] - lr * g_d, q["item_bias_delta"] - lr * g_b)
      return alpha * la(q["item_delta"], q["item_bias_delta"]) + (1 - alpha) * mse(stepped, query, support)

    meta_loss = jax.jit(meta_loss)  # the same shapes at every point below: one compile

    gen = p["params"]["item_generator"]
    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape, jnp.float64), gen)
    move = lambda t: {"params": dict(p["params"], item_generator=jax.tree.map(lambda a, d: a + t * d, gen, direction))}
    h = 1e-5
    fd = (meta_loss(move(h)) - meta_loss(move(-h))) / (2 * h)
    analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grads["params"]["item_generator"]),
                                                   jax.tree.leaves(direction)))  # fmt: skip
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(meta_loss(p)), rtol=1e-10)
    assert abs(float(analytic)) > 1e-3  # the generator really moves the meta-loss


@pytest.mark.parametrize(
  "protocol,side,rounds", [("item_warmup", "item", 2), ("item_cold", "item", 0), ("recbole_metarec", "user", 0)]
)
def test_strategies_pick_the_task_side_and_rounds(protocol, side, rounds):
  """MetaEmb/MWUF warm the protocol's task side (item-as-task on item_*, user-as-task otherwise) and warm up in
  item_warmup's rounds (the whole support as one round elsewhere); the stages freeze what the papers freeze."""
  from transfer_meta.strategies import get_strategy
  from transfer_meta.strategies.warm_start import protocol_round_size, task_side

  config = _load_config("smoke")
  with config.unlocked():
    config.protocol_name = protocol
  for name, meta in (("metaemb", "_generator/"), ("mwuf", "_meta_scale/|_meta_shift/")):
    strategy = get_strategy(name, None, config, SPEC, dim=D, hidden=4)
    assert [s.name for s in strategy.stages] == ["pretrain", "meta"] and strategy.learner.name == name
    assert strategy.stages[1].trainable == meta and "?!" in strategy.stages[0].trainable
    assert strategy.learner.model.adapt_regex == f"{side}_delta|{side}_bias_delta"
    support = _examples([0, 1, 2, 3], 1, [4.0, 2.0, 5.0, 1.0])
    p = _random_params(strategy.learner.model, support, support)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), strategy.learner.adapt(p, support, jax.random.key(0)), p)
    paths = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(moved) if v}
    assert paths == {f"['params']['{side}_delta']", f"['params']['{side}_bias_delta']"}, paths
  assert protocol_round_size(config, None) == rounds and protocol_round_size(config, 3) == 3
  assert task_side(config, None) == side and task_side(config, "user") == "user"
  with pytest.raises(ValueError, match="side"):
    task_side(config, "items")


def test_click_setting_keeps_the_rounds_and_binarises_the_target(fixture):
  """'click': the same items, rounds and test rows as 'rating'; target = rating >= 4 as 0/1; AUC only, relevance
  = clicked; the rating setting's manifest is unchanged by the new parameter (no 'setting' key, same hash)."""
  rating, click = _split(fixture), _split(fixture, setting="click")
  for name, ts in rating.tasks.items():
    other = click.tasks[name]
    np.testing.assert_array_equal(ts.task_ids, other.task_ids)
    for t in range(len(ts)):
      np.testing.assert_array_equal(ts.support(t), other.support(t))
      np.testing.assert_array_equal(ts.query(t), other.query(t))
  np.testing.assert_array_equal(rating.target, fixture.rating)
  expected = np.array([1.0 if r >= 4 else 0.0 for r in fixture.rating], np.float32)  # independent of the code
  np.testing.assert_array_equal(click.target, expected)
  assert 0 < expected.sum() < len(expected)  # both classes present, so the check can fail
  assert click.metrics == ("auc",) and click.params["relevance"] == "threshold:1"
  assert rating.metrics == ("mae", "rmse", "auc") and rating.params["relevance"] == "threshold:4"
  assert "setting" not in rating.params and click.params["setting"] == "click"
  assert rating.manifest["hash"] == _split(fixture, setting="rating").manifest["hash"] != click.manifest["hash"]
  with pytest.raises(ValueError, match="setting"):
    _split(fixture, setting="clicks")


def test_config_click_setting_and_arg_parsing():
  rating, click = _load_config(None), _load_config("mwuf,click")
  assert (rating.strategy_name, rating.protocol.setting, rating.learner.loss, rating.strategy.loss) == (
    "metaemb",
    "rating",
    "mse",
    "mse",
  )
  assert (rating.select_metric, rating.select_mode, rating.model.global_bias, rating.seeds) == (
    "valid/mae",
    "min",
    3.5,
    5,
  )
  assert (click.strategy_name, click.protocol.setting, click.learner.loss, click.strategy.loss) == (
    "mwuf",
    "click",
    "bce",
    "bce",
  )
  assert click.compare_kwargs.none.loss == "bce" and click.model.global_bias == 0.0
  assert (click.select_metric, click.select_mode) == ("valid/auc", "max")
  assert _load_config("mwuf_smoke").strategy_name == "mwuf" and _load_config("click,smoke").dataset_name == "synthetic"
  for bad in ("clik", "mwuf,mwuf", "rating,click"):
    with pytest.raises(ValueError, match="unknown config arg"):
      _load_config(bad)


def test_warmup_table_grid_rows_per_setting():
  """`experiments.strategies --config=item_warmup_ml100k --protocols=rating,click`: per setting the config's own
  run (MetaEmb beside the warmup / none learners) and an MWUF run with the config's MWUF settings."""
  from experiments import strategies as table

  cells = table.grid("item_warmup_ml100k", ["rating", "click"], {})
  assert [(p, n) for p, n, _ in cells] == [(p, n) for p in ("rating", "click") for n in ("metaemb", "mwuf")]
  for protocol, name, c in cells:
    assert c.protocol.setting == protocol and c.strategy_name == name and c.seeds == 5
    assert c.strategy.loss == ("mse" if protocol == "rating" else "bce")
    assert c.strategy.global_bias == (3.5 if protocol == "rating" else 0.0)
    if name == "mwuf":
      assert c.strategy.to_dict() == _load_config(f"mwuf,{protocol}").strategy.to_dict() and "alpha" not in c.strategy
      assert (c.learner_name, tuple(c.compare_learners), c.num_steps) == ("none", (), 1)
    else:
      assert (c.learner_name, tuple(c.compare_learners), c.num_steps) == ("warmup", ("none",), 300)
