"""`transfer_meta.packing`: per-seed host trees packed into one buffer per dtype, and back, bit for bit."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from transfer_meta import packing

T = 5


def _tree(rng: np.random.Generator, width: int) -> dict:
  return {
    "x": {
      "feat": rng.normal(size=(T, width, 3)).astype(np.float32),
      "ids": rng.integers(0, 100, (T, width)).astype(np.int32),
      "mask": rng.random((T, width)) < 0.5,
      "empty": np.zeros((T, width, 0), np.float32),
    },
    "flag": rng.random(T) < 0.5,
    "id": rng.integers(0, 9, T).astype(np.int32),
  }


def test_pack_unpack_stacks_pads_and_gathers_rows_exactly():
  rng = np.random.default_rng(0)
  trees = [_tree(rng, 4), _tree(rng, 2)]  # seed 1 is narrower: zero-padded to width 4
  rows = np.stack([rng.permutation(T), rng.permutation(T)])
  packed = packing.pack(trees, rows, meta=("anything", 3))
  assert len(packed.buffers) == 3  # float32, int32, bool: one buffer (one transfer) per dtype
  assert [b.shape[:2] for b in packed.buffers] == [(2, T)] * 3
  assert packed.layout.meta == ("anything", 3)
  got = packing.unpack(packed)
  for path, leaf in jax.tree_util.tree_leaves_with_path(got):
    pieces = []
    for n, tree in enumerate(trees):  # independent reference: pad each seed's leaf, then take its rows
      x = tree
      for k in path:
        x = x[k.key]
      pad = [(0, 0)] + [(0, want - have) for want, have in zip(leaf.shape[2:], x.shape[1:])]
      pieces.append(np.pad(x, pad)[rows[n]])
    want = np.stack(pieces)
    assert leaf.dtype == want.dtype, path
    np.testing.assert_array_equal(leaf, want)
  assert got["x"]["feat"].shape == (2, T, 4, 3) and not np.any(got["x"]["feat"][1, :, 2:])
  assert got["x"]["empty"].shape == (2, T, 4, 0)
  in_order = packing.unpack(packing.pack(trees[:1]))  # rows=None: positions in order
  np.testing.assert_array_equal(in_order["x"]["ids"][0], trees[0]["x"]["ids"])


def test_layout_is_static_under_jit():
  """Values change without a retrace; a different layout (shape or meta) retraces."""
  rng = np.random.default_rng(1)
  fn = chex.assert_max_traces(lambda p: packing.unpack(p)["x"]["feat"].sum() + p.layout.meta, n=2)
  jitted = jax.jit(fn)
  a, b = packing.pack([_tree(rng, 4)], meta=1), packing.pack([_tree(rng, 4)], meta=1)
  want = lambda p: float(np.sum(packing.unpack(p)["x"]["feat"])) + p.layout.meta  # noqa: E731
  for p in (a, b):
    np.testing.assert_allclose(float(jitted(p)), want(p), rtol=1e-5)
  c = packing.pack([_tree(rng, 4)], meta=2)  # a new meta: the second (last allowed) trace
  np.testing.assert_allclose(float(jitted(c)), want(c), rtol=1e-5)
  with pytest.raises(AssertionError, match="traced > 2"):
    jitted(packing.pack([_tree(rng, 6)], meta=1))  # a new width: a third layout
  chex.clear_trace_counter()


def test_pack_refuses_bad_input():
  rng = np.random.default_rng(2)
  tree = _tree(rng, 3)
  with pytest.raises(ValueError, match="no trees"):
    packing.pack([])
  with pytest.raises(ValueError, match="structure"):
    packing.pack([tree, {"flag": tree["flag"]}])
  with pytest.raises(ValueError, match=r"leaf \['id'\] has shapes"):
    packing.pack([{**tree, "id": np.zeros(T + 1, np.int32)}])
  with pytest.raises(ValueError, match="dtypes"):
    packing.pack([tree, {**tree, "id": tree["id"].astype(np.int64)}])
  with pytest.raises(ValueError, match=r"rows has shape \(1, 4\)"):
    packing.pack([tree], np.zeros((1, 4), int))
  with pytest.raises(ValueError, match="no leaves"):
    packing.pack([{}])
