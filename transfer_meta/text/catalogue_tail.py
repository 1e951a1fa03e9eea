"""The fine-tuned text tail computed once per step for the whole catalogue, not once per task slot.

    groups = length_groups(table.mask)                         # static: items by token length
    feats = catalogue_features(tail, table, groups)             # f32 [I, H], the tail's output for every item
    grad_fn = share_grad(learner, catalogue, grad_fn)           # the meta-step's gradient, tail once per step
    meta_params = share_params(learner, catalogue, meta_params, support, key)   # evaluation: same, no gradient

When the learner's inner loop leaves the tail's parameters untouched (they are not in its adapt set), the
tail's output is the same function of the meta-parameters for every task and every inner step: computing it
per task slot (`last_layer.with_text_tail`'s per-slot path) repeats one [I, H] table T x (inner steps + 1)
times per meta-step. Here it is computed once, from the catalogue's cached layer inputs trimmed to each
item's length group (titles average 6 tokens; the cache is padded to the longest, 32), and the model reads
rows of it (`params[TAIL] = {TABLE: feats}`). The meta-gradient is exact: the learner differentiates its
loss with respect to the table as it would any parameter its inner loop does not adapt, and the table's
cotangent is pulled back through the tail once (`jax.vjp`).

Whether the tail is adapted is read from the learner itself, not from a regex: `adapts_tail` traces
`learner.adapt` and checks that every tail leaf of its output is the input leaf, passed through. A learner
that adapts it (e.g. MAML with adapt regex '.*') gets its gradient from the per-slot path, unchanged.

The trainer's jitted meta-step takes the trimmed inputs as ordinary arguments (`step.jit_meta_step` reads the
model's `step_inputs` hook: uploaded once, kept on the device, not donated; while the step is traced, `bind` hands
the catalogue their tracers): no constants in the program and no host round trip, so jax's persistent compilation
cache keeps the step whatever the table's size. Traced anywhere else (a meta-step jitted by hand), the inputs reach
the device through `jax.pure_callback` (a small table, `INLINE_BYTES`, is compiled in as constants instead);
evaluation and serving call the hook eagerly, and the table is then one jitted program over the inputs as arguments
(`catalogue_fn`), computed once per evaluation. All three paths compute the same bits (tested). jax never writes a
program holding a host callback to its persistent compilation cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

TAIL = "text_tail"  # top-level key of the tail's parameters in the wrapped model's params
TABLE = "catalogue_features"  # params[TAIL] = {TABLE: f32 [I, H]}: the tail's output, precomputed
PAD = 8  # group lengths are multiples of this (minilm.PAD_MULTIPLE)
# Outside the trainer's meta-step (which takes them as arguments: `catalogue_fn`'s `step_inputs`), cached layer
# inputs up to this size (states + mask, bytes) are compiled into the programs that read them as constants; larger
# ones (ML-100K's: 1682 x 32 x 384 f32, ~83 MB) reach the device through `jax.pure_callback` per call instead of
# being embedded in every program. jax never writes a program holding a host callback to its persistent compilation
# cache, so inlined tables also make their programs cacheable.
INLINE_BYTES = 1 << 20


def inlined(states: np.ndarray, mask: np.ndarray) -> bool:
  """Whether a table of layer inputs is small enough (`INLINE_BYTES`) to be compiled in as constants."""
  return states.nbytes + mask.nbytes <= INLINE_BYTES


Group = tuple[np.ndarray, int]  # (item ids int32 [n], token length L of the group)


def length_groups(mask: np.ndarray, pad: int = PAD) -> tuple[Group, ...]:
  """Items grouped by real token length rounded up to `pad`: every item in exactly one group.

  Args:
    mask: bool [I, L] real tokens per item (the tail table's mask).
    pad: group lengths are multiples of this; an item with no tokens joins the shortest group.
  Returns:
    ((ids int32 [n_g], L_g), ...) in increasing L_g, L_g <= L.
  """
  if mask.ndim != 2 or mask.dtype != bool:
    raise ValueError(f"length_groups: mask must be bool [I, L], got {mask.dtype} {mask.shape}")
  lengths = mask.sum(axis=1)
  rounded = np.minimum(np.maximum(-(-lengths // pad) * pad, pad), mask.shape[1])
  return tuple((np.flatnonzero(rounded == g).astype(np.int32), int(g)) for g in np.unique(rounded))


def trimmed(states: np.ndarray, mask: np.ndarray, groups: Sequence[Group]) -> tuple[np.ndarray, ...]:
  """The groups' layer inputs, each trimmed to its length: (states f32 [n_g, L_g, H], mask bool [n_g, L_g], ...)."""
  return tuple(a for ids, L in groups for a in (states[ids, :L], mask[ids, :L]))


def assemble(tail_fn: Callable, tail_params: Any, parts: Sequence, groups: Sequence[Group], n_items: int) -> jax.Array:
  """f32 [I, H]: row i = `tail_fn` of item i, from `trimmed`'s parts (host arrays, callback results or arguments)."""
  outs = [tail_fn(tail_params, parts[2 * g], parts[2 * g + 1]).astype(jnp.float32) for g in range(len(groups))]
  out = jnp.zeros((n_items, outs[0].shape[-1]), jnp.float32)
  for (ids, _), o in zip(groups, outs):
    out = out.at[ids].set(o)
  return out


def catalogue_features(
  tail_fn: Callable, tail_params: Any, states: np.ndarray, mask: np.ndarray, groups: Sequence[Group]
) -> jax.Array:
  """The tail's output for every item of the catalogue, one call per length group.

  Args:
    tail_fn: `(tail_params, states [n, L, H], mask [n, L]) -> f32 [n, H]` (the per-slot tail).
    tail_params: the tail layer's parameters.
    states, mask: f32 [I, L, H] and bool [I, L], the cached layer inputs (host memory).
    groups: `length_groups(mask)`.
  Returns:
    f32 [I, H], row i = tail_fn of item i alone (padding beyond an item's group length never reaches it:
    attention and pooling mask it out).
  """
  I, _, H = states.shape
  shapes = tuple(
    s
    for ids, L in groups
    for s in (jax.ShapeDtypeStruct((len(ids), L, H), jnp.float32), jax.ShapeDtypeStruct((len(ids), L), bool))
  )
  host = lambda: trimmed(states, mask, groups)  # noqa: E731  (per call, instead of [I, L, H] constants per program)
  # Inlined, behind a barrier: XLA does not fold the layer into the constants, so both paths compute the same bits.
  parts = jax.lax.optimization_barrier(host()) if inlined(states, mask) else jax.pure_callback(host, shapes)
  return assemble(tail_fn, tail_params, parts, groups, I)


def catalogue_fn(tail_fn: Callable, states: np.ndarray, mask: np.ndarray, groups: Sequence[Group]) -> Callable:
  """`tail_params -> f32 [I, H]`: `catalogue_features` inside a trace (a jitted meta-step differentiates it);
  called eagerly (evaluation and serving, once per evaluation / bundle), one jitted program that takes the trimmed
  inputs as arguments, uploaded once: no host callback, so jax's persistent compilation cache keeps it.

  The returned function also has `step_inputs() -> (parts, bind)`: the trimmed inputs on the device (the eager
  program's upload, shared) and a context manager `bind(traced parts)` under which a traced call reads those
  tracers instead of a callback or constants (`step.jit_meta_step` passes them as arguments of the step)."""
  on_device: list = []  # the trimmed inputs on the device, from the first eager call / `step_inputs` on
  bound: list = []  # tracers of those inputs while a jitted step that takes them as arguments is traced

  def program(tail_params, parts):
    return assemble(tail_fn, tail_params, parts, groups, states.shape[0])

  jitted = jax.jit(program)

  def device_parts() -> tuple:
    if not on_device:
      on_device.append(jax.device_put(trimmed(states, mask, groups)))
    return on_device[0]

  @contextlib.contextmanager
  def bind(parts: Sequence) -> Iterator[None]:
    if len(parts) != 2 * len(groups):
      raise ValueError(
        f"catalogue tail: bind wants {2 * len(groups)} arrays (states, mask per group), got {len(parts)}"
      )
    bound.append(tuple(parts))
    try:
      yield
    finally:
      bound.pop()

  def catalogue(tail_params):
    if bound:  # inside the trace of a step that takes the inputs as arguments
      return program(tail_params, bound[-1])
    # jax.core.Tracer: a public export of jax.core in jax 0.10 (not among its deprecated names)
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(tail_params)):
      return catalogue_features(tail_fn, tail_params, states, mask, groups)
    return jitted(tail_params, device_parts())

  catalogue.adapts_memo = {}  # `_adapts_tail_once`'s answers for the hooks bound to this catalogue
  catalogue.step_inputs = lambda: (device_parts(), bind)
  return catalogue


# ---------------------------------------------------------------------------------------------- tree plumbing


def tail_paths(tree: Any, prefix: tuple = (), arrays: bool = True) -> list[tuple]:
  """Key paths of the dict entries named `TAIL`: those holding arrays (`arrays=True`), or those holding only
  None (`arrays=False`: a Meta-SGD rate tree mirrors the params with None where a leaf has no rate)."""
  out = []
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      if k == TAIL and bool(jax.tree.leaves(v)) == arrays:
        out.append((*prefix, k))
      elif k != TAIL:
        out += tail_paths(v, (*prefix, k), arrays)
  return out


def get_path(tree: Mapping, path: tuple) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree: Mapping, path: tuple, value: Any) -> dict:
  """A copy of nested dict `tree` with `path` set to `value` (the other entries shared, not copied)."""
  if not path:
    return value
  return {**tree, path[0]: set_path(tree[path[0]], path[1:], value)}


def _abstract(tree: Any, drop_lead: bool = False) -> Any:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:] if drop_lead else a.shape, a.dtype), tree)


def adapts_tail(learner, meta_params: Any, support: dict, key: jax.Array) -> bool:
  """True unless `learner.adapt` returns every tail leaf exactly as it received it (traced, not run).

  Args:
    learner: the learner (its `adapt`).
    meta_params: its meta-parameters (arrays or tracers; only shapes are read).
    support: ONE task's support x[S] (arrays or ShapeDtypeStructs; only shapes are read).
    key: a task key.
  """
  args = (_abstract(meta_params), support, jax.ShapeDtypeStruct(key.shape, key.dtype))
  closed, out_shape = jax.make_jaxpr(learner.adapt, return_shape=True)(*args)
  in_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
  has_tail = lambda path: any(getattr(k, "key", None) == TAIL for k in path)  # noqa: E731
  tail_in = {id(v) for p, v in zip(in_paths, closed.jaxpr.invars) if has_tail(p)}
  out_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
  for p, v in zip(out_paths, closed.jaxpr.outvars):
    if has_tail(p) and not (isinstance(v, jex_core.Var) and id(v) in tail_in):
      return True
  return False


def _shared_path(learner, meta_params: Any, support: dict, key: jax.Array, memo: dict | None = None) -> tuple | None:
  """The tail's path in `meta_params` when the fast path applies (one tail, not adapted), else None."""
  paths = tail_paths(meta_params)
  if len(paths) != 1 or TABLE in get_path(meta_params, paths[0]):
    return None
  one_task = _abstract(support, drop_lead=True)
  return None if _adapts_tail_once(learner, meta_params, one_task, key, memo) else paths[0]


def _adapts_tail_once(learner, meta_params: Any, support: Any, key: jax.Array, memo: dict | None) -> bool:
  """`adapts_tail`, traced once per learner and input signature (tracing `learner.adapt` is its whole cost): the
  meta-step, evaluation and serving each ask. `memo` lives with the model's catalogue (`catalogue_fn`), so it is
  freed with the model; None: ask every time."""
  leaves, tree = jax.tree.flatten((meta_params, support))
  sig = (learner, tree, tuple((a.shape, a.dtype) for a in leaves), key.shape, key.dtype)
  try:
    hash(sig)
  except TypeError:  # a learner holding an unhashable field: ask every time
    memo = None
  if memo is None:
    return adapts_tail(learner, meta_params, support, key)
  if sig not in memo:
    memo[sig] = adapts_tail(learner, meta_params, support, key)
  return memo[sig]


def _with_table(tree: Any, path: tuple, feats: Any) -> Any:
  """`tree` with the tail at `path` replaced by {TABLE: feats} and every all-None tail mirror by {TABLE: None}."""
  for p in tail_paths(tree, arrays=False):
    tree = set_path(tree, p, {TABLE: None})
  return set_path(tree, path, {TABLE: feats})


def _restore(grads: Any, meta_params: Any, path: tuple, tail_grads: Any) -> Any:
  """Inverse of `_with_table` on a gradient tree: the tail's gradient at `path`, the None mirrors as before."""
  for p in tail_paths(meta_params, arrays=False):
    grads = set_path(grads, p, get_path(meta_params, p))
  return set_path(grads, path, tail_grads)


def share_params(learner, catalogue: Callable, meta_params: Any, support: dict, key: jax.Array) -> Any:
  """`meta_params` with the tail replaced by its catalogue table when the learner does not adapt it.

  Args:
    learner: the learner whose model carries the tail.
    catalogue: `tail_params -> f32 [I, H]` (`catalogue_features` bound to the table).
    meta_params: the learner's meta-parameters.
    support: the batch's supports x[T, S] (shapes only).
    key: a key of the tasks' key shape (shapes only).
  Returns:
    meta_params with params[TAIL] = {TABLE: catalogue(tail)}, or meta_params itself (per-slot path).
  """
  path = _shared_path(learner, meta_params, support, key, getattr(catalogue, "adapts_memo", None))
  if path is None:
    return meta_params
  return _with_table(meta_params, path, catalogue(get_path(meta_params, path)))


def share_grad(learner, catalogue: Callable, grad_fn: Callable) -> Callable:
  """The meta-step's `(meta_params, batch, key) -> (grads, metrics)` with the tail run once per call.

  Where the learner does not adapt the tail: grads of the learner w.r.t. the table, pulled back through
  `catalogue` by one `jax.vjp` into the tail's gradient; the other leaves' grads and the metrics are
  `grad_fn`'s on the table-reading model. Otherwise `grad_fn` itself.
  """

  def wrapped(meta_params, batch, key):
    path = _shared_path(learner, meta_params, batch["support"], key, getattr(catalogue, "adapts_memo", None))
    if path is None:
      return grad_fn(meta_params, batch, key)
    feats, pull = jax.vjp(catalogue, get_path(meta_params, path))
    grads, metrics = grad_fn(_with_table(meta_params, path, feats), batch, key)
    (tail_grads,) = pull(get_path(grads, path)[TABLE])
    return _restore(grads, meta_params, path, tail_grads), metrics

  return wrapped
