"""The worked example of "Add a meta-learner" (transfer_meta/learners/README_SECTION.md), under test.

`maml_proximal` below is the code the README shows. It is registered in a COPY of LEARNERS (the
real registry is left alone) and put through the same smoke check every registered learner gets.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from test_learners import check_learner, make_task, tiny_batch, tiny_model

from transfer_meta.learners import LEARNERS, get_learner, inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask
from transfer_meta.registry import lookup

# --- README example: transfer_meta/learners/maml_proximal.py ------------------------------------


def maml_proximal(
  model: Model,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  prox: float = 1.0,
  adapt_regex: str = ".*",
  loss: str = "mse",
  name: str = "maml_proximal",
) -> Learner:
  """MAML whose inner loss adds (prox / 2) * ||phi - meta_params||^2 over the adapted leaves.

  The proximal term (iMAML's, Rajeswaran et al. 2019; here differentiated through the unrolled
  loop) keeps each task's parameters near the meta-initialization; prox=0 is plain MAML.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    adapt_mask(model_params, adapt_regex)  # fail now on a regex that matches nothing
    return model_params

  def inner_loop(params: Params, support: dict) -> tuple[Params, dict]:
    mask = adapt_mask(params, adapt_regex)

    def loss_fn(p):
      dist = [jnp.sum((a - b) ** 2) for a, b, m in zip(*map(jax.tree.leaves, (p, params, mask))) if m]
      return inner.support_loss(model, loss, p, support) + 0.5 * prox * sum(dist)

    return inner.inner_sgd(loss_fn, params, mask, inner_lr, inner_steps)

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key
    return inner_loop(meta_params, support)[0]

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    del key

    def outer(params):
      task_params, metrics = inner_loop(params, task["support"])
      outer_loss = inner.query_loss(model, loss, task_params, task["query"], task["support"])
      return outer_loss, {**metrics, "outer_loss": outer_loss}

    (_, metrics), grads = jax.value_and_grad(outer, has_aux=True)(meta_params)
    return grads, metrics

  return Learner(name, model, init, adapt, task_grad)


# --- README example ends; its registry line is:  "maml_proximal": maml_proximal, ---------------

REGISTRY = {**LEARNERS, "maml_proximal": maml_proximal}
MODEL = tiny_model()
PARAMS = MODEL.init(jax.random.key(0), None, None)


def test_registered_example_passes_the_shared_smoke_check():
  learner = lookup(REGISTRY, "maml_proximal", "learner")(MODEL, inner_steps=2, inner_lr=0.05)
  check_learner(learner, PARAMS, tiny_batch(), jax.random.key(1))
  assert "maml_proximal" not in LEARNERS  # the copy, not the library's registry, was extended


def test_example_without_proximal_term_is_maml():
  task = make_task(3)
  prox = maml_proximal(MODEL, inner_steps=2, inner_lr=0.05, prox=0.0)
  maml = get_learner("maml", MODEL, inner_steps=2, inner_lr=0.05)
  chex.assert_trees_all_close(
    jax.jit(prox.task_grad)(PARAMS, task, None), jax.jit(maml.task_grad)(PARAMS, task, None), rtol=1e-5, atol=1e-6
  )


def test_proximal_term_keeps_task_params_near_the_meta_init():
  support = make_task(3)["support"]
  moved = {}
  for prox in (0.0, 10.0):
    phi = maml_proximal(MODEL, inner_steps=3, inner_lr=0.05, prox=prox).adapt(PARAMS, support, None)
    moved[prox] = float(np.linalg.norm(ravel_pytree(phi)[0] - ravel_pytree(PARAMS)[0]))
  assert 0.0 < moved[10.0] < 0.7 * moved[0.0], moved
