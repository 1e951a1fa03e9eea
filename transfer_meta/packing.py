"""A host batch pytree packed into one array per dtype, so it reaches the device in a few transfers.

    packed = pack(batch, lead=2)                  # host, numpy: {.., leaves [N, T, ...]} -> Packed (3 buffers)
    placed = sharding.shard_batch(packed, mesh, 1)  # 3 transfers instead of one per leaf
    batch = unpack(placed)                         # inside the jitted step: static slices + reshapes

Placing a pytree on the device costs per leaf, not per byte, at the sizes of a meta-step's batch: on the
shared 2-core CPU box a seed-stacked MeLU batch of 32 tasks (22 leaves, 370 kB) took ~0.5 ms to `device_put`,
its 4 length groups (92 leaves, 195 kB) 1.8-3.7 ms, and one buffer of the same bytes ~0.08 ms
(experiments/profile_length_groups.py). `pack` concatenates every leaf, flattened past its `lead` axes, into
one [*lead, F] buffer per dtype; the leaf's place (buffer, column range, trailing shape) is static data of the
`Packed` pytree node (its treedef), so `jax.jit` sees only the buffers and recompiles only when the layout
changes. The lead axes stay in front, so a sharding of the task axis (axis 1 of a seed-stacked batch) splits
every buffer the way it split every leaf, and unpacking is local to each device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each leaf of a packed tree lives (static: part of the `Packed` node's treedef, hashed by jit)."""

  treedef: jax.tree_util.PyTreeDef  # the packed tree's structure
  dtypes: tuple[str, ...]  # one buffer per dtype, in this order
  fields: tuple[tuple[int, int, int, tuple[int, ...]], ...]  # per leaf: (buffer, first column, stop, trailing shape)
  meta: Hashable = None  # caller's static data (e.g. length groups' sizes and widths)


@jax.tree_util.register_pytree_node_class
class Packed:
  """A pytree node holding the buffers (its children: [*lead, F_k] per dtype k) and the static `Layout`."""

  def __init__(self, buffers: tuple, layout: Layout):
    self.buffers, self.layout = tuple(buffers), layout

  def tree_flatten(self):
    return self.buffers, self.layout

  @classmethod
  def tree_unflatten(cls, layout: Layout, buffers) -> Packed:
    return cls(tuple(buffers), layout)

  def __repr__(self) -> str:
    shapes = [getattr(b, "shape", None) for b in self.buffers]
    return f"Packed({len(self.layout.fields)} leaves in {dict(zip(self.layout.dtypes, shapes))})"


def pack(tree, lead: int = 2, meta: Hashable = None) -> Packed:
  """Packs a pytree of host arrays sharing their first `lead` axes into one buffer per dtype.

  Args:
    tree: pytree of numpy arrays, every leaf [*L, ...] with the same L (e.g. [N, T] of a seed-stacked batch).
    lead: how many leading axes are shared (kept in front of every buffer).
    meta: hashable static data carried in the layout (`Packed.layout.meta`).
  Returns:
    Packed with buffers [*L, F_k], F_k the summed trailing sizes of the dtype-k leaves (in tree order).
  Raises:
    ValueError: if the tree has no leaves, or a leaf's leading axes differ from the first leaf's.
  """
  leaves, treedef = jax.tree.flatten(tree)
  if not leaves:
    raise ValueError("pack: the tree has no leaves")
  leaves = [np.asarray(x) for x in leaves]
  shape = leaves[0].shape[:lead]
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  for path, x in zip(paths, leaves):
    if x.ndim < lead or x.shape[:lead] != shape:
      raise ValueError(f"pack: leaf {path} has shape {x.shape}; every leaf needs the leading axes {shape}")
  dtypes = tuple(dict.fromkeys(str(x.dtype) for x in leaves))
  parts, fields, width = {d: [] for d in dtypes}, [], dict.fromkeys(dtypes, 0)
  for x in leaves:
    d, size = str(x.dtype), math.prod(x.shape[lead:])
    fields.append((dtypes.index(d), width[d], width[d] + size, tuple(x.shape[lead:])))
    parts[d].append(x.reshape(shape + (size,)))
    width[d] += size
  buffers = tuple(np.concatenate(parts[d], axis=-1) for d in dtypes)
  return Packed(buffers, Layout(treedef, dtypes, tuple(fields), meta))


def unpack(packed: Packed):
  """The tree `pack` was given, from its buffers (numpy or jax arrays; inside jit, static slices + reshapes).

  Returns:
    the original pytree, each leaf [*L, ...] with its original dtype and trailing shape.
  """
  layout = packed.layout
  lead = packed.buffers[0].shape[:-1]
  leaves = [packed.buffers[b][..., start:stop].reshape(lead + trailing) for b, start, stop, trailing in layout.fields]
  return jax.tree.unflatten(layout.treedef, leaves)
