"""Jitted programs built once per value of what they close over, and reused by later runs in the process.

    jstep = programs.cached("stage", (grad_fn, tx, mesh), lambda: step.jit_meta_step(step.step_fn(grad_fn, tx), mesh))
    learner = programs.reused(get_learner)(name, model, kwargs)   # a builder: the same object for equal arguments

`jax.jit` caches its traces by the identity of the function, so a run that rebuilds its closures (every
`stages.run_strategy` call builds its strategy's objectives, optimiser, initialiser and eval step afresh) traces,
lowers and loads every program again, even when the new closures are the same code over the same values. `cached`
keys a built object by `fingerprint` of its ingredients instead: equal fingerprints mean the same code objects
(compared by identity) over equal values (closure cells, defaults, NamedTuple / dataclass fields, containers and
array contents compared by value), so the reused jitted function traces to the same jaxpr, and so to the same
program, as a fresh build would: results are bit for bit those of a fresh build. Anything it cannot compare by
value (an object of another class, a jitted function, a bound flax module) is compared by identity and kept alive
with the entry, so a different object never matches. Like `jax.jit` itself, it assumes module globals and the
objects a function reads are not mutated between the calls.

Measured (tests/test_cross_domain_methods.py's poisoned-data check: a clean and a poisoned run of each strategy,
built alike): the poisoned run traces, lowers and loads no program; the four checks 29.1 -> 14.8 CPU-s (warm
compilation cache, load ~10).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import types
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

MAX_PROGRAMS = 64  # built objects kept (least recently used evicted): each holds its traces and executables
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()  # key -> (built object, objects kept alive)
STATS = {"hits": 0, "misses": 0}

_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def fingerprint(obj: Any) -> tuple[Hashable, list]:
  """(hashable key, objects the key names by identity): equal keys mean interchangeable objects (see module).

  Functions: their code object and globals dict (by identity), defaults, keyword defaults, attributes and
  closure cells (by value); partials and bound methods: their parts; tuples (NamedTuples with their class),
  lists, dicts (in order), frozen or not dataclasses (flax modules when unbound) and numpy / jax arrays
  (dtype, shape, sha256 of the bytes) by value; meshes and shardings by their own equality; everything else
  (flax modules bound to variables among them: their state is not their fields) by identity.
  """
  keep: list = []
  active: dict[int, int] = {}  # id -> depth of the objects being fingerprinted (reference cycles)
  arrays: dict[int, tuple] = {}  # id -> (array, its key): an array reached again in this call is hashed once

  def ident(x) -> tuple:
    keep.append(x)
    return ("id", id(x))

  def fp(x) -> Hashable:
    t = type(x)
    if t in _SCALARS:
      return (t.__name__, float.hex(x) if t is float else x)
    if id(x) in active:
      return ("cycle", active[id(x)])
    active[id(x)] = len(active)
    try:
      return visit(x, t)
    finally:
      del active[id(x)]

  def visit(x, t) -> Hashable:
    if isinstance(x, np.ndarray | np.generic) or _is_jax_array(x):
      if id(x) in arrays:  # kept in the entry, so its id cannot be another object's during this call
        return arrays[id(x)][1]
      a = np.asarray(x)
      if a.dtype.hasobject:
        return ident(x)
      key = ("array", t.__name__, a.dtype.str, a.shape, array_digest(a))
      arrays[id(x)] = (x, key)
      return key
    if t is types.FunctionType:
      cells = tuple(_cell(c, fp) for c in (x.__closure__ or ()))
      return (
        "function",
        ident(x.__code__),
        ident(x.__globals__),
        fp(x.__defaults__),
        fp(x.__kwdefaults__),
        fp(x.__dict__),
        cells,
      )
    if t is functools.partial:
      return ("partial", fp(x.func), fp(x.args), fp(x.keywords))
    if t is types.MethodType:
      return ("method", fp(x.__func__), fp(x.__self__))
    if isinstance(x, tuple):
      cls = ident(t) if t is not tuple else "tuple"
      return ("tuple", cls, tuple(fp(v) for v in x))
    if t is list:
      return ("list", tuple(fp(v) for v in x))
    if t is dict:
      return ("dict", tuple((fp(k), fp(v)) for k, v in x.items()))
    if _is_mesh_or_sharding(x):  # hashable, equal by devices and axes (each experiment builds its own)
      return ("sharding", x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type) and getattr(x, "scope", None) is None:
      return ("dataclass", ident(t), tuple((f.name, fp(getattr(x, f.name))) for f in dataclasses.fields(x)))
    return ident(x)

  return fp(obj), keep


def array_digest(a: np.ndarray) -> str:
  """SHA-256 (hex) of an array's bytes in C order: `hashlib.sha256(a.tobytes())`, read through a uint8 view of the
  contiguous array instead of a copy (any dtype, bfloat16 and empty arrays included)."""
  return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def _cell(cell, fp) -> Hashable:
  try:
    contents = cell.cell_contents
  except ValueError:  # an empty cell (a name assigned after the inner function was made)
    return ("empty",)
  return fp(contents)


def _is_jax_array(x) -> bool:
  import jax  # noqa: PLC0415 (imported by the library anyway; kept out of this module's import)

  return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _is_mesh_or_sharding(x) -> bool:
  import jax  # noqa: PLC0415

  return isinstance(x, jax.sharding.Mesh | jax.sharding.Sharding)


def cached(kind: str, parts: Any, build: Callable[[], T]) -> T:
  """`build()` once per (kind, `fingerprint(parts)`) in this process, the same object on later calls.

  Args:
    kind: what is built (keeps different builders' entries apart).
    parts: everything `build` reads (functions, optimisers, learners, example batches, the mesh).
    build: makes the object (a jitted function, or a tuple of them) from `parts`.
  """
  key, keep = fingerprint(parts)
  return _lookup(_PROGRAMS, STATS, (kind, key), keep, build)


def _lookup(entries: collections.OrderedDict, stats, key: Hashable, keep: list, build: Callable[[], T]) -> T:
  """`entries[key]` (counted a hit), else `build()` stored under `key` beside `keep` (what the key names by
  identity stays alive with the entry; counted a miss); the least recently used beyond `MAX_PROGRAMS` evicted."""
  if key in entries:
    entries.move_to_end(key)
    stats["hits"] += 1
    return entries[key][0]
  stats["misses"] += 1
  built = build()
  entries[key] = (built, keep)
  while len(entries) > MAX_PROGRAMS:
    entries.popitem(last=False)
  return built


def reused(builder: Callable[..., T]) -> Callable[..., T]:
  """`builder` with its results kept per `fingerprint` of its arguments: a later call with equal arguments returns
  the object built before (so the same jitted functions, already traced and lowered).

  The key is the builder's own arguments, never hand-picked config fields, so it is complete as long as the builder
  is a pure function of them (the registries' factories, optax's and this package's builders are). The smoke
  config's second `train_and_evaluate` in a process: 5.0 -> ~1.5 CPU-s (`transfer_meta.train`). The last
  `MAX_PROGRAMS` entries are kept per builder; `.stats` counts {"hits", "misses"}, `.entries` holds them.
  """
  entries: collections.OrderedDict = collections.OrderedDict()
  stats: collections.Counter = collections.Counter()

  @functools.wraps(builder)
  def call(*args, **kwargs):
    key, keep = fingerprint((args, kwargs))
    return _lookup(entries, stats, key, keep, lambda: builder(*args, **kwargs))

  call.stats, call.entries = stats, entries
  _REUSED.append((entries, stats))
  return call


_REUSED: list = []  # every `reused` builder's (entries, stats), for `clear`


def clear() -> None:
  """Forgets every built object, `cached`'s and `reused`'s (the next call of each key builds afresh), and zeroes
  the `reused` builders' counts."""
  _PROGRAMS.clear()
  for entries, stats in _REUSED:
    entries.clear()
    stats.clear()
