"""Process-level reuse of what a run builds: the model, learner, optimiser and their jitted programs.

    learner = reused(get_learner)(name, model, kwargs_dict)   # the same object for equal arguments
    step = reused(jit_meta_step)(raw_step, mesh)              # so the same jitted function, already traced

Every `train_and_evaluate` used to build new closures (model, learner, optimiser, init, meta-step, eval step), so a
second run of the same config in one process (a sweep, a rerun into a finished workdir, a test file's runs) traced
and lowered every program again and loaded it again from the compilation cache: jax caches traces per function
object. A builder wrapped by `reused` returns the object it built before for equal arguments; its jitted functions
then keep jax's own per-object caches (traces, lowerings, executables), which key on the input shapes and jax's
configuration. The smoke config's second `train_and_evaluate` in a process: 5.0 -> ~1.5 CPU-s (train.py).

The key is made of the builder's own arguments, never of hand-picked config fields, so it is complete as long as
the builder is a pure function of its arguments (true of the registries' factories, optax's and this package's
builders). `freeze` accepts only values whose equality means "the same input": plain data by value AND type (1,
1.0 and True are different keys), numpy arrays by dtype, shape and bytes, frozen dataclasses by their fields, and
functions (closures included) by identity, as jax itself keys traces. Any other argument (an `Interactions`, an
object with mutable state) makes that call build afresh, uncached. Entries hold their arguments, so an identity
key can never be reused by another object.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import types
from collections.abc import Callable

import numpy as np
from jax.sharding import Mesh

MAXSIZE = 32  # entries per builder (least recently used dropped): a run needs a few per learner
_CACHES: list = []


class Unfreezable(TypeError):
  """An argument `freeze` does not accept (the call is then not cached)."""


def freeze(value):
  """A hashable key equal for two values exactly when a pure builder must return the same thing for them.

  Raises:
    Unfreezable: for a value of a kind not listed in the module docstring.
  """
  if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
    return (type(value), value)  # typed: 1 == 1.0 == True, but a builder may treat them differently
  if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
    return (types.FunctionType, value)  # by identity (jax keys traces the same way)
  if isinstance(value, Mesh):
    return (Mesh, value)  # immutable, compared by devices and axis names
  if isinstance(value, np.ndarray):
    digest = hashlib.sha256(np.ascontiguousarray(value).view(np.uint8)).hexdigest()
    return (np.ndarray, value.dtype.str, value.shape, digest)
  if isinstance(value, np.generic):
    return (type(value), value.item())
  if isinstance(value, dict):
    return (type(value), tuple(sorted(((freeze(k), freeze(v)) for k, v in value.items()), key=repr)))
  if isinstance(value, (tuple, list)):  # NamedTuples (Learner, Model, optax transforms) by type and fields
    return (type(value), tuple(freeze(v) for v in value))
  if dataclasses.is_dataclass(value) and not isinstance(value, type) and value.__dataclass_params__.frozen:
    return (type(value), tuple(freeze(getattr(value, f.name)) for f in dataclasses.fields(value)))
  raise Unfreezable(f"{type(value).__name__} is not a reuse key")


def reused(builder: Callable) -> Callable:
  """`builder` with its results kept per `freeze`-equal arguments (the last `MAXSIZE`); uncached for an argument
  `freeze` refuses. `.stats` counts {"hits", "misses", "uncached"}."""
  entries: collections.OrderedDict = collections.OrderedDict()
  stats = collections.Counter()

  @functools.wraps(builder)
  def call(*args, **kwargs):
    try:
      key = freeze((args, kwargs))
    except Unfreezable:
      stats["uncached"] += 1
      return builder(*args, **kwargs)
    if key in entries:
      stats["hits"] += 1
      entries.move_to_end(key)
      return entries[key][1]
    stats["misses"] += 1
    out = builder(*args, **kwargs)
    entries[key] = ((args, kwargs), out)  # the arguments too: identity keys stay unique while the entry lives
    while len(entries) > MAXSIZE:
      entries.popitem(last=False)
    return out

  call.stats = stats
  call.entries = entries
  _CACHES.append((entries, stats))
  return call


def clear() -> None:
  """Drops every reused object and zeroes the counts (the next run builds and traces afresh)."""
  for entries, stats in _CACHES:
    entries.clear()
    stats.clear()
