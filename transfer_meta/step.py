"""The meta-step: one jitted program that trains every seed at once, and what builds it.

    tx = make_optimizer(config)
    abstract_state, init = make_init(learner, tx, example, mesh)      # shapes first, then the state
    step = jit_meta_step(meta_step_fn(learner, tx), mesh)             # vmap(task_grad) over tasks, per seed
    state, metrics = step(state, stack_seed_batches(batches), train_keys)

The state carries a leading seed axis N; per-step randomness is `fold_in(train key of seed n, step)`, split
over tasks. `transfer_meta.train` re-exports these names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from transfer_meta import chunking, dispatch, learner_state, programs, sharding, xla_options
from transfer_meta.learners.base import Learner, has_extensions

STEP_INPUTS = "step_inputs"  # model.aux hook / step attribute: arrays the jitted step takes as arguments


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """optax outer optimiser `config.optimizer_name(**config.optimizer)`, after global-norm clipping if
  `config.grad_clip_norm > 0`; the same object for the same three (`programs.reused`), so the programs built over
  it are reused by later runs of the process."""
  return optimizer(config.optimizer_name, config.optimizer.to_dict(), config.grad_clip_norm)


@programs.reused
def optimizer(name: str, kwargs: dict, grad_clip_norm: float) -> optax.GradientTransformation:
  """`make_optimizer` from its inputs: optax's `name(**kwargs)`, after global-norm clipping if `grad_clip_norm > 0`."""
  factory = getattr(optax, name, None)
  if factory is None or not callable(factory):
    raise ValueError(f"config.optimizer_name={name!r} is not an optax optimizer (e.g. 'adam', 'adamw', 'sgd', 'lion')")
  tx = factory(**kwargs)
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx) if grad_clip_norm > 0 else tx


def init_one(learner: Learner, tx: optax.GradientTransformation, example: dict, key: jax.Array) -> tuple:
  """(meta_params, opt_state) of one seed; (meta_params, opt_state, learner_state) for a stateful learner.

  Args:
    learner, tx: the learner and the outer optimiser.
    example: one task {"support": x[S], "query": x[Q]} fixing the model's input shapes.
    key: the seed's init key.
  """
  k_model, k_learner = jax.random.split(key)
  model_params = learner.model.init(k_model, example["query"], example["support"])
  meta_params = learner.init(k_learner, model_params)
  if learner.init_state is not None:
    return meta_params, tx.init(meta_params), learner.init_state(learner_state.state_key(k_learner), meta_params)
  return meta_params, tx.init(meta_params)


def make_init(learner: Learner, tx: optax.GradientTransformation, example: dict, mesh: Mesh | None = None):
  """Shapes first: returns (abstract state, init(keys) -> state).

  The state is {"meta_params": [N, ...], "opt_state": [N, ...], "step": int32 []}, plus "learner_state" [N, ...]
  for a stateful learner (`learner_state`). Each seed is initialised by
  one jitted (unvmapped) `init_one` and the seeds are stacked on the host: XLA compiles a vmapped
  initialiser several times slower, and the unvmapped one is shared by every learner with the same model.
  """
  rep = sharding.replicated(mesh) if mesh is not None else None
  one = xla_options.jit_rare(functools.partial(init_one, learner, tx, example))  # a few calls: cheap compile

  names = ("meta_params", "opt_state", learner_state.STATE)

  def abstract_state(keys):
    parts = jax.eval_shape(one, keys[0])
    stack = lambda x: jax.ShapeDtypeStruct((keys.shape[0], *x.shape), x.dtype, sharding=rep)
    state = {name: jax.tree.map(stack, part) for name, part in zip(names, parts)}
    return {**state, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)}

  def init(keys):
    parts = [jax.device_get(one(keys[n])) for n in range(keys.shape[0])]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *parts)
    state = {**dict(zip(names, stacked)), "step": np.zeros((), np.int32)}
    return jax.device_put(state, rep) if rep is not None else jax.tree.map(jnp.asarray, state)

  return abstract_state, init


_masked_task_mean = chunking.masked_task_mean  # the one masked mean over tasks


def meta_step_fn(
  learner: Learner, tx: optax.GradientTransformation, chunk_size: int | None = None, groups: int = 1
) -> Callable:
  """The (unjitted) meta-step over all seeds: `(state, batch, keys) -> (state, metrics)`.

  Args (of the returned function):
    state: from `make_init` (leading seed axis N on meta_params and opt_state).
    batch: seed-stacked task batch {"support": x[N, T, S], "query": x[N, T, Q], "task_mask": bool[N, T], ...}.
    keys: [N] per-seed training keys; step randomness is fold_in(keys[n], step), split over tasks.
  Returns:
    (new state, {metric: f32 [N]}) with the learner's task metrics (masked means over tasks) plus
    'grad_norm' (of the averaged meta-gradient, before clipping) and 'param_norm' (after the update).
    A learner with state or a batch-level loss gets `learner_state.meta_step_fn` (same contract).
  """
  if has_extensions(learner):
    return learner_state.meta_step_fn(learner, tx, chunk_size, groups)
  grad_fn = task_batch_grad_fn(learner, chunk_size, groups)
  aux = learner.model.aux or {}
  share = aux.get("share_grad")  # e.g. the text tail, once per step (text.catalogue_tail)
  fn = step_fn(share(learner, grad_fn) if share else grad_fn, tx)
  if share and aux.get(STEP_INPUTS) is not None:
    fn.step_inputs = aux[STEP_INPUTS]  # `jit_meta_step` passes them as arguments
  return fn


def task_batch_grad_fn(learner: Learner, chunk_size: int | None = None, groups: int = 1) -> Callable:
  """The meta-step's gradient over ONE seed's task batch: `(meta_params, batch, key) -> (grads, metrics)`.

  The masked mean over tasks of `learner.task_grad` (`chunking.mean_task_grads`: the trainer's one vmap over
  tasks), each task with its own key `split(key, T)[t]`. batch: {"support": x[T, S], "query": x[T, Q],
  "task_mask": bool[T], ...}.
  """

  def grad_fn(meta_params, batch, key):
    task_keys = jax.random.split(key, batch["task_mask"].shape[0])
    task = {"support": batch["support"], "query": batch["query"]}
    return chunking.mean_task_grads(
      learner.task_grad, meta_params, task, task_keys, batch["task_mask"], chunk_size, groups
    )

  return grad_fn


def step_fn(grad_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """A training step over all seeds from one seed's gradient: `(state, batch, keys) -> (state, metrics)`.

  The meta-step is `step_fn(task_batch_grad_fn(learner), tx)`; other stages (`transfer_meta.stages`) pass
  their own objective's gradient.

  Args:
    grad_fn: `(params, batch, key) -> (grads like params, {name: scalar})` for ONE seed.
    tx: the optimiser (frozen leaves masked inside it).
  Returns:
    step(state, batch [N, ...], keys [N]) with state {"meta_params": [N, ...], "opt_state": [N, ...],
    "step": int32 []}; seed n's key is fold_in(keys[n], step). Metrics f32 [N]: grad_fn's plus 'grad_norm'
    (before clipping) and 'param_norm' (after the update).
  """

  def one_seed(meta_params, opt_state, batch, key):
    grads, metrics = grad_fn(meta_params, batch, key)
    updates, opt_state = tx.update(grads, opt_state, meta_params)
    meta_params = optax.apply_updates(meta_params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(meta_params)
    return meta_params, opt_state, metrics

  def step(state, batch, keys):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, state["step"]))(keys)
    meta_params, opt_state, metrics = jax.vmap(one_seed)(state["meta_params"], state["opt_state"], batch, step_keys)
    return {"meta_params": meta_params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return step


def jit_meta_step(fn: Callable, mesh: Mesh) -> Callable:
  """jit with explicit shardings (state/keys/metrics replicated, batch split on its task axis 1) and the
  state donated. On a mesh of several CPU devices the calls are bounded to `dispatch.MAX_INFLIGHT` in flight
  (`dispatch.bounded`: more than 32 un-synced calls deadlock XLA's CPU client).

  A step with `fn.step_inputs` (`meta_step_fn`, from the model's `step_inputs` hook, e.g. the text tail's cached
  layer inputs: `() -> (arrays, bind)`) gets those arrays as one more argument of the jitted program, placed
  replicated once and not donated, and is traced under `bind(their tracers)`: a large table is then neither a
  constant of the program nor a host callback (which jax never writes to its persistent compilation cache). The
  returned callable keeps the `(state, batch, keys)` signature."""
  rep = sharding.replicated(mesh)
  in_shardings = (rep, sharding.task_sharding(mesh, 1), rep)
  inputs = getattr(fn, STEP_INPUTS, None)
  if inputs is None:
    return dispatch.bounded(jax.jit(fn, in_shardings=in_shardings, out_shardings=(rep, rep), donate_argnums=0), mesh)
  arrays, bind = inputs()

  def with_inputs(state, batch, keys, arrays):
    with bind(arrays):
      return fn(state, batch, keys)

  jitted = jax.jit(with_inputs, in_shardings=(*in_shardings, rep), out_shardings=(rep, rep), donate_argnums=0)
  placed = jax.device_put(arrays, rep)
  step = dispatch.bounded(jitted, mesh)
  return lambda state, batch, keys: step(state, batch, keys, placed)


@xla_options.jit_rare  # a few calls per learner: cheap compile (a `where`: exact at any level)
def _select(best, current, improved):
  """Per seed: `current` where `improved` [N] else `best` (fresh buffers, never aliases the donated state)."""
  return jax.tree.map(lambda b, c: jnp.where(improved.reshape((-1,) + (1,) * (c.ndim - 1)), c, b), best, current)


def _pad_axis1(x: dict, length: int) -> dict:
  """Pads an examples dict [T, L, ...] to [T, length, ...] with masked zeros (the dict itself when already that
  long: `np.pad` costs ~40 us a leaf even with nothing to pad, a third of a training batch's host time)."""
  if all(v.shape[1] == length for v in x.values()):
    return x
  return {k: np.pad(v, [(0, 0), (0, length - v.shape[1])] + [(0, 0)] * (v.ndim - 2)) for k, v in x.items()}


def stack_seed_batches(batches: Sequence[dict]) -> dict:
  """Stacks per-seed task batches into [N, T, ...], padding supports/queries to the longest among them."""
  out = {"task_mask": np.stack([b["task_mask"] for b in batches]), "task_id": np.stack([b["task_id"] for b in batches])}
  for part in ("support", "query"):
    length = max(b[part]["mask"].shape[1] for b in batches)
    padded = [_pad_axis1(b[part], length) for b in batches]
    out[part] = {k: np.stack([p[k] for p in padded]) for k in padded[0]}
  return out


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """(train keys [N], eval keys [N]): init and per-step randomness come from the train key of seed s."""
  keys = jnp.stack([jax.random.split(jax.random.key(s)) for s in seeds])
  return keys[:, 0], keys[:, 1]


def unstack(tree, n: int):
  """Seed n's slice of a seed-stacked pytree."""
  return jax.tree.map(lambda x: x[n], tree)
