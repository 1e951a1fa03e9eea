"""Shared Flax modules: embed one side's (user or item) side features from an examples dict.

Every backbone reads features the same way, from the keys of `transfer_meta.data.examples`:
`{side}_cat [..., F]` (one table per categorical feature), `{side}_multi [..., V]` (multi-hot sets,
embedded as the normalised sum `multi @ table / max(count, 1)`, as MeLU embeds genres) and
`{side}_dense [..., D]` (a linear projection). Any of the widths may be 0.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec

SIDES = ("user", "item")
Initializer = Callable[..., jax.Array]


def side_sizes(spec: FeatureSpec, side: str) -> tuple[tuple[int, ...], int, int]:
  """(categorical vocab sizes, multi-hot width, dense width) of `side` ('user' or 'item')."""
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")
  return (getattr(spec, f"{side}_cat_sizes"), getattr(spec, f"{side}_multi_dim"), getattr(spec, f"{side}_dense_dim"))


def n_feature_parts(spec: FeatureSpec, side: str) -> int:
  """How many embeddings `SideFeatures` produces for `side`: one per categorical feature, one for
  the multi-hot block, one for the dense block (0 when the side has no features)."""
  cat_sizes, multi_dim, dense_dim = side_sizes(spec, side)
  return len(cat_sizes) + int(multi_dim > 0) + int(dense_dim > 0)


def resolve_ids(
  use_ids: bool | None, use_user_ids: bool | None, use_item_ids: bool | None, default: bool
) -> tuple[bool, bool]:
  """(user ids on, item ids on) from the shared switch `use_ids` and the per-side ones.

  A per-side switch left None takes `use_ids`, or `default` when that is None too; a per-side switch that
  contradicts an explicit `use_ids` raises ValueError (say one or the other, not both).
  """
  for side, flag in (("user", use_user_ids), ("item", use_item_ids)):
    if use_ids is not None and flag is not None and bool(flag) != bool(use_ids):
      raise ValueError(
        f"use_ids={use_ids} contradicts use_{side}_ids={flag}: set the per-side switches "
        "(use_user_ids, use_item_ids) and leave use_ids unset"
      )
  shared = default if use_ids is None else bool(use_ids)
  pick = lambda flag: shared if flag is None else bool(flag)  # noqa: E731
  return pick(use_user_ids), pick(use_item_ids)


def require_inputs(spec: FeatureSpec, sides: tuple[str, ...], use_ids: bool, model: str) -> None:
  """Raises ValueError when `sides` have no side features and ids are off: the model would see nothing."""
  if not use_ids and not any(n_feature_parts(spec, side) for side in sides):
    raise ValueError(
      f"model {model!r} has no input: the {'/'.join(sides)} side has no side features in this "
      f"dataset; pass use_ids=True (or use_{sides[0]}_ids=True)"
    )


def check_widths(x: dict, spec: FeatureSpec, side: str) -> None:
  """Raises ValueError when the feature widths of examples `x` disagree with `spec`."""
  cat_sizes, multi_dim, dense_dim = side_sizes(spec, side)
  for key, want in ((f"{side}_cat", len(cat_sizes)), (f"{side}_multi", multi_dim), (f"{side}_dense", dense_dim)):
    if key not in x:
      raise ValueError(f"examples lack key {key!r}; keys are {sorted(x)}")
    got = x[key].shape[-1]
    if got != want:
      raise ValueError(f"examples key {key!r} has width {got}, but the FeatureSpec says {want}")


class SideFeatures(nn.Module):
  """Embeddings of one side's features.

  Attributes:
    spec: the dataset's feature sizes.
    side: 'user' or 'item'.
    dim: width of each feature's embedding.
    combine: 'concat' -> [..., dim * n_feature_parts] (MeLU, two-tower); 'sum' -> [..., dim] (MF).
    embed_init: initialiser of the categorical and multi-hot tables.
    dense_init: initialiser of the dense projection's kernel.
  """

  spec: FeatureSpec
  side: str
  dim: int
  combine: str = "concat"
  embed_init: Initializer = nn.linear.default_embed_init
  dense_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: dict) -> jax.Array:
    """Args: x: examples dict with leading dims [...]. Returns: f32 [..., out] (see `combine`)."""
    if self.combine not in ("concat", "sum"):
      raise ValueError(f"combine must be 'concat' or 'sum', got {self.combine!r}")
    check_widths(x, self.spec, self.side)
    cat_sizes, multi_dim, dense_dim = side_sizes(self.spec, self.side)
    lead = x[f"{self.side}_cat"].shape[:-1]
    parts = []
    cat = x[f"{self.side}_cat"]
    for f, size in enumerate(cat_sizes):
      parts.append(nn.Embed(size, self.dim, embedding_init=self.embed_init, name=f"cat_{f}")(cat[..., f]))
    if multi_dim:
      table = self.param("multi", self.embed_init, (multi_dim, self.dim), jnp.float32)
      multi = x[f"{self.side}_multi"].astype(table.dtype)  # table's dtype: bf16 under precision.with_compute_dtype
      count = jnp.maximum(jnp.sum(multi, axis=-1, keepdims=True), 1.0)
      parts.append(multi @ table / count)
    if dense_dim:
      dense = x[f"{self.side}_dense"]
      dense = dense if jnp.issubdtype(dense.dtype, jnp.floating) else dense.astype(jnp.float32)
      parts.append(nn.Dense(self.dim, kernel_init=self.dense_init, name="dense")(dense))
    if self.combine == "sum":
      return sum(parts) if parts else jnp.zeros((*lead, self.dim), jnp.float32)
    return jnp.concatenate(parts, axis=-1) if parts else jnp.zeros((*lead, 0), jnp.float32)
