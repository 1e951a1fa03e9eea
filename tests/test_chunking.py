"""Task chunking (`transfer_meta.chunking`) and inner-step remat: same numbers, less memory.

The reference for a masked mean over tasks is a plain Python loop calling the learner's `task_grad` on each
REAL task and averaging with numpy; the vmap path, every chunk size and remat must all match it.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_learners import trace_once

import transfer_meta as tm
from transfer_meta import chunking
from transfer_meta.chunking import check_chunk_size, masked_task_mean, mean_task_grads
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.learners import get_learner
from transfer_meta.models import get_model

T, S, Q = 6, 5, 3
REAL = np.array([True, True, False, True, True, False])  # two padded tasks, not at the end


@pytest.fixture(scope="module")
def setup():
  data = tm.load_dataset("synthetic", n_users=30, n_items=40, ratings_per_user=(5, 10), seed=0)
  feats, spec = FeatureMatrices.from_interactions(data), FeatureSpec.from_interactions(data)
  model = get_model("melu", spec, emb_dim=4, hidden=(8,))
  model = model._replace(apply=trace_once(model.apply))  # one trace of the module per signature in each program
  rng = np.random.default_rng(0)

  def part(n):
    users = np.repeat(rng.integers(0, 30, T)[:, None], n, axis=1)
    items = rng.integers(0, 40, (T, n))
    target = rng.integers(1, 6, (T, n)).astype(np.float32)
    mask = np.arange(n)[None, :] < rng.integers(1, n + 1, T)[:, None]  # ragged real lengths
    x = make_examples(feats, users, items, target * mask, mask & REAL[:, None])
    x["target"] = np.where(REAL[:, None], x["target"], np.nan).astype(np.float32)  # padded tasks hold NaN
    return x

  task = {"support": part(S), "query": part(Q)}
  keys = jax.random.split(jax.random.key(1), T)
  params = model.init(jax.random.key(0), jax.tree.map(lambda x: x[0], task["query"]), None)
  return model, task, keys, params


def loop_reference(task_grad, params, task, keys):
  """Mean over real tasks by a Python loop: one jitted single-task call per task, numpy average."""
  one = jax.jit(task_grad)
  outs = [one(params, jax.tree.map(lambda x, t=t: x[t], task), keys[t]) for t in np.flatnonzero(REAL)]
  return jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *outs)


MEAN = jax.jit(mean_task_grads, static_argnums=(0, 5, 6))  # (task_grad, ..., chunk_size, groups) static
LEARNERS = {}


def learner_for(model, name: str):
  """One learner object per name, so MEAN's compilations are shared between tests."""
  if name not in LEARNERS:
    kw = {"maml": dict(inner_steps=2, inner_lr=0.1), "fomaml": dict(inner_steps=1, inner_lr=0.1)}[name]
    LEARNERS[name] = get_learner(name, model, **kw)
  return LEARNERS[name]


@pytest.mark.parametrize("learner_name,chunks", [("maml", ((None, 1), (2, 1), (3, 1), (2, 2))), ("fomaml", ((3, 3),))])
def test_chunked_equals_plain_vmap_and_a_python_loop(setup, learner_name, chunks):
  model, task, keys, params = setup
  learner = learner_for(model, learner_name)
  mask = jnp.asarray(REAL)
  want_grads, want_metrics = loop_reference(learner.task_grad, params, task, keys)
  assert np.isfinite(np.asarray(want_metrics["outer_loss"])) and want_metrics["outer_loss"] > 0
  for chunk, groups in chunks:
    grads, metrics = MEAN(learner.task_grad, params, task, keys, mask, chunk, groups)
    chex.assert_tree_all_finite((grads, metrics))  # the NaN targets of padded tasks never leak
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(metrics, want_metrics, rtol=1e-5, atol=1e-6)
    assert set(metrics) == {"outer_loss", "inner_loss_before", "inner_loss_after"}


def test_chunk_size_must_divide_the_task_count(setup):
  model, task, keys, params = setup
  learner = get_learner("maml", model, inner_steps=1)
  with pytest.raises(
    ValueError,
    match=r"chunk_size=4 must be a positive divisor of the task batch size 6.*"
    r"\[1, 2, 3, 6\]",
  ):
    mean_task_grads(learner.task_grad, params, task, keys, jnp.asarray(REAL), 4)
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match="positive divisor"):
      check_chunk_size(bad, 6)
  with pytest.raises(ValueError, match="groups=2 must be a positive divisor of chunk_size=3"):
    mean_task_grads(learner.task_grad, params, task, keys, jnp.asarray(REAL), 3, groups=2)
  check_chunk_size(None, 6)
  check_chunk_size(3, 6)


def test_all_padded_batch_gives_zeros_not_nan(setup):
  model, task, keys, params = setup
  learner = learner_for(model, "maml")
  none = jnp.zeros(T, bool)
  for chunk in (None, 2):  # compiled by the test above
    grads, metrics = MEAN(learner.task_grad, params, task, keys, none, chunk, 1)
    for leaf in jax.tree.leaves((grads, metrics)):
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_masked_task_mean_by_hand():
  values = jnp.array([[1.0, 2.0], [3.0, 4.0], [jnp.nan, jnp.inf], [5.0, 9.0]])
  np.testing.assert_allclose(masked_task_mean(values, jnp.array([True, True, False, True])), [3.0, 5.0])
  np.testing.assert_array_equal(masked_task_mean(values, jnp.zeros(4, bool)), [0.0, 0.0])


def test_chunking_lowers_peak_memory_of_a_large_batch(setup):
  """The compiled step's temporary buffers shrink with the chunk size (second order, 2 inner steps)."""
  model, task, _, params = setup
  big = 64
  task = jax.tree.map(lambda x: np.resize(x, (big,) + x.shape[1:]), task)
  task = jax.tree.map(lambda x: np.nan_to_num(x) if x.dtype.kind == "f" else x, task)
  keys, mask = jax.random.split(jax.random.key(0), big), jnp.ones(big, bool)
  learner = learner_for(model, "maml")

  def temp_bytes(chunk):
    fn = jax.jit(lambda p, t, k, m: mean_task_grads(learner.task_grad, p, t, k, m, chunk))
    stats = fn.lower(params, task, keys, mask).compile().memory_analysis()
    if stats is None:
      pytest.skip("this backend reports no memory analysis")
    return stats.temp_size_in_bytes

  plain, chunked = temp_bytes(None), temp_bytes(8)
  assert chunked < plain / 2, (plain, chunked)


def test_remat_inner_steps_give_the_same_meta_gradient(setup):
  model, task, keys, params = setup
  one = jax.tree.map(lambda x: x[0], task)
  kw = dict(inner_steps=3, inner_lr=0.1)
  plain = jax.jit(get_learner("maml", model, **kw).task_grad)(params, one, keys[0])
  remat = jax.jit(get_learner("maml", model, remat=True, **kw).task_grad)(params, one, keys[0])
  chex.assert_trees_all_close(remat, plain, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(plain[0]["params"]["decision_0"]["kernel"]).max()) > 1e-4  # a real gradient, not zeros


def test_chunked_mean_under_the_trainers_seed_vmap(setup):
  """The trainer vmaps its step over seeds: the scan over chunks must batch over that axis too."""
  model, task, keys, params = setup
  learner = learner_for(model, "fomaml")
  masks = jnp.stack([jnp.asarray(REAL), jnp.asarray(REAL).at[0].set(False)])
  seed_keys = jnp.stack([keys, jax.random.split(jax.random.key(7), T)])
  per_seed = jax.jit(jax.vmap(lambda k, m: mean_task_grads(learner.task_grad, params, task, k, m, 3)))
  got = per_seed(seed_keys, masks)
  for n in range(2):
    want = MEAN(learner.task_grad, params, task, seed_keys[n], masks[n], None, 1)
    chex.assert_trees_all_close(jax.tree.map(lambda x, n=n: x[n], got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "n_tasks, devices, want",
  [
    (32, 1, (None, 32)),  # small batches: the plain vmap, as before
    (64, 1, (None, 64)),
    (65, 1, (22, 66)),  # 65 = 5 x 13, no divisor in [16, 64]: 3 chunks of 22, one padded task
    (256, 1, (32, 256)),
    (300, 1, (30, 300)),  # the divisor nearest 32 in [16, 64]
    (466, 1, (32, 480)),  # 466 = 2 x 233: chunks of 32, padded by 14 masked tasks
    (466, 8, (32, 480)),
    (200, 8, (40, 200)),  # multiples of the device count only
    (1000, 3, (33, 1023)),  # no multiple of 3 in [16, 64] divides 1000: 33-task chunks, 23 padded tasks
  ],
)
def test_auto_chunk_size(n_tasks, devices, want):
  chunk, slots = chunking.auto_chunk_size(n_tasks, devices)
  assert (chunk, slots) == want
  if chunk is not None:
    assert slots % chunk == 0 and chunk % devices == 0 and 0 <= slots - n_tasks < chunk


def test_resolve_chunk_size_settings():
  assert chunking.resolve_chunk_size("auto", 466) == chunking.resolve_chunk_size(-1, 466) == (32, 480)
  assert chunking.resolve_chunk_size(0, 466) == (None, 466)
  assert chunking.resolve_chunk_size("2", 466) == (2, 466)
  with pytest.raises(ValueError, match="positive divisor"):
    chunking.resolve_chunk_size(32, 466)
  with pytest.raises(ValueError, match="want 'auto'"):
    chunking.resolve_chunk_size("big", 466)


def test_auto_chunked_padded_batch_equals_plain_vmap_on_the_real_tasks(setup):
  """A batch padded with masked tasks to a multiple of the chunk gives the plain path's mean on the real tasks."""
  model, task, keys, params = setup
  learner = learner_for(model, "maml")
  real = np.flatnonzero(REAL)
  pad = lambda x: np.concatenate([x, np.zeros((2,) + x.shape[1:], x.dtype)])  # 4 real tasks -> 6 slots
  real_task = jax.tree.map(lambda x: x[real], task)
  padded = jax.tree.map(pad, real_task)
  mask = np.arange(6) < len(real)
  pkeys = jnp.concatenate([keys[real], keys[:2]])
  want = MEAN(learner.task_grad, params, real_task, keys[real], np.ones(len(real), bool), None, 1)
  got = MEAN(learner.task_grad, params, padded, pkeys, mask, 3, 1)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


SUMS = jax.jit(chunking.task_grad_sums, static_argnums=(0, 5, 6, 7))  # (task_grad, ..., chunk, groups, task_loss)


@pytest.mark.parametrize("learner_name,chunks", [("maml", ((3, 1),)), ("fomaml", ((None, 1), (2, 2)))])
def test_folded_task_sums_equal_the_per_task_gradients(setup, learner_name, chunks):
  """`task_loss=` (one gradient of a chunk's masked loss sum, the grouped step's path) gives the vmapped sums:
  plain, chunked, with per-device partial sums; NaN in padded tasks never leaks; no real task gives zeros."""
  model, task, keys, params = setup
  learner = learner_for(model, learner_name)
  assert learner.task_loss is not None
  (grads, metrics), count = SUMS(learner.task_grad, params, task, keys, jnp.asarray(REAL), None, 1, None)
  assert float(count) == REAL.sum()
  for chunk, groups in chunks:
    got, got_count = SUMS(learner.task_grad, params, task, keys, jnp.asarray(REAL), chunk, groups, learner.task_loss)
    chex.assert_tree_all_finite(got)
    chex.assert_trees_all_close(got, (grads, metrics), rtol=1e-5, atol=1e-6)
    assert float(got_count) == REAL.sum()
    none, _ = SUMS(learner.task_grad, params, task, keys, jnp.zeros(T, bool), chunk, groups, learner.task_loss)
    for leaf in jax.tree.leaves(none):
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)
