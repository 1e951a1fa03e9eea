"""Shared smoke tests: every learner in LEARNERS x every model (a tiny test model, plus MODELS).

`check_learners` is the one smoke check (init, adapt, finite task_grad, padded task -> zero grads,
vmap == loop, compiles once); a new learner or model is covered with no new test code.
The tiny model and task builders here are reused by test_learner_maths.py and
test_add_learner_example.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.learners import LEARNERS, get_learner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import masked_mean
from transfer_meta.models import MODELS, get_model
from transfer_meta.models.base import Model

N_USERS, N_ITEMS, F, D = 5, 7, 3, 4  # users, items, item multi-hot width, hidden width
S, Q, T = 6, 4, 3  # support length, query length, tasks per batch
INNER_KEYS = ("outer_loss", "inner_loss_before", "inner_loss_after")
# The smoke checks compile ~50 learner x model graphs: XLA's backend optimizations would double the
# file's runtime and change no assertion here (finiteness, exact zeros, shapes, trace counts). XLA's older
# elemental emitters for loop fusions (instead of its MLIR fusion emitters) compile these programs faster, the
# same maths (`python -m experiments.compile_cost --model=melu`: 9.4 -> 6.4 CPU-s to compile melu's program; this
# file 226 -> 189 CPU-s, README "Where the suite's CPU goes").
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

# Feature matrices of a tiny dataset: 2 user categorical features; items: 1 categorical, 3 genres, 2 dense.
_rng = np.random.default_rng(0)
FEATS = FeatureMatrices(
  user_cat=_rng.integers(0, 3, (N_USERS, 2)).astype(np.int32),
  item_cat=_rng.integers(0, 4, (N_ITEMS, 1)).astype(np.int32),
  user_multi=np.zeros((N_USERS, 0), np.float32),
  item_multi=(_rng.random((N_ITEMS, F)) < 0.5).astype(np.float32),
  user_dense=np.zeros((N_USERS, 0), np.float32),
  item_dense=_rng.normal(size=(N_ITEMS, 2)).astype(np.float32),
)
SPEC = FeatureSpec(N_USERS, N_ITEMS, (3, 3), (4,), 0, F, 0, 2)
# Narrow backbones so every learner x model pair compiles fast; a model missing here runs at its defaults.
# The transformer keeps its cross-attention over the support (what couples it to the learners) but
# no self-attention block (tests/test_models.py covers those): a third of this file's compile time.
SMALL = {
  "melu": {"emb_dim": 4, "hidden": (4,)},
  "mf": {"dim": 4},
  "two_tower": {"emb_dim": 4, "hidden": (4,), "out_dim": 4},
  "transformer": {"emb_dim": 4, "width": 4, "num_heads": 1, "num_layers": 0, "mlp_dim": 4, "hidden": (4,)},
  "tanp": {"emb_dim": 4, "enc_hidden": (4,), "r_dim": 4, "z_dim": 3, "n_clusters": 3, "dec_hidden": (4,)},
  "lwa": {"emb_dim": 4, "hidden": (4,), "dim": 4},
  "nlba": {"emb_dim": 4, "hidden": (4,), "dim": 4, "nlba_hidden": (4,)},
}
# Learners built for one backbone (they read its `aux` functions) are smoke-tested on it; others refuse them.
LEARNER_MODELS = {"tanp": "tanp"}


# ---------------------------------------------------------------------------------------------
# A tiny model: tanh features of the item (id embedding + genres), a linear head, and a term that
# reads the context (the support's mean rating), so a learner that forgets the context is caught.


def _tiny_init(key, x, context=None):
  del x, context
  k1, k2, k3 = jax.random.split(key, 3)
  dtype = jnp.zeros(()).dtype  # float64 under enable_x64
  return {
    "params": {
      "item_emb": {"embedding": 0.5 * jax.random.normal(k1, (N_ITEMS, D), dtype)},
      "body": {"kernel": 0.5 * jax.random.normal(k2, (F, D), dtype)},
      "head": {"kernel": jax.random.normal(k3, (D,), dtype), "bias": jnp.asarray(3.0, dtype)},
      "context": {"scale": jnp.asarray(0.2, dtype)},
    }
  }


def _tiny_apply(params, x, context=None):
  p = params["params"]
  h = jnp.tanh(x["item_multi"] @ p["body"]["kernel"] + p["item_emb"]["embedding"][x["item"]])
  scores = h @ p["head"]["kernel"] + p["head"]["bias"]
  if context is not None:
    scores = scores + p["context"]["scale"] * masked_mean(context["target"], context["mask"])
  return scores


def tiny_model() -> Model:
  """Adapts 'body' and 'head' by default (decision layers, not the embedding); head = 'head'."""
  return Model("tiny", _tiny_init, _tiny_apply, adapt_regex="body|head", head_regex="head")


# ---------------------------------------------------------------------------------------------
# Tasks.


def examples(rng: np.random.Generator, n_real: int, length: int, user: int = 0) -> dict:
  """Examples of one user: `n_real` real interactions then padding to `length`.

  Padding carries garbage (random items, target 100) behind mask False, so a loss or model that
  ignores the mask is caught.
  """
  items = rng.integers(0, N_ITEMS, length)
  target = np.where(np.arange(length) < n_real, rng.integers(1, 6, length), 100.0)
  mask = np.arange(length) < n_real
  return make_examples(FEATS, np.full(length, user), items, target, mask)


def make_task(seed: int, n_support: int = S, n_query: int = Q) -> dict:
  """One task {'support': [S], 'query': [Q]} with n_support/n_query real items (0, 0: a padded task)."""
  rng = np.random.default_rng(seed)
  user = int(rng.integers(0, N_USERS))
  return {"support": examples(rng, n_support, S, user), "query": examples(rng, n_query, Q, user)}


def stack(tasks: list[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *tasks)


def unstack(tree, n: int) -> list:
  return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The shared smoke check.


def check_learners(
  learners: Mapping[str, Learner], model_params, batch: dict, key: jax.Array, compare_loop: bool = True
) -> None:
  """Smoke-checks each learner on a batch of T tasks whose LAST task is padded (all masks False).

  Checks, per learner: init; adapt keeps the model's tree/shapes/dtypes and is finite; task_grad is
  finite and shaped like meta_params, reports the metrics, gives zero grads and losses on the padded
  task and non-zero grads on a real one; with `compare_loop`, vmap equals a loop of single-task
  calls. Each learner's adapt and vmapped task_grad go through ONE jitted function (XLA compile time is
  what these tests spend), which must trace once across two batches. One program per learner, not one
  holding them all: XLA's compile time grows faster than the program, so twelve small programs compile
  faster than their union (`python -m experiments.compile_cost --model=mf [--per_learner]` with FAST_COMPILE:
  compile 19.7 -> 14.0 CPU-s, trace + lower + compile 26.8 -> 21.4; README "Where the suite's CPU goes").
  """
  n = batch["support"]["mask"].shape[0]
  shuffled = jax.tree.map(lambda a: a[np.r_[1 : n - 1, 0, n - 1]], batch)  # same shapes, other data
  for name, learner in learners.items():
    meta = learner.init(key, model_params)
    # A stateful learner (learners/base.py) takes its state last; the state is broadcast like the meta-params.
    state = (learner.init_state(key, meta),) if learner.init_state else ()

    def probe(meta, state, batch, key, learner=learner):  # adapt one task, and the trainer's vmap over tasks
      support0 = jax.tree.map(lambda a: a[0], batch["support"])
      task_grads = jax.vmap(learner.task_grad, in_axes=(None, 0, None) + (None,) * len(state))
      return learner.adapt(meta, support0, key, *state), task_grads(meta, batch, key, *state)

    chex.clear_trace_counter()  # the counter is keyed by function source, shared across learners and calls
    step = jax.jit(chex.assert_max_traces(probe, n=1), compiler_options=FAST_COMPILE)
    # Checked on host copies: numpy indexing instead of an eager jax program per slice.
    task_params, (grads, metrics) = jax.device_get(step(meta, state, batch, key))
    chex.assert_trees_all_equal_shapes_and_dtypes(task_params, model_params)
    chex.assert_tree_all_finite((task_params, grads, metrics))
    per_task = unstack((grads, metrics), n)
    chex.assert_trees_all_equal_shapes_and_dtypes(per_task[0][0], meta)
    for key_name in INNER_KEYS:
      assert metrics[key_name].shape == (n,), (name, key_name, metrics[key_name].shape)
      assert float(metrics[key_name][-1]) == 0.0, (name, key_name)
    for leaf in jax.tree.leaves(grads):  # the padded task contributes nothing
      np.testing.assert_array_equal(leaf[-1], 0.0, err_msg=name)
    assert max(float(np.max(np.abs(leaf), initial=0.0)) for leaf in jax.tree.leaves(per_task[0][0])) > 0, name
    if compare_loop:
      single = jax.jit(learner.task_grad, compiler_options=FAST_COMPILE)
      for i, task in enumerate(unstack(batch, n)):
        chex.assert_trees_all_close(single(meta, task, key, *state), per_task[i], rtol=1e-4, atol=1e-5)
    step(meta, state, shuffled, key)  # assert_max_traces raises if this re-traced


def check_learner(learner: Learner, model_params, batch: dict, key: jax.Array, compare_loop: bool = True) -> None:
  """`check_learners` for one learner."""
  check_learners({learner.name: learner}, model_params, batch, key, compare_loop)


def tiny_batch(n_tasks: int = T) -> dict:
  """`n_tasks` tasks [T, ...]: real ones, then one padded task (all masks False)."""
  return stack([make_task(seed) for seed in range(n_tasks - 1)] + [make_task(99, 0, 0)])


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_smoke_tiny_model(name):
  batch = tiny_batch()
  if name in LEARNER_MODELS:
    model, params = built_model(LEARNER_MODELS[name])
  else:
    model = tiny_model()
    support0 = jax.tree.map(lambda a: a[0], batch["support"])
    params = model.init(jax.random.key(0), support0, support0)
  check_learner(get_learner(name, model), params, batch, jax.random.key(1))


def trace_once(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` run through one `jax.jit` of it whenever an argument is a tracer (inside jit, vmap, grad); eagerly as is.

  A learner's program calls `model.apply` many times (inner loss per step, after-loss, outer loss, under grad, vmap
  and scan), and each direct call re-runs Flax's Python to trace the module again. Through one jitted `fn`, the
  module is traced once per input signature and the cached jaxpr is transformed instead: the 12 learners' programs
  on the transformer below trace in 11.8 -> 4.1 CPU-s, lower in 3.7 -> 4.4 (`python -m experiments.compile_cost
  --model=transformer --per_learner --no_compile [--plain_apply]`, AMD EPYC, load 18-22). The same maths, but not bit
  for bit (cotangents of the nested calls are summed in another order: 1 ulp on one of lwa's gradients), so the
  library's models do not use it; the smoke checks here (finiteness, exact zeros of padded tasks, shapes, one trace)
  hold either way.

  Args:
    fn: a function of pytrees of arrays (and None), e.g. `Model.apply` (params, x, context) -> scores.
  Returns:
    A function with `fn`'s signature and results; `.__wrapped__` is `fn`.
  """
  jitted = jax.jit(fn)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
      return jitted(*args, **kwargs)
    return fn(*args, **kwargs)

  return call


@functools.cache
def built_model(name: str) -> tuple[Model, dict]:
  """(model, params) of a registered backbone, narrowed by SMALL, built once per session; its `apply` and `aux`
  functions `trace_once`, so the 12 learners' programs share one trace of the module per input signature."""
  model = get_model(name, SPEC, **SMALL.get(name, {}))
  aux = model.aux and {k: trace_once(f) for k, f in model.aux.items()}
  model = model._replace(apply=trace_once(model.apply), aux=aux)
  support0 = jax.tree.map(lambda a: a[0], tiny_batch()["support"])
  return model, model.init(jax.random.key(0), support0, support0)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_learner_on_every_model(model_name):
  model, params = built_model(model_name)
  learners = {name: get_learner(name, model) for name in LEARNERS if LEARNER_MODELS.get(name, model_name) == model_name}
  # One real task and a padded one: batching itself (vmap == loop) is checked on the tiny model.
  check_learners(learners, params, tiny_batch(2), jax.random.key(1), compare_loop=False)


def test_trace_once_traces_once_per_signature_and_runs_eagerly_as_is():
  calls = []

  def fn(p, x, context=None):
    calls.append(1)  # once per Python execution: a trace, or an eager call
    return jnp.tanh(x @ p["w"]) + (0.0 if context is None else context["b"])

  once = trace_once(fn)
  p, x, c = {"w": jnp.arange(6.0).reshape(3, 2) / 6}, jnp.ones((4, 3)), {"b": jnp.full((2,), 0.5)}
  np.testing.assert_array_equal(once(p, x, c), fn(p, x, c))  # eager: fn itself, op by op
  np.testing.assert_array_equal(once(p, x, context=c), fn(p, x, c))
  assert len(calls) == 4 and once.__wrapped__ is fn

  def program_of(f):  # three calls at one signature, under grad and vmap, and one at another
    def program(p, x, c):
      loss = lambda q: jnp.sum(f(q, x, c)) + jnp.sum(jax.vmap(lambda r: f(q, r[None], c))(x)) + jnp.sum(f(q, x, c))
      return jax.grad(loss)(p), f(p, x[:2], None)

    return program

  del calls[:]
  jaxpr = str(jax.make_jaxpr(program_of(once))(p, x, c))
  assert len(calls) == 3, len(calls)  # (x, c) once for two calls, (row, c) once, (x[:2], None) once
  assert jaxpr.count("name=fn") >= 3, jaxpr  # the calls stay nested jits of fn
  assert str(jax.make_jaxpr(program_of(once))(p, x, c)) == jaxpr and len(calls) == 3  # cached: fn never reruns
  del calls[:]
  jax.make_jaxpr(program_of(fn))(p, x, c)
  assert len(calls) == 4, len(calls)  # without trace_once each call site runs fn's Python again
  got, plain = jax.jit(program_of(once))(p, x, c), jax.jit(program_of(fn))(p, x, c)
  chex.assert_trees_all_close(got, plain, rtol=1e-6, atol=1e-7)  # the same maths (summed in another order)


def test_unknown_learner_lists_valid_names():
  with pytest.raises(ValueError, match="valid learners.*maml"):
    get_learner("mamll", tiny_model())


def test_bad_keywords_fail_clearly():
  model = tiny_model()
  params = model.init(jax.random.key(0), None, None)
  with pytest.raises(ValueError, match="inner_steps"):
    get_learner("maml", model, inner_steps=-1)
  with pytest.raises(ValueError, match="unknown loss"):
    get_learner("fomaml", model, loss="mae")
  with pytest.raises(ValueError, match="matches no parameter"):
    get_learner("maml", model, adapt_regex="decoder").init(jax.random.key(0), params)
  with pytest.raises(TypeError, match="inner_steps"):
    get_learner("none", model, inner_steps=3)


def test_registry_variants_are_keywords():
  model = tiny_model()
  assert get_learner("anil", model).name == "anil"
  assert get_learner("fomaml", model, inner_steps=2).name == "fomaml"
  for name in LEARNERS:
    model = built_model(LEARNER_MODELS[name])[0] if name in LEARNER_MODELS else tiny_model()
    learner = get_learner(name, model)
    assert learner.name == name and learner.model is model
