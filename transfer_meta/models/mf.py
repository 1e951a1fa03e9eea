"""Matrix factorisation whose user and item vectors come from ids AND side features.

    u = user_id[user] + sum(user feature embeddings) + user_delta                  [N, D]
    v = item_id[item] + sum(item feature embeddings) + item_delta                  [N, D]
    score = <u, v> + b_user + b_item + global_bias
    b_user = user_id_bias[user] + sum(user feature biases) + user_bias_delta       [N]

The id tables (and id biases) start at zero, so an id never seen in training scores from its
features alone: a cold-start user or item still has a vector. `user_delta`/`item_delta` and the
bias deltas are shared vectors that the inner loop adapts per task: adapting them (not the tables,
whose per-task copies would not fit in memory under the trainer's vmap) moves the task's user
(task_kind 'user') or item ('item') representation. A side without any features has its delta
drawn at random instead of zero so that <u, v> does not start at the all-zero saddle.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SIDES, SideFeatures, n_feature_parts, resolve_ids

TASK_KINDS = SIDES


def default_regex(task_kind: str) -> str:
  """The task side's delta and bias delta: what MF adapts per task (and its head)."""
  if task_kind not in TASK_KINDS:
    raise ValueError(f"task_kind must be one of {TASK_KINDS}, got {task_kind!r}")
  return rf"{task_kind}_delta|{task_kind}_bias_delta"


class MF(nn.Module):
  """Feature-aware matrix factorisation. `__call__(x, context)` scores x [N]; context is ignored.

  Attributes:
    spec: the dataset's feature sizes.
    dim: factor width D.
    use_user_ids, use_item_ids: add per-id vectors and biases (zero-initialised) to the feature-based ones,
      per side.
    global_bias: initial global bias (the mean rating; 0 for click targets).
    init_scale: stddev of the feature embeddings at initialisation.
  """

  spec: FeatureSpec
  dim: int = 32
  use_user_ids: bool = True
  use_item_ids: bool = True
  global_bias: float = 3.5
  init_scale: float = 0.1

  def _side(self, x: dict, side: str) -> tuple[jax.Array, jax.Array]:
    """Vector f32 [N, D] and bias f32 [N] of `side` for examples x."""
    zeros, normal = nn.initializers.zeros, nn.initializers.normal(self.init_scale)
    vec = SideFeatures(self.spec, side, self.dim, "sum", normal, normal, name=f"{side}_features")(x)
    bias = SideFeatures(self.spec, side, 1, "sum", zeros, zeros, name=f"{side}_bias_features")(x)[..., 0]
    if self.use_user_ids if side == "user" else self.use_item_ids:
      n = self.spec.n_users if side == "user" else self.spec.n_items
      vec = vec + nn.Embed(n, self.dim, embedding_init=zeros, name=f"{side}_id")(x[side])
      bias = bias + nn.Embed(n, 1, embedding_init=zeros, name=f"{side}_id_bias")(x[side])[..., 0]
    delta_init = zeros if n_feature_parts(self.spec, side) else normal
    vec = vec + self.param(f"{side}_delta", delta_init, (self.dim,), jnp.float32)
    bias = bias + self.param(f"{side}_bias_delta", zeros, (), jnp.float32)
    return vec, bias

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    del context  # MF reads only the examples it scores.
    u, b_user = self._side(x, "user")
    v, b_item = self._side(x, "item")
    global_bias = self.param("global_bias", nn.initializers.constant(self.global_bias), (), jnp.float32)
    return jnp.sum(u * v, axis=-1) + b_user + b_item + global_bias


def mf(
  spec: FeatureSpec,
  task_kind: str = "user",
  dim: int = 32,
  use_ids: bool | None = None,
  global_bias: float = 3.5,
  init_scale: float = 0.1,
  adapt_regex: str | None = None,
  head_regex: str | None = None,
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
) -> Model:
  """The MF backbone as a `Model` (see `MF`); by default adapts the `task_kind` side's deltas. `use_ids`
  switches both id tables (default on); `use_user_ids` / `use_item_ids` one side each."""
  regex = default_regex(task_kind)
  user_ids, item_ids = resolve_ids(use_ids, use_user_ids, use_item_ids, default=True)
  module = MF(spec, dim, user_ids, item_ids, global_bias, init_scale)
  return from_module("mf", module, adapt_regex or regex, head_regex or regex)
