"""Backbones: shared contract tests parametrised over MODELS (plus variants), then model-specific maths."""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_learners import FAST_COMPILE

from transfer_meta import losses
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.models import MODELS, get_model
from transfer_meta.models.base import adapt_mask, path_str
from transfer_meta.models.features import SideFeatures
from transfer_meta.models.transformer import masked_softmax

U, I, N, S, T = 6, 8, 5, 6, 3
SPECS = {
  "rich": FeatureSpec(
    U,
    I,
    user_cat_sizes=(3, 4),
    item_cat_sizes=(5,),
    user_multi_dim=2,
    item_multi_dim=4,
    user_dense_dim=0,
    item_dense_dim=3,
  ),
  "bare": FeatureSpec(U, I, (), (), 0, 0, 0, 0),
}
# Every registered model with its defaults, plus variants that take other code paths.
CASES = [(name, {}) for name in MODELS] + [
  ("melu", {"use_ids": True}),
  ("mf", {"task_kind": "item", "use_ids": False}),
  ("two_tower", {"task_kind": "item", "similarity": "cosine"}),
  ("transformer", {"task_kind": "item", "num_layers": 2}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]
KEY = jax.random.key(0)


def make_feats(spec: FeatureSpec, seed: int = 0) -> FeatureMatrices:
  """Random feature matrices matching `spec`; users 4 and 5 get different categorical features."""
  rng = np.random.default_rng(seed)
  cats = lambda n, sizes: np.stack([rng.integers(0, k, n) for k in sizes] or [np.zeros((n,))], 1)[:, : len(sizes)]
  multi = lambda n, v: (rng.random((n, v)) < 0.5).astype(np.float32)
  dense = lambda n, d: rng.normal(size=(n, d)).astype(np.float32)
  user_cat = cats(U, spec.user_cat_sizes).astype(np.int32)
  user_cat[4], user_cat[5] = 1, 2  # (a no-op when there are no categorical features)
  return FeatureMatrices(
    user_cat,
    cats(I, spec.item_cat_sizes).astype(np.int32),
    multi(U, spec.user_multi_dim),
    multi(I, spec.item_multi_dim),
    dense(U, spec.user_dense_dim),
    dense(I, spec.item_dense_dim),
  )


def make_task(feats: FeatureMatrices, n: int, seed: int, valid: int | None = None) -> dict:
  """Examples of n distinct (user, item) pairs with ratings 1..5; the last n - valid are padding."""
  rng = np.random.default_rng(seed)
  mask = np.arange(n) < (n if valid is None else valid)
  return make_examples(
    feats, rng.permutation(U)[:n], rng.permutation(I)[:n], rng.integers(1, 6, n).astype(np.float32), mask
  )


def concat(a: dict, b: dict) -> dict:
  return {k: np.concatenate([a[k], b[k]]) for k in a}


@functools.cache
def built(case: int, spec_name: str):
  """(model, params, feats, x [N], context [S]) for a case, built once per test session."""
  name, kw = CASES[case]
  spec = SPECS[spec_name]
  if spec_name == "bare":
    if "use_ids" not in inspect.signature(MODELS[name]).parameters:  # reads side features only (TaNP)
      with pytest.raises(ValueError, match="no side features"):
        get_model(name, spec, **kw)
      pytest.skip(f"{name} reads side features only; refusing the bare spec is asserted above")
    kw = {"use_ids": True, **kw}  # without side features a model needs ids (see test_no_input_is_an_error)
  model = get_model(name, spec, **kw)
  feats = make_feats(spec)
  x, context = make_task(feats, N, seed=1), make_task(feats, S, seed=2, valid=S - 1)
  return model, model.init(KEY, x, context), feats, x, context


_JITTED: dict[int, tuple] = {}


def jitted(model):
  """`model.apply`, jitted once per model object (FAST_COMPILE): a test's eager `model.apply` dispatches every
  primitive as its own program (Flax also shape-checks each parameter per call), ~25% of this file's CPU; one
  compiled program per (model, shapes) computes the same maths (the contract tests compare within tolerances, or
  one program against itself)."""
  if id(model) not in _JITTED:  # the model is kept with its entry, so its id is never reused by another object
    _JITTED[id(model)] = (model, jax.jit(model.apply, compiler_options=FAST_COMPILE))
  return _JITTED[id(model)][1]


def leaves_with_paths(tree) -> dict:
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


cases = pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
specs = pytest.mark.parametrize("spec_name", list(SPECS))


@cases
@specs
def test_shapes_finite_float32(case, spec_name):
  model, params, _, x, context = built(case, spec_name)
  for ctx in (context, None):
    scores = jitted(model)(params, x, ctx)
    chex.assert_shape(scores, (N,))
    assert scores.dtype == jnp.float32
    chex.assert_tree_all_finite(scores)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


@cases
def test_never_reads_scored_target(case):
  model, params, _, x, context = built(case, "rich")
  other = dict(x, target=x["target"] + 7.0)
  np.testing.assert_array_equal(jitted(model)(params, x, context), jitted(model)(params, other, context))


@cases
def test_jit_traces_once_per_shape(case):
  model, params, feats, x, context = built(case, "rich")
  chex.clear_trace_counter()  # the counter is keyed by the function's code, shared across parametrisations

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  @chex.assert_max_traces(n=1)
  def score(p, x, c):
    return model.apply(p, x, c)

  first = score(params, x, context)
  second = score(params, make_task(feats, N, seed=11), make_task(feats, S, seed=12, valid=2))
  assert not np.allclose(first, second)  # different inputs, same compiled function


@cases
def test_vmap_over_tasks_equals_loop(case):
  model, params, feats, _, _ = built(case, "rich")
  xs = [make_task(feats, N, seed=20 + t) for t in range(T)]
  cs = [make_task(feats, S, seed=30 + t, valid=S - t) for t in range(T)]
  stack = lambda ds: {k: np.stack([d[k] for d in ds]) for k in ds[0]}
  batched = jax.vmap(model.apply, in_axes=(None, 0, 0))(params, stack(xs), stack(cs))
  looped = np.stack([jitted(model)(params, x, c) for x, c in zip(xs, cs)])
  chex.assert_shape(batched, (T, N))
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)


@cases
@specs
def test_padding_invariance(case, spec_name):
  model, params, feats, x, context = built(case, spec_name)
  base = jitted(model)(params, x, context)
  pad = make_task(feats, 3, seed=40, valid=0)
  padded_x = jitted(model)(params, concat(x, pad), context)
  chex.assert_shape(padded_x, (N + 3,))
  np.testing.assert_allclose(padded_x[:N], base, rtol=1e-5, atol=1e-5)
  padded_context = jitted(model)(params, x, concat(context, pad))
  np.testing.assert_allclose(padded_context, base, rtol=1e-5, atol=1e-5)


@cases
def test_adapt_and_head_regex(case):
  model, params, *_ = built(case, "rich")
  adapt = leaves_with_paths(adapt_mask(params, model.adapt_regex))
  head = leaves_with_paths(adapt_mask(params, model.head_regex))  # raises if nothing matches
  assert any(adapt.values()) and any(head.values())
  assert all(adapt[p] for p, h in head.items() if h), "head parameters must be adapted by default too"
  assert not all(adapt.values()), "the default adapt set must leave shared parameters out"
  assert not any(adapt[p] for p in adapt if p.endswith("embedding")), "embedding tables are never adapted"


@cases
def test_adapt_set_gradients_finite_and_nonzero(case):
  model, params, _, _, context = built(case, "rich")
  support = context
  grads = jax.jit(
    jax.grad(lambda p: losses.examples_loss(model.apply, p, support, support)), compiler_options=FAST_COMPILE
  )(params)
  chex.assert_tree_all_finite(grads)
  adapt = leaves_with_paths(adapt_mask(params, model.adapt_regex))
  for path, g in leaves_with_paths(grads).items():
    if adapt[path]:
      assert np.abs(g).max() > 0, f"zero gradient for adapted parameter {path}"


def test_get_model_rejects_unknown_names_and_kwargs():
  with pytest.raises(ValueError, match=r"unknown model 'nope'.*melu.*mf.*transformer.*two_tower"):
    get_model("nope", SPECS["rich"])
  for name in ("mf", "two_tower", "transformer"):
    with pytest.raises(ValueError, match="task_kind"):
      get_model(name, SPECS["rich"], task_kind="session")
  with pytest.raises(ValueError, match="similarity"):
    get_model("two_tower", SPECS["rich"], similarity="l2")
  with pytest.raises(TypeError):
    get_model("melu", SPECS["rich"], emb_size=3)


@pytest.mark.parametrize("name", list(MODELS))
def test_feature_width_mismatch_is_a_clear_error(name):
  model = get_model(name, SPECS["rich"])
  x = make_task(make_feats(SPECS["rich"]), N, seed=1)
  x["item_dense"] = x["item_dense"][:, :2]
  with pytest.raises(ValueError, match=r"'item_dense' has width 2, but the FeatureSpec says 3"):
    model.init(KEY, x, x)


@pytest.mark.parametrize("name", ["melu", "two_tower", "transformer"])
def test_no_input_is_an_error(name):
  with pytest.raises(ValueError, match="has no side features in this dataset; pass use_ids=True"):
    get_model(name, SPECS["bare"], use_ids=False)


def test_side_features_match_numpy():
  spec, feats = SPECS["rich"], make_feats(SPECS["rich"])
  x = make_task(feats, N, seed=3)
  x["item_multi"][0] = 0.0  # an item with no genre: the count clamps to 1, the embedding is zero
  for combine in ("concat", "sum"):
    module = SideFeatures(spec, "item", 4, combine)
    params = module.init(KEY, x)
    p = params["params"]
    cat = p["cat_0"]["embedding"][x["item_cat"][:, 0]]
    multi = x["item_multi"] @ p["multi"] / np.maximum(x["item_multi"].sum(1, keepdims=True), 1)
    dense = x["item_dense"] @ p["dense"]["kernel"] + p["dense"]["bias"]
    want = np.concatenate([cat, multi, dense], 1) if combine == "concat" else cat + multi + dense
    np.testing.assert_allclose(module.apply(params, x), want, rtol=1e-5, atol=1e-6)
  bare = make_task(make_feats(SPECS["bare"]), N, seed=3)
  chex.assert_shape(SideFeatures(SPECS["bare"], "user", 4).apply({}, bare), (N, 0))
  chex.assert_shape(SideFeatures(SPECS["bare"], "user", 4, "sum").apply({}, bare), (N, 4))


# --- mf ---------------------------------------------------------------------------------------------------------


def _randomize(params, seed=5):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


def test_mf_matches_hand_computed_formula():
  spec, feats = SPECS["rich"], make_feats(SPECS["rich"])
  model = get_model("mf", spec, dim=4)
  x = make_task(feats, N, seed=4)
  params = _randomize(model.init(KEY, x))
  p = jax.tree_util.tree_map(np.asarray, params["params"])

  def side(name, feature_key, id_key, delta_key, squeeze=False):
    f = p[feature_key]
    out = sum(f[f"cat_{j}"]["embedding"][x[f"{name}_cat"][:, j]] for j in range(x[f"{name}_cat"].shape[1]))
    multi = x[f"{name}_multi"]
    out = out + multi @ f["multi"] / np.maximum(multi.sum(1, keepdims=True), 1)
    if "dense" in f:
      out = out + x[f"{name}_dense"] @ f["dense"]["kernel"] + f["dense"]["bias"]
    out = out + p[id_key]["embedding"][x[name]] + p[delta_key]
    return out[:, 0] if squeeze else out

  u = side("user", "user_features", "user_id", "user_delta")
  v = side("item", "item_features", "item_id", "item_delta")
  bu = side("user", "user_bias_features", "user_id_bias", "user_bias_delta", squeeze=True)
  bi = side("item", "item_bias_features", "item_id_bias", "item_bias_delta", squeeze=True)
  want = (u * v).sum(1) + bu + bi + p["global_bias"]
  np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_mf_new_user_scores_from_features():
  spec, feats = SPECS["rich"], make_feats(SPECS["rich"])
  model, plain = get_model("mf", spec), get_model("mf", spec, use_ids=False)
  items = np.arange(N)
  new4, new5 = make_examples(feats, np.full(N, 4), items), make_examples(feats, np.full(N, 5), items)
  params = model.init(KEY, new4)
  assert not np.any(params["params"]["user_id"]["embedding"]), "id tables start at zero"
  # As if users 0..3 were trained: their id rows move, users 4 and 5 (never seen) keep zero rows.
  trained = _randomize(params)
  for key in ("user_id", "user_id_bias"):
    table = trained["params"][key]["embedding"]
    trained["params"][key]["embedding"] = table.at[4:].set(0.0)
  s4, s5 = model.apply(trained, new4), model.apply(trained, new5)
  assert np.abs(s4 - s5).min() > 1e-4, "different features must give different scores"
  # A zero id row adds nothing: with new items too, the score is exactly the features-only model's.
  cold = {"params": dict(trained["params"])}
  for key in ("item_id", "item_id_bias"):
    cold["params"][key] = {"embedding": jnp.zeros_like(trained["params"][key]["embedding"])}
  features_only = {"params": {k: v for k, v in trained["params"].items() if "_id" not in k}}
  np.testing.assert_allclose(model.apply(cold, new4), plain.apply(features_only, new4), rtol=1e-6, atol=1e-6)


# --- transformer --------------------------------------------------------------------------------------------------


TRANSFORMER_CASES = [CASE_IDS.index(i) for i in CASE_IDS if i.startswith("transformer")]


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=[CASE_IDS[c] for c in TRANSFORMER_CASES])
def test_transformer_leave_one_out(case):
  model, params, _, _, support = built(case, "rich")  # the support's last token is padding
  base = jitted(model)(params, support, support)
  j = 2
  changed = dict(support, target=support["target"].copy())
  changed["target"][j] = 1.0 if support["target"][j] > 3 else 5.0
  after = jitted(model)(params, changed, changed)
  np.testing.assert_allclose(after[j], base[j], rtol=0, atol=1e-6)  # its own rating never reaches it
  others = np.array([i for i in range(S - 1) if i != j])
  assert np.all(np.abs(after[others] - base[others]) > 1e-5), (after, base)


def test_transformer_empty_context_is_finite_and_equals_none():
  model, params, feats, x, _ = built(TRANSFORMER_CASES[0], "rich")
  context = make_task(feats, S, seed=8, valid=0)
  np.testing.assert_allclose(jitted(model)(params, x, context), jitted(model)(params, x, None), rtol=1e-6, atol=1e-6)
  loss = lambda p: losses.examples_loss(model.apply, p, dict(x, target=x["target"] + 1), context)
  chex.assert_tree_all_finite(jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params))


def test_masked_softmax():
  logits = jnp.array([[1.0, 2.0, 3.0], [5.0, -1.0, 0.0]])
  mask = jnp.array([[True, False, True], [False, False, False]])
  e1, e3 = np.exp(1.0), np.exp(3.0)
  want = np.array([[e1 / (e1 + e3), 0.0, e3 / (e1 + e3)], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(masked_softmax(logits, mask), want, rtol=1e-6)
  chex.assert_shape(masked_softmax(jnp.zeros((2, 0)), jnp.zeros((2, 0), bool)), (2, 0))
  grad = jax.grad(lambda l: jnp.sum(masked_softmax(l, mask) * jnp.arange(3.0)))(logits)
  chex.assert_tree_all_finite(grad)
  np.testing.assert_array_equal(grad[1], 0.0)
