"""Multi-head networks over the shared feature encoders: shared-bottom and MMoE (Ma et al., KDD'18).

    h        = concat(user side features, item side features[, user id, item id])           [N, D]
    shared_bottom:  z_head = bottom(h)                                  one MLP shared by every head
    mmoe:           e_k    = expert_k(h),  k < K                        [N, K, E] expert MLPs
                    g_head = softmax(gate_head(h))                      [N, K]    one gate per head
                    z_head = sum_k g_head[:, k] * e_k                   (`mixture`)
    score_head = head_output(relu(tower_head(z_head)))                  [N] per head

`heads(params, x) -> {head: f32 [N]}` scores every head (a rating, or a logit for binary heads); the `Model`
built by `multitask_model` scores one head (default 'rating'), so learners adapt and tables score it like any
backbone. Its adapt set is everything past the embeddings that feeds that head (bottom or experts, its gate,
tower and output); its head set is its output layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model
from transfer_meta.models.features import SideFeatures, require_inputs, resolve_ids

ARCHS = ("shared_bottom", "mmoe")


def mixture(experts: jax.Array, gate_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """MMoE's mixture of expert outputs.

  Args:
    experts: f32 [..., K, E] the K experts' outputs.
    gate_logits: f32 [..., K] one head's gate logits.
  Returns:
    (f32 [..., E] sum_k softmax(gate_logits)_k * experts_k, f32 [..., K] the gate weights, summing to 1).
  """
  gates = jax.nn.softmax(gate_logits, axis=-1)
  return jnp.einsum("...k,...ke->...e", gates, experts), gates


def _mlp(h: jax.Array, widths: Sequence[int], name: str) -> jax.Array:
  for i, width in enumerate(widths):
    h = nn.relu(nn.Dense(width, name=f"{name}_{i}")(h))
  return h


class MultiTaskNet(nn.Module):
  """Scores every head: `__call__(x, context) -> {head: f32 [N]}` (context ignored).

  Attributes:
    spec: the dataset's feature sizes.
    heads: head names, in order.
    biases: initial output bias of each head (the mean rating for a rating head, 0 for logits).
    arch: 'shared_bottom' or 'mmoe'.
    emb_dim: width of each feature embedding.
    hidden: widths of the shared bottom's layers, or of each expert's (MMoE).
    n_experts: K experts (MMoE only).
    tower: widths of each head's tower.
    use_user_ids, use_item_ids: also embed the ids (zero-initialised), as MeLU does.
  """

  spec: FeatureSpec
  heads: tuple[str, ...]
  biases: tuple[float, ...]
  arch: str = "shared_bottom"
  emb_dim: int = 32
  hidden: Sequence[int] = (64,)
  n_experts: int = 4
  tower: Sequence[int] = (32,)
  use_user_ids: bool = False
  use_item_ids: bool = False

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None) -> dict:
    del context
    parts = [
      SideFeatures(self.spec, "user", self.emb_dim, name="user_features")(x),
      SideFeatures(self.spec, "item", self.emb_dim, name="item_features")(x),
    ]
    zeros = nn.initializers.zeros
    if self.use_user_ids:
      parts.append(nn.Embed(self.spec.n_users, self.emb_dim, embedding_init=zeros, name="user_id")(x["user"]))
    if self.use_item_ids:
      parts.append(nn.Embed(self.spec.n_items, self.emb_dim, embedding_init=zeros, name="item_id")(x["item"]))
    h = jnp.concatenate(parts, axis=-1)
    if self.arch == "shared_bottom":
      shared = _mlp(h, self.hidden, "bottom")
      inputs = {head: shared for head in self.heads}
    else:
      experts = jnp.stack([_mlp(h, self.hidden, f"expert_{k}") for k in range(self.n_experts)], axis=-2)
      inputs = {head: mixture(experts, nn.Dense(self.n_experts, name=f"gate_{head}")(h))[0] for head in self.heads}
    out = {}
    for head, bias in zip(self.heads, self.biases):
      z = _mlp(inputs[head], self.tower, f"tower_{head}")
      out[head] = nn.Dense(1, bias_init=nn.initializers.constant(bias), name=f"{head}_output")(z)[..., 0]
    return out


def adapt_regex(arch: str, head: str) -> str:
  """Everything past the embeddings that feeds `head`: the bottom (or the experts and the head's gate), its tower
  and its output."""
  shared = "bottom_" if arch == "shared_bottom" else f"expert_|gate_{head}/"
  return f"{shared}|tower_{head}_|{head}_output"


def multitask_net(
  spec: FeatureSpec,
  heads: dict[str, float],
  arch: str = "shared_bottom",
  emb_dim: int = 32,
  hidden: Sequence[int] = (64,),
  n_experts: int = 4,
  tower: Sequence[int] = (32,),
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
) -> tuple[Callable, Callable]:
  """(init(key, x, context) -> params, heads(params, x, context) -> {head: f32 [N]}) of a `MultiTaskNet`.

  Args:
    spec: the dataset's feature sizes.
    heads: {head name: initial output bias}, in order (>= 1 head).
    arch: 'shared_bottom' or 'mmoe' (unknown names raise ValueError listing the valid ones).
    emb_dim, hidden, n_experts, tower, use_user_ids, use_item_ids: see `MultiTaskNet` (ids default off).
  """
  if arch not in ARCHS:
    raise ValueError(f"unknown multitask arch {arch!r}; valid: {list(ARCHS)}")
  if not heads:
    raise ValueError("multitask_net needs at least one head")
  if arch == "mmoe" and (isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1):
    raise ValueError(f"mmoe: n_experts={n_experts!r} must be an int >= 1")
  user_ids, item_ids = resolve_ids(None, use_user_ids, use_item_ids, default=False)
  require_inputs(spec, ("user", "item"), user_ids or item_ids, "multitask")
  module = MultiTaskNet(
    spec, tuple(heads), tuple(float(b) for b in heads.values()), arch, emb_dim, tuple(hidden), n_experts,
    tuple(tower), user_ids, item_ids,
  )  # fmt: skip

  def init(key, x, context=None):
    return module.init(key, x, context)

  def apply_heads(params, x, context=None):
    return module.apply(params, x, context)

  return init, apply_heads


def head_model(init: Callable, apply_heads: Callable, arch: str, head: str) -> Model:
  """The `Model` scoring one head of a multi-head net (what learners adapt and tables score)."""

  def apply(params, x, context=None):
    return apply_heads(params, x, context)[head]

  return Model(f"{arch}[{head}]", init, apply, adapt_regex(arch, head), f"{head}_output")
