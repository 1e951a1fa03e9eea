"""A host batch pytree packed into one array per dtype, so it reaches the device in a few transfers.

    packed = pack(per_seed_batches)                # host, numpy: N trees of [T, ...] leaves -> Packed (3 buffers)
    placed = sharding.shard_batch(packed, mesh, 1)  # 3 transfers instead of one per leaf
    batch = unpack(placed)                         # inside the jitted step: {..., leaves [N, T, ...]}

Placing a pytree on the device costs per leaf, not per byte, at the sizes of a meta-step's batch: on the
shared 2-core CPU box at load 14, a seed-stacked MeLU batch of 32 tasks (22 leaves) took 1.4 ms at best to
`device_put`, its 4 length groups as separate arrays (92 leaves, fewer bytes) 11.6 ms, the same groups packed
here (3 buffers) 0.6 ms (experiments/profile_length_groups.py, experiments/README.md).

`pack` writes every leaf, flattened past its task axis, into its columns of one [N, T, F] buffer per dtype;
the leaf's place (buffer, column range, trailing shape) is static data of the `Packed` pytree node (its
treedef), so `jax.jit` sees only the buffers and recompiles only when the layout changes. The seed and task
axes stay in front, so a sharding of the task axis (axis 1) splits every buffer the way it split every leaf,
and unpacking is local to each device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence

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
  """A pytree node holding the buffers (its children: [N, T, F_k] per dtype k) and the static `Layout`."""

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


def pack(trees: Sequence, rows: np.ndarray | None = None, meta: Hashable = None) -> Packed:
  """Stacks per-seed pytrees of host arrays into one [N, T, F] buffer per dtype, gathering rows on the way.

  Each leaf is written once into its column range of its dtype's buffer (no intermediate stacked copy): the
  batch builder's cost stays about that of `step.stack_seed_batches`.

  Args:
    trees: N pytrees with the same structure, every leaf [T, ...] (same T everywhere; e.g. one seed's batch).
    rows: int [N, T]: position t of seed n holds row rows[n, t] of seed n's leaves (None: rows in order).
    meta: hashable static data carried in the layout (`Packed.layout.meta`).
  Returns:
    Packed with buffers [N, T, F_k], F_k the summed trailing sizes of the dtype-k leaves (in tree order). A
    leaf whose trailing shape differs between seeds is zero-padded at the end of each trailing axis to the
    largest among them (as `step.stack_seed_batches` pads supports to the longest seed's).
  Raises:
    ValueError: without trees or leaves, for trees of different structures, leaves without a common T or rank
      or dtype, or `rows` not [N, T].
  """
  if not trees:
    raise ValueError("pack: no trees given")
  flat = [jax.tree_util.tree_flatten_with_path(t) for t in trees]
  treedef = flat[0][1]
  if any(f[1] != treedef for f in flat[1:]):
    raise ValueError(f"pack: every tree needs the first one's structure {treedef}")
  paths = [jax.tree_util.keystr(p) for p, _ in flat[0][0]]
  leaves = [[np.asarray(x) for _, x in f[0]] for f in flat]  # [N][leaf]
  if not paths:
    raise ValueError("pack: the trees have no leaves")
  n_rows = leaves[0][0].shape[0] if leaves[0][0].ndim else None
  trailing, dtypes_of = [], []
  for i, path in enumerate(paths):
    column = [seed[i] for seed in leaves]
    if any(x.ndim < 1 or x.shape[0] != n_rows or x.ndim != column[0].ndim for x in column):
      raise ValueError(f"pack: leaf {path} has shapes {[x.shape for x in column]}; each needs [{n_rows}, ...]")
    if len({x.dtype for x in column}) != 1:
      raise ValueError(f"pack: leaf {path} has dtypes {sorted({str(x.dtype) for x in column})} across the trees")
    trailing.append(tuple(int(m) for m in np.max([x.shape[1:] for x in column], axis=0)) if column[0].ndim > 1 else ())
    dtypes_of.append(str(column[0].dtype))
  n_seeds = len(trees)
  if rows is None:
    rows = np.broadcast_to(np.arange(n_rows), (n_seeds, n_rows))
  rows = np.asarray(rows)
  if rows.shape != (n_seeds, n_rows):
    raise ValueError(f"pack: rows has shape {rows.shape}, want (N, T) = {(n_seeds, n_rows)}")
  dtypes = tuple(dict.fromkeys(dtypes_of))
  fields, width = [], dict.fromkeys(dtypes, 0)
  for d, shape in zip(dtypes_of, trailing):
    size = math.prod(shape)
    fields.append((dtypes.index(d), width[d], width[d] + size, shape))
    width[d] += size
  buffers = tuple(np.zeros((n_seeds, n_rows, width[d]), d) for d in dtypes)
  for i, (b, start, stop, shape) in enumerate(fields):
    for n in range(n_seeds):
      x = leaves[n][i]
      if x.shape[1:] != shape:
        x = np.pad(x, [(0, 0)] + [(0, want - have) for want, have in zip(shape, x.shape[1:])])
      buffers[b][n, :, start:stop] = x.reshape(n_rows, stop - start)[rows[n]]
  return Packed(buffers, Layout(treedef, dtypes, tuple(fields), meta))


def unpack(packed: Packed):
  """The seed-stacked tree of what `pack` was given (numpy or jax buffers; inside jit, static slices + reshapes).

  Returns:
    the trees' structure, each leaf [N, T, ...] with its dtype and (padded) trailing shape.
  """
  layout = packed.layout
  lead = packed.buffers[0].shape[:-1]
  leaves = [packed.buffers[b][..., start:stop].reshape(lead + trailing) for b, start, stop, trailing in layout.fields]
  return jax.tree.unflatten(layout.treedef, leaves)
