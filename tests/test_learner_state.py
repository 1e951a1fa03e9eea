"""The trainer's optional learner fields (learner_state.py): a learner that sets none runs the plain step; the
extension path adds exactly its batch term (a zero term leaves the step bit-identical); bad combinations fail."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_learners import make_task, tiny_batch, tiny_model

from transfer_meta import learner_state
from transfer_meta import step as step_lib
from transfer_meta.learners import get_learner
from transfer_meta.learners.base import has_extensions


def _run(learner, chunk_size=None, tx=None):
  tx = optax.adam(0.01) if tx is None else tx
  task = make_task(0)
  keys = jax.random.split(jax.random.key(0), 2)
  state = step_lib.make_init(learner, tx, {"support": task["support"], "query": task["query"]})[1](keys)
  batch = {**tiny_batch(4), "task_mask": np.array([True, True, True, False]), "task_id": np.arange(4)}
  batch = step_lib.stack_seed_batches([batch, batch])
  step = jax.jit(step_lib.meta_step_fn(learner, tx, chunk_size))
  for _ in range(2):
    state, metrics = step(state, batch, keys)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_zero_batch_term_leaves_the_step_bit_identical(chunk_size):
  plain = get_learner("fomaml", tiny_model(), inner_steps=1, inner_lr=0.1)
  assert not has_extensions(plain)
  zero = plain._replace(
    task_outputs=lambda mp, task, key: {"n": jnp.sum(task["support"]["mask"].astype(jnp.float32))},
    batch_loss=lambda mp, outputs, mask: (0.0 * jnp.sum(outputs["n"] * mask), {}),
  )
  assert has_extensions(zero)
  want, want_metrics = _run(plain, chunk_size)
  got, got_metrics = _run(zero, chunk_size)
  chex.assert_trees_all_equal(got, want)  # meta_params, opt_state, step: every bit
  for name, value in want_metrics.items():
    np.testing.assert_array_equal(got_metrics[name], value, err_msg=name)
  np.testing.assert_array_equal(got_metrics["batch_loss"], 0.0)


def test_nonzero_batch_term_changes_the_step():
  plain = get_learner("fomaml", tiny_model(), inner_steps=1, inner_lr=0.1)
  pull = plain._replace(
    task_outputs=lambda mp, task, key: {"bias": mp["params"]["head"]["bias"]},
    batch_loss=lambda mp, outputs, mask: (jnp.sum(mask * jnp.square(outputs["bias"] - 10.0)), {}),
  )
  want, _ = _run(plain, tx=optax.sgd(0.01))  # sgd: the step is proportional to the gradient
  got, metrics = _run(pull, tx=optax.sgd(0.01))
  assert float(np.min(metrics["batch_loss"])) > 0
  # The batch term pulls the head bias up (towards 10): the step moved it further than the plain step.
  assert np.all(got["meta_params"]["params"]["head"]["bias"] > want["meta_params"]["params"]["head"]["bias"])


def test_inconsistent_optional_fields_fail_clearly():
  plain = get_learner("fomaml", tiny_model())
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="update_state needs init_state"):
    learner_state.meta_step_fn(plain._replace(update_state=lambda *a: a[0], task_outputs=lambda *a: 0.0), tx)
  with pytest.raises(ValueError, match="task_outputs, which is None"):
    learner_state.meta_step_fn(plain._replace(batch_loss=lambda *a: (0.0, {})), tx)
