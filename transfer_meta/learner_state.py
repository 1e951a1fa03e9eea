"""Learners with non-differentiable state or a batch-level loss: their meta-step and their evaluation view.

DESIGN.md "Learners with state or set-level losses". A learner may set the optional `Learner` fields
(`learners/base.py`):

    state = init_state(key, meta_params)                       # in the training state beside meta_params
    outputs = vmap(task_outputs)(meta_params, task, keys[, state])          # [T, ...], differentiable
    loss, metrics = batch_loss(meta_params, outputs, task_mask)            # once per step: couples the tasks
    grads = mean_T(task_grad) + d loss / d meta_params                     # through the outputs too
    meta_params <- optax update;  state <- update_state(state, meta_params (before the update), outputs, mask)

The per-task `task_grad` stays per task (chunked exactly as for every learner, `chunking.mean_task_grads`);
`task_outputs` is vmapped once over the whole batch (so its memory is one forward pass per task), with the same
per-task keys as `task_grad`, so a sampled quantity is the same draw in both. The outputs handed to
`update_state` carry no gradient.

A learner that sets none of the fields never reaches this module: `step.meta_step_fn` builds the plain step.

Evaluation, selection, checkpoints and serving see a stateful learner through `eval_learner`: a plain learner
over the bundle `{"meta_params": ..., "learner_state": ...}` (`params_view` of the training state), so the state
is checkpointed inside the 'meta_params' / 'best_meta_params' items (the state selected with its parameters) and
every evaluation path (`evaluate`, `ranking_eval`, `serving`) works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from transfer_meta import chunking
from transfer_meta.learners.base import Learner, check_extensions

STATE = "learner_state"


def is_stateful(learner: Learner) -> bool:
  return learner.init_state is not None


def state_key(learner_key: jax.Array) -> jax.Array:
  """The key of `init_state`, derived from the learner's init key (so `learner.init`'s own key is unchanged)."""
  return jax.random.fold_in(learner_key, 1)


def params_view(state: dict):
  """What evaluation and checkpoints see of a training state (or its abstract tree): its 'meta_params', or the
  bundle {'meta_params', 'learner_state'} when the state has a learner state."""
  if STATE not in state:
    return state["meta_params"]
  return {"meta_params": state["meta_params"], STATE: state[STATE]}


def from_view(view, stateful: bool) -> dict:
  """Inverse of `params_view`: the {'meta_params'[, 'learner_state']} part of a training state."""
  if not stateful:
    return {"meta_params": view}
  return {"meta_params": view["meta_params"], STATE: view[STATE]}


def eval_learner(learner: Learner) -> Learner:
  """A plain learner over the bundle of a stateful one (the learner itself when stateless).

  Its init returns a bundle (serving builds its restore target from it), adapt reads the state from the bundle,
  task_grad returns zero gradients for the state (it is never trained by gradient).
  """
  if not is_stateful(learner):
    return learner

  def init(key, model_params):
    meta_params = learner.init(key, model_params)
    return {"meta_params": meta_params, STATE: learner.init_state(state_key(key), meta_params)}

  def adapt(bundle, support, key):
    return learner.adapt(bundle["meta_params"], support, key, bundle[STATE])

  def task_grad(bundle, task, key):
    grads, metrics = learner.task_grad(bundle["meta_params"], task, key, bundle[STATE])
    return {"meta_params": grads, STATE: jax.tree.map(jnp.zeros_like, bundle[STATE])}, metrics

  return Learner(learner.name, learner.model, init, adapt, task_grad)


def batch_grad_fn(learner: Learner, chunk_size: int | None = None, groups: int = 1) -> Callable:
  """One seed's gradient with the batch-level term: `(meta_params, state, batch, key) -> (grads, metrics, outputs)`.

  grads = masked mean over tasks of `task_grad` + the gradient of `batch_loss` (when set); metrics gain
  'batch_loss' and the batch term's own metrics; outputs are the per-task `task_outputs` [T, ...] (None when the
  learner has none), without gradient. `state` is the learner state (None for a stateless learner).
  """
  check_extensions(learner)
  stateful = is_stateful(learner)

  def grad_fn(meta_params, state, batch, key):
    mask = batch["task_mask"]
    keys = jax.random.split(key, mask.shape[0])
    task = {"support": batch["support"], "query": batch["query"]}
    extra = (state,) if stateful else ()
    task_grad = lambda mp, t, k: learner.task_grad(mp, t, k, *extra)  # noqa: E731
    grads, metrics = chunking.mean_task_grads(task_grad, meta_params, task, keys, mask, chunk_size, groups)
    if learner.task_outputs is None:
      return grads, metrics, None
    outputs_of = lambda mp: jax.vmap(lambda t, k: learner.task_outputs(mp, t, k, *extra))(task, keys)  # noqa: E731
    if learner.batch_loss is None:
      return grads, metrics, jax.lax.stop_gradient(outputs_of(meta_params))

    def total(mp):
      outputs = outputs_of(mp)
      loss, batch_metrics = learner.batch_loss(mp, outputs, mask)
      return loss, (batch_metrics, outputs)

    (loss, (batch_metrics, outputs)), batch_grads = jax.value_and_grad(total, has_aux=True)(meta_params)
    grads = jax.tree.map(jnp.add, grads, batch_grads)
    return grads, {**metrics, **batch_metrics, "batch_loss": loss}, jax.lax.stop_gradient(outputs)

  return grad_fn


def meta_step_fn(learner: Learner, tx: optax.GradientTransformation, chunk_size=None, groups: int = 1) -> Callable:
  """The meta-step over all seeds for a learner with optional fields: `(state, batch, keys) -> (state, metrics)`.

  As `step.step_fn` (seed axis N, step key fold_in(keys[n], step), metrics plus 'grad_norm' and 'param_norm'),
  with the batch-level gradient of `batch_grad_fn` and, for a stateful learner, state['learner_state'] [N, ...]
  replaced by `update_state(state, meta_params before the update, outputs, task_mask)`.
  """
  grad_fn = batch_grad_fn(learner, chunk_size, groups)

  def one_seed(meta_params, opt_state, learner_state, batch, key):
    grads, metrics, outputs = grad_fn(meta_params, learner_state, batch, key)
    updates, opt_state = tx.update(grads, opt_state, meta_params)
    new_params = optax.apply_updates(meta_params, updates)
    if learner.update_state is not None:
      learner_state = learner.update_state(learner_state, meta_params, outputs, batch["task_mask"])
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(new_params)
    return new_params, opt_state, learner_state, metrics

  def step(state, batch, keys):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, state["step"]))(keys)
    learner_state = state.get(STATE)
    meta_params, opt_state, learner_state, metrics = jax.vmap(one_seed)(
      state["meta_params"], state["opt_state"], learner_state, batch, step_keys
    )
    new = {"meta_params": meta_params, "opt_state": opt_state, "step": state["step"] + 1}
    if STATE in state:
      new[STATE] = learner_state
    return new, metrics

  return step
