"""A transformer encoder over the task's support interactions: adaptation by attention.

The user is represented by what they rated. Leak-free when scoring the support set itself (the
inner loop scores support with context=support):

  1. Support items are embedded from item features (+ id) and encoded by self-attention blocks
     over the valid support tokens. No rating enters this encoder.
  2. Each token's value combines its encoded item with its rating (context['target'], normalised).
  3. Each scored item (x) cross-attends over the support tokens, masking padded tokens AND tokens
     whose item id equals the scored item (leave-one-out): an item's own rating never reaches its
     score. With no valid token the attention output is exactly zero.
  4. concat(scored item, attention output, log(1 + #tokens attended), user features) -> MLP -> score.

For item tasks (task_kind 'item': the support is users who rated one item) the sides swap: the
tokens are the support USERS, leave-one-out is by user id, and the item's features join the MLP.

The output MLP (`score_*`) is the default adapt set, so MAML-style steps can be combined with
attention; `score_out` is the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SIDES, SideFeatures, require_inputs

ADAPT_REGEX = r"score_"
HEAD_REGEX = r"score_out"


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over the last axis restricted to `mask`; all-zero where a row has no True entry.

  Args:
    logits: f32 [..., S]. mask: bool, broadcastable to logits. S may be 0.
  Returns:
    f32 [..., S] weights: zero where masked; each row sums to 1, or to 0 when fully masked.
  """
  mask = jnp.broadcast_to(mask, logits.shape)
  top = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True, initial=-jnp.inf)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))  # softmax is shift-invariant
  # The inner where keeps exp away from masked logits, so no inf/NaN reaches values or gradients.
  e = jnp.where(mask, jnp.exp(jnp.where(mask, logits - top, 0.0)), 0.0)
  return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1.0)  # a non-empty row's sum is >= 1


class MaskedAttention(nn.Module):
  """Multi-head attention of queries [N, Dq] over keys [S, Dk] / values [S, Dv] with mask [N, S].

  The output projection has no bias, so a query with no valid key gets exactly zero.
  """

  num_heads: int
  width: int

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    head_dim = self.width // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)
    q, k, v = proj("query")(queries), proj("key")(keys), proj("value")(values)  # [., H, hd]
    logits = jnp.einsum("nhd,shd->hns", q, k) / jnp.sqrt(float(head_dim))
    weights = masked_softmax(logits, mask[None])  # [H, N, S]
    out = jnp.einsum("hns,shd->nhd", weights, v)
    return nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, name="out")(out)  # [N, width]


class EncoderBlock(nn.Module):
  """Pre-LayerNorm self-attention block over tokens [S, W] with a key mask [S]."""

  num_heads: int
  width: int
  mlp_dim: int

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    y = nn.LayerNorm(name="ln_attn")(h)
    h = h + MaskedAttention(self.num_heads, self.width, name="attn")(y, y, y, mask[None, :])
    y = nn.LayerNorm(name="ln_mlp")(h)
    y = nn.Dense(self.width, name="mlp_out")(nn.relu(nn.Dense(self.mlp_dim, name="mlp_hidden")(y)))
    return h + y


def empty_context(x: dict) -> dict:
  """An examples dict with the structure of x and zero rows: the support of a task with none."""
  return jax.tree_util.tree_map(lambda a: a[:0], x)


class SupportTransformer(nn.Module):
  """`__call__(x [N], context [S] or None)` -> scores f32 [N], user represented by the context.

  Attributes:
    spec: the dataset's feature sizes.
    task_kind: 'user' (tokens are the support items) or 'item' (tokens are the support users).
    emb_dim: width of each feature (and id) embedding.
    width: token width W of the encoder and attention.
    num_heads: attention heads.
    num_layers: self-attention blocks over the support items.
    mlp_dim: hidden width of each block's MLP.
    hidden: hidden widths of the output MLP.
    use_ids: add zero-initialised id embeddings to the token features (the token side's ids).
    use_task_ids: add a zero-initialised id embedding of the task side (the user of a user task) to the
      task features the score MLP reads.
    rating_center, rating_scale: a rating r enters as (r - center) / scale.
    global_bias: initial output bias (the mean rating; 0 for click targets).
  """

  spec: FeatureSpec
  task_kind: str = "user"
  emb_dim: int = 16
  width: int = 32
  num_heads: int = 2
  num_layers: int = 1
  mlp_dim: int = 64
  hidden: Sequence[int] = (64,)
  use_ids: bool = True
  rating_center: float = 3.0
  rating_scale: float = 2.0
  global_bias: float = 3.5
  use_task_ids: bool = False

  @property
  def token_side(self) -> str:
    """The side whose entities the support tokens are: items for user tasks, users for item tasks."""
    return "item" if self.task_kind == "user" else "user"

  def setup(self):
    if self.task_kind not in SIDES:
      raise ValueError(f"task_kind must be one of {SIDES}, got {self.task_kind!r}")
    n_tokens = self.spec.n_items if self.token_side == "item" else self.spec.n_users
    self.token_features = SideFeatures(self.spec, self.token_side, self.emb_dim)
    self.task_features = SideFeatures(self.spec, self.task_kind, self.emb_dim)
    if self.use_ids:
      self.token_id = nn.Embed(n_tokens, self.emb_dim, embedding_init=nn.initializers.zeros)
    if self.use_task_ids:
      n_task = self.spec.n_users if self.task_kind == "user" else self.spec.n_items
      self.task_id = nn.Embed(n_task, self.emb_dim, embedding_init=nn.initializers.zeros)
    self.token_proj = nn.Dense(self.width)
    self.encoder = [EncoderBlock(self.num_heads, self.width, self.mlp_dim) for _ in range(self.num_layers)]
    self.encoder_norm = nn.LayerNorm()
    self.rating_value = nn.Dense(self.width)
    self.cross_attn = MaskedAttention(self.num_heads, self.width)
    self.score_hidden = [nn.Dense(w) for w in self.hidden]
    self.score_out = nn.Dense(1, bias_init=nn.initializers.constant(self.global_bias))

  def embed_tokens(self, x: dict) -> jax.Array:
    """Tokens f32 [N, W] from the token side's features (+ id); no rating."""
    parts = [self.token_features(x)]
    if self.use_ids:
      parts.append(self.token_id(x[self.token_side]))
    return self.token_proj(jnp.concatenate(parts, axis=-1))

  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    if x["item"].ndim != 1:
      raise ValueError(f"the transformer scores one task: x['item'] must be [N], got {x['item'].shape}")
    context = empty_context(x) if context is None else context
    side = self.token_side
    tokens = self.embed_tokens(context)  # [S, W]
    for block in self.encoder:
      tokens = block(tokens, context["mask"])
    tokens = self.encoder_norm(tokens)
    rating = (context["target"].astype(jnp.float32) - self.rating_center) / self.rating_scale
    values = self.rating_value(jnp.concatenate([tokens, rating[:, None]], axis=-1))  # [S, W]
    queries = self.embed_tokens(x)  # [N, W]
    mask = context["mask"][None, :] & (context[side][None, :] != x[side][:, None])  # [N, S] leave-one-out
    attended = self.cross_attn(queries, tokens, values, mask)  # [N, W]
    count = jnp.log1p(jnp.sum(mask, axis=-1, dtype=jnp.float32))[:, None]
    parts = [queries, attended, count, self.task_features(x)]
    if self.use_task_ids:
      parts.append(self.task_id(x[self.task_kind]))
    h = jnp.concatenate(parts, axis=-1)
    for layer in self.score_hidden:
      h = nn.relu(layer(h))
    return self.score_out(h)[:, 0]


def transformer(
  spec: FeatureSpec,
  task_kind: str = "user",
  emb_dim: int = 16,
  width: int = 32,
  num_heads: int = 2,
  num_layers: int = 1,
  mlp_dim: int = 64,
  hidden: Sequence[int] = (64,),
  use_ids: bool | None = None,
  rating_center: float = 3.0,
  rating_scale: float = 2.0,
  global_bias: float = 3.5,
  adapt_regex: str = ADAPT_REGEX,
  head_regex: str = HEAD_REGEX,
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
) -> Model:
  """The support-set transformer as a `Model` (see `SupportTransformer`).

  Ids per side: the token side's (items of a user task) default on, the task side's default off.
  `use_ids` is the token side's switch (what it always meant here); `use_user_ids` / `use_item_ids` name
  a side each, and one contradicting `use_ids` raises ValueError.
  """
  if task_kind not in SIDES:
    raise ValueError(f"task_kind must be one of {SIDES}, got {task_kind!r}")
  if width % num_heads:
    raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
  if rating_scale <= 0:
    raise ValueError(f"rating_scale must be > 0, got {rating_scale}")
  token_side = "item" if task_kind == "user" else "user"
  flags = {"user": use_user_ids, "item": use_item_ids}
  if use_ids is not None and flags[token_side] is not None and bool(flags[token_side]) != bool(use_ids):
    raise ValueError(
      f"use_ids={use_ids} contradicts use_{token_side}_ids={flags[token_side]} (the transformer's use_ids is "
      f"the token side's, {token_side}): set one of them"
    )
  token_ids = bool(flags[token_side]) if flags[token_side] is not None else (True if use_ids is None else use_ids)
  task_ids = bool(flags[task_kind]) if flags[task_kind] is not None else False
  require_inputs(spec, (token_side,), token_ids, "transformer")
  module = SupportTransformer(
    spec,
    task_kind,
    emb_dim,
    width,
    num_heads,
    num_layers,
    mlp_dim,
    tuple(hidden),
    bool(token_ids),
    rating_center,
    rating_scale,
    global_bias,
    task_ids,
  )
  return from_module("transformer", module, adapt_regex, head_regex)
