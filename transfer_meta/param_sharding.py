"""Rule-based sharding of parameters: large embedding tables split over a mesh axis, the rest replicated.

Rules are config data, a sequence of (regex, spec) pairs; the first regex that matches (re.search) a
parameter's '/'-joined path (as `models.base.path_str`, e.g. 'params/item_id/embedding') gives its spec,
a tuple with one entry per array dimension: None (not split), a mesh axis name, or a tuple of axis names
(`PartitionSpec` entries). A parameter that no rule matches is replicated.

    rules = ((r"item_id/embedding$", ("tasks", None)),)   # rows of the item table over the 'tasks' axis
    shardings = param_shardings(meta_params, mesh, rules)  # pytree of NamedSharding, like meta_params
    meta_params = jax.device_put(meta_params, shardings)

`leading_axes` prepends unsplit dimensions for stacked trees (the trainer's seed axis [N, ...]). A rule that
names an unknown mesh axis, has more entries than the array has dimensions, or splits a dimension that the
named axes' total size does not divide raises ValueError naming the rule, the path and the shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from transfer_meta.models.base import path_str

SpecEntry = str | tuple[str, ...] | None
Rule = tuple[str, Sequence[SpecEntry]]


def _compile(rules: Sequence[Rule]) -> list[tuple[re.Pattern, tuple]]:
  out = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding rule {i} must be (regex, spec tuple), got {rule!r}")
    try:
      pattern = re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"sharding rule {i}: bad regex {rule[0]!r}: {e}") from None
    spec = rule[1]
    if spec is None or isinstance(spec, str) or not isinstance(spec, (tuple, list)):
      raise ValueError(
        f"sharding rule {i} ({rule[0]!r}): spec must be a tuple of per-dimension entries "
        f"(None, an axis name or a tuple of axis names), got {spec!r}"
      )
    out.append((pattern, tuple(tuple(e) if isinstance(e, list) else e for e in spec)))
  return out


def _axes(entry: SpecEntry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def spec_for(
  path: str, shape: tuple[int, ...], mesh: Mesh | AbstractMesh, rules: Sequence[Rule], leading_axes: int = 0
) -> P:
  """The PartitionSpec of one parameter.

  Args:
    path: its '/'-joined path.
    shape: its full shape (including `leading_axes` stacked dimensions).
    mesh: the device mesh (only its axis names and sizes are read).
    rules: (regex, spec) pairs; the first match wins.
    leading_axes: stacked leading dimensions the rules do not describe (left unsplit).
  Returns:
    `PartitionSpec` (empty: replicated).
  """
  return _spec(path, tuple(shape), dict(mesh.shape), _compile(rules), leading_axes)


def _spec(path: str, shape: tuple[int, ...], axis_sizes: dict, rules: list, leading_axes: int) -> P:
  for i, (pattern, spec) in enumerate(rules):
    if not pattern.search(path):
      continue
    inner = shape[leading_axes:]
    if len(spec) > len(inner):
      raise ValueError(
        f"sharding rule {i} ({pattern.pattern!r}, {spec}) has {len(spec)} entries but parameter "
        f"{path!r} has {len(inner)} dimensions (shape {inner})"
      )
    for dim, entry in enumerate(spec):
      axes = _axes(entry)
      unknown = [a for a in axes if a not in axis_sizes]
      if unknown:
        raise ValueError(
          f"sharding rule {i} ({pattern.pattern!r}) names mesh axes {unknown}, not in the mesh axes {list(axis_sizes)}"
        )
      size = int(np.prod([axis_sizes[a] for a in axes])) if axes else 1
      if inner[dim] % size:
        raise ValueError(
          f"sharding rule {i} ({pattern.pattern!r}): dimension {dim} of parameter {path!r} (shape "
          f"{inner}) has size {inner[dim]}, not divisible by mesh axes {axes} of total size {size}"
        )
    return P(*([None] * leading_axes), *spec)
  return P()


def param_shardings(params, mesh: Mesh | AbstractMesh, rules: Sequence[Rule] = (), leading_axes: int = 0):
  """A pytree of `NamedSharding` like `params` (arrays or `jax.ShapeDtypeStruct`s), from `rules`.

  Args:
    params: parameter pytree (concrete or abstract leaves with `.shape`).
    mesh: the device mesh (an `AbstractMesh` gives shardings for shape checks only).
    rules: (regex, spec tuple) pairs, first match wins; unmatched parameters are replicated.
    leading_axes: stacked leading dimensions (e.g. 1 for the trainer's seed axis), never split.
  Returns:
    Pytree of `NamedSharding` with the structure of `params`.
  """
  compiled, sizes = _compile(rules), dict(mesh.shape)  # malformed rules fail even when no parameter matches
  return jax.tree_util.tree_map_with_path(
    lambda p, x: NamedSharding(mesh, _spec(path_str(p), tuple(x.shape), sizes, compiled, leading_axes)), params
  )
