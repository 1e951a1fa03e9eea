"""LWA and NLBA (models/lwa.py): the class means, the per-user weights and biases, against numpy.

The shared contract tests (shapes, padding invariance, vmap, adapt sets) cover both through MODELS in
test_models.py and test_learners.py; here is the maths the paper defines.
"""

from __future__ import annotations

import chex
import flax
import jax
import numpy as np
import optax
import pytest
from test_models import SPECS, make_feats

from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.learners import get_learner
from transfer_meta.metrics import evaluate_batch
from transfer_meta.models import get_model
from transfer_meta.models.lwa import ClassMeanModel, class_means

SPEC = SPECS["rich"]
FEATS = make_feats(SPEC)
KW = dict(emb_dim=4, hidden=(5,), dim=3, positive_threshold=3.0)
KEY = jax.random.key(0)


def examples(items, targets, valid=None) -> dict:
  items = np.asarray(items, np.int32)
  mask = np.ones(len(items), bool) if valid is None else np.arange(len(items)) < valid
  return make_examples(FEATS, np.zeros_like(items), items, np.asarray(targets, np.float32), mask)


# Support items 0..4 (one padded row, item 7, whose target would flip the classes if it were read); the query
# items 5 and 6 are not in the support, as in evaluation.
SUPPORT = examples([0, 1, 2, 3, 4, 7], [5, 1, 4, 2, 3, 5], valid=5)
QUERY = examples([5, 6], [0, 0])


def run(name: str, params, x, context, **kw):
  """(scores [N], intermediates) of the module, with the sown values made mutable."""
  module = ClassMeanModel(SPEC, name, **{**KW, **kw}, use_item_ids=True)
  scores, state = module.apply(params, x, context, mutable=["intermediates"])
  return scores, jax.tree.map(np.asarray, flax.core.unfreeze(state["intermediates"]))


def numpy_means(feats, targets, mask, threshold):
  pos = mask & (targets >= threshold)
  neg = mask & (targets < threshold)
  return feats[pos].mean(0), feats[neg].mean(0)


def test_class_means_match_numpy_and_use_the_empty_vector():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(6, 3)).astype(np.float32)
  positive = np.array([1, 0, 1, 1, 0, 0], bool)
  valid = rng.random((4, 6)) < 0.6
  valid[3] = [1, 0, 1, 0, 0, 0]  # no negative for scored item 3
  empty_pos, empty_neg = np.array([9.0, 8.0, 7.0], np.float32), np.array([-1.0, -2.0, -3.0], np.float32)
  r1, r0, n1, n0 = class_means(feats, positive, valid, empty_pos, empty_neg)
  for n in range(4):
    for got, count, cls, empty in ((r1, n1, positive, empty_pos), (r0, n0, ~positive, empty_neg)):
      sel = valid[n] & cls
      assert count[n] == sel.sum()
      np.testing.assert_allclose(got[n], feats[sel].mean(0) if sel.any() else empty, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(r0[3], empty_neg)


def test_lwa_weights_equal_the_class_mean_difference():
  model = get_model("lwa", SPEC, **KW)
  params = model.init(KEY, QUERY, SUPPORT)
  scores, inter = run("lwa", params, QUERY, SUPPORT)
  support_f, query_f, w = inter["support_features"][0], inter["features"][0], inter["weights"][0]
  r1, r0 = numpy_means(support_f, SUPPORT["target"], SUPPORT["mask"], 3.0)  # items 0, 2, 4 vs 1, 3
  chex.assert_shape(w, (2, 3))
  np.testing.assert_allclose(w, np.broadcast_to(r1 - r0, w.shape), rtol=1e-5, atol=1e-6)
  head = params["params"]["head"]
  log_odds = np.log((3 + 1) / (2 + 1))
  want = head["kernel"][0, 0] * (query_f @ (r1 - r0)) + head["kernel"][1, 0] * log_odds + head["bias"][0]
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.apply(params, QUERY, SUPPORT), scores, rtol=1e-6)


def test_lwa_user_with_no_negatives_uses_the_learned_empty_class():
  model = get_model("lwa", SPEC, **KW)
  params = model.init(KEY, QUERY, SUPPORT)
  params = jax.tree.map(lambda a: a, params)
  params["params"]["empty_neg"] = np.array([0.5, -1.0, 2.0], np.float32)
  all_positive = dict(SUPPORT, target=np.where(SUPPORT["mask"], 5.0, 0.0).astype(np.float32))
  scores, inter = run("lwa", params, QUERY, all_positive)
  support_f, w = inter["support_features"][0], inter["weights"][0]
  r1 = support_f[SUPPORT["mask"]].mean(0)
  np.testing.assert_allclose(w[0], r1 - params["params"]["empty_neg"], rtol=1e-5, atol=1e-6)
  assert np.isfinite(scores).all()
  # An empty support: both classes empty, the weights are the difference of the two learned vectors.
  empty = dict(SUPPORT, mask=np.zeros(6, bool))
  _, inter = run("lwa", params, QUERY, empty)
  np.testing.assert_allclose(inter["weights"][0][0], -params["params"]["empty_neg"], atol=1e-7)


def test_lwa_leaves_a_scored_support_item_out_of_its_own_means():
  model = get_model("lwa", SPEC, **KW)
  params = model.init(KEY, QUERY, SUPPORT)
  base = np.asarray(model.apply(params, SUPPORT, SUPPORT))
  for s in range(5):  # flipping item s's class changes every other support item's score, not its own
    flipped = dict(SUPPORT, target=SUPPORT["target"].copy())
    flipped["target"][s] = 1.0 if SUPPORT["target"][s] >= 3 else 5.0
    got = np.asarray(model.apply(params, SUPPORT, flipped))
    assert got[s] == pytest.approx(base[s], abs=1e-6)
    others = [i for i in range(5) if i != s]
    assert np.abs(got[others] - base[others]).max() > 1e-4


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_padding_and_order_of_the_support_do_not_matter(name):
  model = get_model(name, SPEC, **KW)
  params = model.init(KEY, QUERY, SUPPORT)
  base = np.asarray(model.apply(params, QUERY, SUPPORT))
  perm = np.array([4, 2, 0, 3, 1, 5])  # real rows permuted, the padded row kept last
  permuted = {k: v[perm] for k, v in SUPPORT.items()}
  np.testing.assert_allclose(model.apply(params, QUERY, permuted), base, rtol=1e-5, atol=1e-6)
  other_pad = dict(SUPPORT, target=SUPPORT["target"].copy(), item=SUPPORT["item"].copy())
  other_pad["target"][5], other_pad["item"][5] = 1.0, 6  # the padded row now looks like a negative query item
  np.testing.assert_allclose(model.apply(params, QUERY, other_pad), base, rtol=1e-6, atol=1e-7)


def test_nlba_biases_are_built_from_the_class_means():
  model = get_model("nlba", SPEC, **KW, nlba_hidden=(4, 3))
  params = model.init(KEY, QUERY, SUPPORT)
  scores, inter = run("nlba", params, QUERY, SUPPORT, nlba_hidden=(4, 3))
  p = params["params"]
  support_f, h = inter["support_features"][0], inter["features"][0]
  r1, r0 = numpy_means(support_f, SUPPORT["target"], SUPPORT["mask"], 3.0)
  for layer in range(2):
    bias = r0 @ p[f"from_neg_{layer}"]["kernel"] + r1 @ p[f"from_pos_{layer}"]["kernel"]
    h = np.maximum(h @ p[f"layers_{layer}"]["kernel"] + p[f"layers_{layer}"]["bias"] + bias, 0.0)
  log_odds = np.log(4 / 3)
  want = (h @ p["out"]["kernel"])[:, 0] * p["head"]["kernel"][0, 0] + p["head"]["kernel"][1, 0] * log_odds
  np.testing.assert_allclose(scores, want + p["head"]["bias"][0], rtol=1e-5, atol=1e-6)
  # The support changes the biases, so two users with different supports get different scores.
  other = dict(SUPPORT, target=np.array([1, 5, 1, 5, 1, 0], np.float32))
  assert np.abs(np.asarray(model.apply(params, QUERY, other)) - scores).max() > 1e-4


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="nlba_hidden must name at least one layer"):
    get_model("nlba", SPEC, nlba_hidden=())
  with pytest.raises(ValueError, match="dim and emb_dim must be >= 1"):
    get_model("lwa", SPEC, dim=0)
  with pytest.raises(ValueError, match="has no side features"):
    get_model("lwa", SPECS["bare"], use_ids=False)
  model = get_model("lwa", SPEC, **KW)
  params = model.init(KEY, QUERY, SUPPORT)
  batched = {k: v[None] for k, v in QUERY.items()}
  with pytest.raises(ValueError, match=r"lwa scores one task"):
    model.apply(params, batched, SUPPORT)


def _planted_tasks(feats, n_tasks: int, seed: int) -> dict:
  """Tasks [T] of users who click the items of one cluster (cluster = item % 2, the user's taste = task % 2):
  support 3 + 3 items, query 2 + 2, so every query holds both classes."""
  rng = np.random.default_rng(seed)
  n_items = feats.item_dense.shape[0]
  sup, qry = [], []
  for t in range(n_tasks):
    items = [rng.permutation(np.arange(c, n_items, 2))[:5] for c in (0, 1)]
    support_items, query_items = np.concatenate([i[:3] for i in items]), np.concatenate([i[3:] for i in items])
    for out, chosen in ((sup, support_items), (qry, query_items)):
      clicks = (chosen % 2 == t % 2).astype(np.float32)
      out.append(make_examples(feats, np.full(len(chosen), t), chosen, clicks, np.ones(len(chosen), bool)))
  stack = lambda xs: {k: np.stack([x[k] for x in xs]) for k in xs[0]}  # noqa: E731
  return {"support": stack(sup), "query": stack(qry)}


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_trained_with_none_the_support_carries_each_users_taste(name):
  """Users with opposite tastes share the items: only the support can tell them apart. Trained with learner
  `none` (identity adapt), the model ranks each user's query by the support; with the support emptied every user
  gets the same ranking, whose AUC averages near chance."""
  n_users, n_items = 8, 24
  rng = np.random.default_rng(0)
  dense = rng.normal(0.0, 0.3, (n_items, 4)).astype(np.float32)
  dense[:, 0] += np.where(np.arange(n_items) % 2 == 0, 1.0, -1.0)
  empty = lambda n: np.zeros((n, 0), np.float32)  # noqa: E731
  feats = FeatureMatrices(
    empty(n_users).astype(np.int32),
    empty(n_items).astype(np.int32),
    empty(n_users),
    empty(n_items),
    empty(n_users),
    dense,
  )
  spec = FeatureSpec(n_users, n_items, (), (), 0, 0, 0, 4)
  model = get_model(name, spec, emb_dim=4, hidden=(8,), dim=4, use_ids=False)
  learner = get_learner("none", model, loss="bce")
  train = _planted_tasks(feats, n_users, seed=1)
  one = jax.tree.map(lambda a: a[0], train)
  params = learner.init(KEY, model.init(KEY, one["query"], one["support"]))
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, opt):
    grads = jax.vmap(lambda t: learner.task_grad(p, t, KEY)[0])(train)
    updates, opt = tx.update(jax.tree.map(lambda g: g.mean(0), grads), opt)
    return optax.apply_updates(p, updates), opt

  opt = tx.init(params)
  for _ in range(100):
    params, opt = step(params, opt)
  test = _planted_tasks(feats, n_users, seed=2)

  # One program for both supports below (same shapes), instead of the vmapped model dispatched op by op twice.
  score = jax.jit(jax.vmap(lambda p, q, s: model.apply(learner.adapt(p, s, KEY), q, s), in_axes=(None, 0, 0)))

  def auc(support):
    scores = score(params, test["query"], support)
    return float(
      np.mean(evaluate_batch(["auc"], scores, test["query"]["target"], test["query"]["mask"], "threshold:1")["auc"])
    )

  with_support = auc(test["support"])
  without = auc(dict(test["support"], mask=np.zeros_like(test["support"]["mask"])))
  print(name, "query AUC with the support", with_support, "without", without)
  assert with_support > 0.95, with_support
  assert abs(without - 0.5) < 0.2 and with_support - without > 0.3, (with_support, without)
