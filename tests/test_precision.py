"""bf16 compute with f32 meta-parameters (`transfer_meta.precision.with_compute_dtype`)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import transfer_meta as tm
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.learners import get_learner
from transfer_meta.models import get_model
from transfer_meta.precision import cast_floats, with_compute_dtype

N = 12


@pytest.fixture(scope="module")
def setup():
  data = tm.load_dataset("synthetic", n_users=20, n_items=30, ratings_per_user=(5, 10), seed=1)
  feats, spec = FeatureMatrices.from_interactions(data), FeatureSpec.from_interactions(data)
  rng = np.random.default_rng(0)
  x = make_examples(feats, rng.integers(0, 20, N), rng.integers(0, 30, N), rng.integers(1, 6, N).astype(np.float32))
  model = get_model("melu", spec, emb_dim=8, hidden=(16, 16))
  params = model.init(jax.random.key(0), x, None)
  return model, params, x


def test_cast_floats_casts_only_floats():
  tree = {"a": jnp.ones(2, jnp.float32), "b": jnp.arange(2), "c": jnp.array([True]), "d": None}
  out = cast_floats(tree, jnp.bfloat16)
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == tree["b"].dtype and out["c"].dtype == jnp.bool_
  assert out["d"] is None


def test_bf16_scores_close_to_f32_and_returned_as_f32(setup):
  model, params, x = setup
  bf16 = with_compute_dtype(model, jnp.bfloat16)
  assert (bf16.name, bf16.adapt_regex, bf16.head_regex, bf16.init) == (
    model.name,
    model.adapt_regex,
    model.head_regex,
    model.init,
  )
  want, got = model.apply(params, x, None), jax.jit(bf16.apply)(params, x, None)
  assert got.dtype == jnp.float32 and got.shape == (N,)
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)  # bf16 keeps ~3 significant digits
  assert not np.array_equal(np.asarray(got), np.asarray(want))  # the bf16 path really ran in lower precision
  same = with_compute_dtype(model, jnp.float32).apply(params, x, None)
  np.testing.assert_allclose(same, want, rtol=1e-6)


def test_bf16_grads_reach_f32_params_and_match_f32(setup):
  model, params, x = setup
  bf16 = with_compute_dtype(model, jnp.bfloat16)
  loss = lambda m: lambda p: jnp.mean((m.apply(p, x, None) - x["target"]) ** 2)
  want, got = jax.jit(jax.grad(loss(model)))(params), jax.jit(jax.grad(loss(bf16)))(params)  # one program each
  for leaf in jax.tree.leaves(got):
    assert leaf.dtype == jnp.float32
  flat_w, flat_g = ravel_pytree(want)[0], ravel_pytree(got)[0]
  cos = float(flat_w @ flat_g / (jnp.linalg.norm(flat_w) * jnp.linalg.norm(flat_g)))
  assert cos > 0.99, cos
  np.testing.assert_allclose(flat_g, flat_w, atol=0.05 * float(jnp.abs(flat_w).max()))


def test_bf16_maml_meta_step_keeps_f32_meta_params(setup):
  model, params, x = setup
  task = {"support": jax.tree.map(lambda v: v[:8], x), "query": jax.tree.map(lambda v: v[8:], x)}
  kw = dict(inner_steps=2, inner_lr=0.1)
  want = jax.jit(get_learner("maml", model, **kw).task_grad)(params, task, jax.random.key(0))
  learner = get_learner("maml", with_compute_dtype(model, jnp.bfloat16), **kw)
  meta = learner.init(jax.random.key(0), params)
  grads, metrics = jax.jit(learner.task_grad)(meta, task, jax.random.key(0))
  chex.assert_trees_all_equal_dtypes(grads, params)
  chex.assert_tree_all_finite(grads)
  np.testing.assert_allclose(metrics["outer_loss"], want[1]["outer_loss"], rtol=3e-2)
  np.testing.assert_allclose(grads["params"]["output"]["bias"], want[0]["params"]["output"]["bias"], rtol=0.1)


def test_non_float_compute_dtype_is_refused(setup):
  with pytest.raises(ValueError, match="floating-point"):
    with_compute_dtype(setup[0], jnp.int32)
