"""Two-tower model: an MLP over user features (+ id) and one over item features (+ id).

    u = user_tower(concat(user feature embeddings, user_id[user]))       [N, D]
    v = item_tower(concat(item feature embeddings, item_id[item]))       [N, D]
    score = <u, v> / sqrt(D) + global_bias                               (similarity 'dot')
          = temperature * cos(u, v) + global_bias                        (similarity 'cosine')

The dot product is scaled by 1/sqrt(D), as in attention, so initial scores stay near the global
bias. Id tables start at zero: a new id is represented by its features. Per task the last layer of
the task side's tower is adapted (the user tower for user tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SIDES, SideFeatures, require_inputs, resolve_ids

SIMILARITIES = ("dot", "cosine")


def default_regex(task_kind: str) -> str:
  """The last layer of the task side's tower."""
  if task_kind not in SIDES:
    raise ValueError(f"task_kind must be one of {SIDES}, got {task_kind!r}")
  return rf"{task_kind}_tower/out/"


def _unit(v: jax.Array) -> jax.Array:
  """v / |v| along the last axis; the epsilon keeps value and gradient finite at v = 0."""
  return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-6)


class Tower(nn.Module):
  """One side's tower: side-feature (+ id) embeddings -> MLP -> f32 [N, out_dim]."""

  spec: FeatureSpec
  side: str
  emb_dim: int
  hidden: Sequence[int]
  out_dim: int
  use_ids: bool

  @nn.compact
  def __call__(self, x: dict) -> jax.Array:
    parts = [SideFeatures(self.spec, self.side, self.emb_dim, name="features")(x)]
    if self.use_ids:
      n = self.spec.n_users if self.side == "user" else self.spec.n_items
      parts.append(nn.Embed(n, self.emb_dim, embedding_init=nn.initializers.zeros, name="id")(x[self.side]))
    h = jnp.concatenate(parts, axis=-1)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    return nn.Dense(self.out_dim, name="out")(h)


class TwoTower(nn.Module):
  """`__call__(x, context)` scores x [N]; context is ignored.

  Attributes:
    spec: the dataset's feature sizes.
    emb_dim: width of each feature (and id) embedding.
    hidden: hidden widths of each tower.
    out_dim: width D of the tower outputs.
    similarity: 'dot' (scaled) or 'cosine' (times a learned temperature).
    use_user_ids, use_item_ids: add zero-initialised id embeddings to the user / item tower inputs.
    global_bias: initial global bias (the mean rating; 0 for click targets).
  """

  spec: FeatureSpec
  emb_dim: int = 16
  hidden: Sequence[int] = (64,)
  out_dim: int = 32
  similarity: str = "dot"
  use_user_ids: bool = True
  use_item_ids: bool = True
  global_bias: float = 3.5

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    del context  # the two-tower model reads only the examples it scores.
    u = Tower(self.spec, "user", self.emb_dim, self.hidden, self.out_dim, self.use_user_ids, name="user_tower")(x)
    v = Tower(self.spec, "item", self.emb_dim, self.hidden, self.out_dim, self.use_item_ids, name="item_tower")(x)
    if self.similarity == "dot":
      sim = jnp.sum(u * v, axis=-1) / jnp.sqrt(float(self.out_dim))
    elif self.similarity == "cosine":
      temperature = self.param("temperature", nn.initializers.ones, (), jnp.float32)
      sim = temperature * jnp.sum(_unit(u) * _unit(v), axis=-1)
    else:
      raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
    return sim + self.param("global_bias", nn.initializers.constant(self.global_bias), (), jnp.float32)


def two_tower(
  spec: FeatureSpec,
  task_kind: str = "user",
  emb_dim: int = 16,
  hidden: Sequence[int] = (64,),
  out_dim: int = 32,
  similarity: str = "dot",
  use_ids: bool | None = None,
  global_bias: float = 3.5,
  adapt_regex: str | None = None,
  head_regex: str | None = None,
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
) -> Model:
  """The two-tower backbone as a `Model` (see `TwoTower`); adapts the task side's last tower layer. `use_ids`
  switches both id tables (default on); `use_user_ids` / `use_item_ids` one side each."""
  if similarity not in SIMILARITIES:
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
  regex = default_regex(task_kind)
  ids = dict(zip(SIDES, resolve_ids(use_ids, use_user_ids, use_item_ids, default=True)))
  for side in SIDES:
    require_inputs(spec, (side,), ids[side], "two_tower")
  module = TwoTower(spec, emb_dim, tuple(hidden), out_dim, similarity, ids["user"], ids["item"], global_bias)
  return from_module("two_tower", module, adapt_regex or regex, head_regex or regex)
