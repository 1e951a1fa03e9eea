"""A BERT encoder in Flax (post-LayerNorm, absolute positions) with sentence-transformers' pooling.

    hidden = Bert(config).apply({"params": params}, ids, mask)       # f32 [B, L, H]
    vector = mean_pool(hidden, mask)                                  # f32 [B, H], unit L2 norm

Matches HuggingFace `BertModel` (hidden_act "gelu" = the exact erf GELU, LayerNorm eps 1e-12, padded keys
masked out of attention) followed by sentence-transformers' `Pooling(mean)` and `Normalize`. Token type ids
are all 0 (single sentences). `params_from_torch` is the one place that maps a PyTorch state dict
(`encoder.layer.3.attention.self.query.weight`, layout [out, in]) onto this module's parameter tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder; the defaults are all-MiniLM-L6-v2's."""

  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab: int = 2
  eps: float = 1e-12

  def __post_init__(self):
    if self.hidden % self.heads:
      raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")

  @classmethod
  def from_hf(cls, cfg: Mapping) -> BertConfig:
    """From a HuggingFace `config.json` dict; refuses what this encoder does not implement."""
    checks = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    bad = {k: cfg.get(k) for k, v in checks.items() if cfg.get(k, v) != v}
    if bad:
      raise ValueError(f"unsupported BERT config values {bad}; this encoder implements {checks}")
    return cls(
      vocab_size=cfg["vocab_size"],
      hidden=cfg["hidden_size"],
      layers=cfg["num_hidden_layers"],
      heads=cfg["num_attention_heads"],
      intermediate=cfg["intermediate_size"],
      max_positions=cfg["max_position_embeddings"],
      type_vocab=cfg["type_vocab_size"],
      eps=cfg["layer_norm_eps"],
    )


class Layer(nn.Module):
  """One post-LayerNorm transformer layer: self-attention then the erf-GELU feed-forward block."""

  config: BertConfig

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    """Args: h f32 [B, L, H]; mask bool [B, L] (True = real token). Returns: f32 [B, L, H]."""
    c = self.config
    B, L, H = h.shape
    split = lambda t: t.reshape(B, L, c.heads, H // c.heads)
    q, k, v = (split(nn.Dense(H, name=n)(h)) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(H // c.heads)
    # HF adds finfo.min to padded keys; `where` gives them weight exactly 0 the same way, without overflow.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(B, L, H)
    h = nn.LayerNorm(c.eps, name="attn_norm")(h + nn.Dense(H, name="attn_proj")(att))
    ff = nn.gelu(nn.Dense(c.intermediate, name="ffn_up")(h), approximate=False)
    return nn.LayerNorm(c.eps, name="ffn_norm")(h + nn.Dense(H, name="ffn_down")(ff))


class Bert(nn.Module):
  """Token states of a BERT encoder (no pooler: sentence vectors come from `mean_pool`)."""

  config: BertConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Args: ids int32 [B, L] token ids; mask bool [B, L]. Returns: f32 [B, L, H] last-layer states."""
    c = self.config
    chex.assert_rank([ids, mask], 2)
    chex.assert_equal_shape([ids, mask])
    if ids.shape[1] > c.max_positions:
      raise ValueError(f"sequence length {ids.shape[1]} exceeds max_positions {c.max_positions}")
    pos = jnp.arange(ids.shape[1])
    h = (
      nn.Embed(c.vocab_size, c.hidden, name="word_embeddings")(ids)
      + nn.Embed(c.max_positions, c.hidden, name="position_embeddings")(pos)[None]
      + nn.Embed(c.type_vocab, c.hidden, name="token_type_embeddings")(jnp.zeros_like(ids))
    )
    h = nn.LayerNorm(c.eps, name="embeddings_norm")(h)
    for i in range(c.layers):
      h = Layer(c, name=f"layer_{i}")(h, mask)
    return h


def states_before(params, config: BertConfig, ids: jax.Array, mask: jax.Array, layer: int) -> jax.Array:
  """Token states f32 [B, L, H] entering layer `layer` (0: the embeddings; `config.layers`: the last states).

  The same `Bert` module run with its first `layer` layers only (`params` may hold them all)."""
  if not 0 <= layer <= config.layers:
    raise ValueError(f"layer={layer} must be in [0, {config.layers}]")
  first = {k: v for k, v in params.items() if not k.startswith("layer_") or int(k[len("layer_") :]) < layer}
  return Bert(dataclasses.replace(config, layers=layer)).apply({"params": first}, ids, mask)


def mean_pool(hidden: jax.Array, mask: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Masked mean over tokens, then L2 normalisation (sentence-transformers' Pooling(mean) + Normalize).

  Args:
    hidden: f32 [B, L, H] token states.
    mask: bool [B, L]; padded tokens do not count.
    eps: lower bound on the norms (torch's `F.normalize` and the token count's clamp use 1e-12 / 1e-9).
  Returns:
    f32 [B, H] unit-norm sentence vectors (an all-padding row gives zeros).
  """
  m = mask.astype(hidden.dtype)[..., None]
  mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  # sqrt(max(|x|^2, eps^2)) = max(|x|, eps), with a finite gradient at an all-padding row's zero vector.
  return mean / jnp.sqrt(jnp.maximum(jnp.sum(mean * mean, axis=-1, keepdims=True), eps * eps))


def encode(params, config: BertConfig, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Sentence vectors f32 [B, H] of token ids [B, L] (mask bool [B, L]); jit with `config` static."""
  return mean_pool(Bert(config).apply({"params": params}, ids, mask), mask)


# Our parameter path -> the PyTorch name (without the ".weight"/".bias" suffix). A layer's names avoid the
# words recommenders' adapt/head regexes use ("output", "out", "head", "dense"), so a fine-tuned last layer
# (`text.last_layer`) inside a backbone's params is never caught by them by accident.
_EMBED = {
  "word_embeddings": "embeddings.word_embeddings",
  "position_embeddings": "embeddings.position_embeddings",
  "token_type_embeddings": "embeddings.token_type_embeddings",
}
_LAYER = {
  "query": "attention.self.query",
  "key": "attention.self.key",
  "value": "attention.self.value",
  "attn_proj": "attention.output.dense",
  "attn_norm": "attention.output.LayerNorm",
  "ffn_up": "intermediate.dense",
  "ffn_down": "output.dense",
  "ffn_norm": "output.LayerNorm",
}
# Present in BertModel checkpoints, unused by mean pooling: the [CLS] pooler and a position-id buffer.
UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def params_from_torch(state: Mapping[str, np.ndarray], config: BertConfig) -> dict:
  """Maps a PyTorch `BertModel` state dict onto `Bert`'s parameter tree (the only name/layout mapping).

  Linear weights are [out, in] in PyTorch and [in, out] (`kernel`) in Flax, so they are transposed;
  LayerNorm weight/bias become scale/bias; embeddings keep their [vocab, H] layout.

  Args:
    state: name -> array, e.g. `safetensors.numpy.load_file(...)` (an optional "bert." prefix is stripped).
    config: the encoder's sizes; every array's shape is checked against them.
  Returns:
    The `params` tree of `Bert(config)` (float32 numpy arrays).
  Raises:
    ValueError: a tensor is missing, has the wrong shape, or is not one this encoder knows.
  """
  state = {k.removeprefix("bert."): np.asarray(v) for k, v in state.items()}
  used = set()

  def take(name: str) -> np.ndarray:
    if name not in state:
      raise ValueError(f"BERT state dict lacks {name!r}; it has {len(state)} tensors, e.g. {sorted(state)[:4]}")
    used.add(name)
    return state[name].astype(np.float32)

  def dense(prefix: str) -> dict:
    return {"kernel": take(prefix + ".weight").T, "bias": take(prefix + ".bias")}

  def norm(prefix: str) -> dict:
    return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

  params = {ours: {"embedding": take(theirs + ".weight")} for ours, theirs in _EMBED.items()}
  params["embeddings_norm"] = norm("embeddings.LayerNorm")
  for i in range(config.layers):
    pre = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {ours: (norm if ours.endswith("norm") else dense)(pre + t) for ours, t in _LAYER.items()}
  unknown = sorted(set(state) - used - set(UNUSED))
  if unknown:
    raise ValueError(f"BERT state dict has tensors this encoder does not use: {unknown[:8]}")
  want = jax.eval_shape(
    lambda: Bert(config).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))
  )["params"]
  want = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(want).items()}
  got = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
  diff = [f"{k}: {got.get(k)} vs {want.get(k)}" for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k)]
  if diff:
    raise ValueError(f"BERT state dict shapes disagree with {config} (got vs want): {diff[:6]}")
  return params
