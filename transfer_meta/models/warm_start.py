"""Feature-aware MF whose task side's id embedding can be generated (MetaEmb) or warmed (MWUF).

The base is `models.mf.MF` (same parameter names): for the task side s ('item' on item-as-task protocols)

    f, f_b = sum of s's feature embeddings / biases                     [N, D], [N]   (the base's, frozen later)
    mode 'ids'   v = f + id[s] + delta                 b = f_b + id_b[s] + bias_delta        (the base model)
    mode 'cold'  the id row is NOT read (every s is treated as a cold id, as at evaluation):
      metaemb    v = f + g(f)[:D] + delta              b = f_b + g(f)[D] + bias_delta
                 g = the generator, Dense(hidden) -> tanh -> Dense(D + 1)  (Pan et al. SIGIR'19)
      mwuf       v = f + scale(f) * delta + shift(u_ctx)   b = f_b + bias_delta
                 scale = 1 + Dense(hidden) -> relu -> Dense(D)   (meta scaling network, from s's features)
                 shift = Dense(hidden) -> relu -> Dense(D) of u_ctx, the masked mean of the context rows'
                 other-side vectors (the item's interacting users: the support seen so far)
                 (Zhu et al. SIGIR'21)
    score = <u, v> + b_user + b_item + global_bias          (u: the other side, as in MF)

`delta`/`bias_delta` is what warm-up adapts per task (the cold id's embedding and bias, starting at the shared
pretrained value), so "update the cold item's id embedding" is `adapt_regex = models.mf.default_regex(s)`. The
generator's and meta networks' last layers start at zero: at initialisation 'cold' mode equals the base model
scoring a cold id, and anything better is learned. Both modes build the same parameter tree, so stage 1
trains the base in 'ids' mode and stage 2 the generator / meta networks in 'cold' mode on one tree.

Where we differ from the reference code: the generator reads the base's summed feature embedding (MetaEmb's
code concatenates per-field embeddings); it also generates the id bias (our MF has id biases, their backbones
do not); MWUF's scaling multiplies the id part (delta) and leaves the feature embedding as the base has it;
MWUF's shift averages the full user vectors (id + features) of the support, not only their id embeddings.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SIDES, SideFeatures, n_feature_parts
from transfer_meta.models.mf import default_regex

MODES = ("ids", "cold")
METHODS = ("metaemb", "mwuf")
# Regexes over parameter paths: the extra networks (stage 2 trains them) and everything else (the base).
META_REGEX = {"metaemb": "_generator/", "mwuf": "_meta_scale/|_meta_shift/"}
BASE_REGEX = r"^(?!.*(_generator/|_meta_scale/|_meta_shift/))"


class MLP(nn.Module):
  """Dense(hidden) -> act -> Dense(out), the last layer zero-initialised (the network starts at output 0)."""

  hidden: int
  out: int
  act: str = "relu"

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = getattr(nn, self.act)(nn.Dense(self.hidden)(h))
    return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(h)


class WarmStartMF(nn.Module):
  """See the module docstring. `__call__(x, context)` scores x [N]; MWUF reads the context's rows.

  Attributes:
    spec, dim, global_bias, init_scale: as `models.mf.MF` (ids on for both sides).
    side: the task side whose id embedding is generated or warmed.
    mode: 'ids' (the base) or 'cold' (the side's id rows unread, `method` applied).
    method: 'metaemb' or 'mwuf'.
    hidden: width of the generator / meta networks.
  """

  spec: FeatureSpec
  dim: int = 32
  global_bias: float = 3.5
  init_scale: float = 0.1
  side: str = "item"
  mode: str = "ids"
  method: str = "metaemb"
  hidden: int = 32

  def _parts(self, x: dict, side: str) -> dict:
    zeros, normal = nn.initializers.zeros, nn.initializers.normal(self.init_scale)
    n = self.spec.n_users if side == "user" else self.spec.n_items
    delta_init = zeros if n_feature_parts(self.spec, side) else normal
    return {
      "f": SideFeatures(self.spec, side, self.dim, "sum", normal, normal, name=f"{side}_features")(x),
      "f_b": SideFeatures(self.spec, side, 1, "sum", zeros, zeros, name=f"{side}_bias_features")(x)[..., 0],
      "id": nn.Embed(n, self.dim, embedding_init=zeros, name=f"{side}_id")(x[side]),
      "id_b": nn.Embed(n, 1, embedding_init=zeros, name=f"{side}_id_bias")(x[side])[..., 0],
      "delta": self.param(f"{side}_delta", delta_init, (self.dim,), jnp.float32),
      "bias_delta": self.param(f"{side}_bias_delta", zeros, (), jnp.float32),
    }

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    if self.side not in SIDES or self.mode not in MODES or self.method not in METHODS:
      raise ValueError(f"side/mode/method {self.side!r}/{self.mode!r}/{self.method!r}: want {SIDES}/{MODES}/{METHODS}")
    other = "user" if self.side == "item" else "item"
    n = x["mask"].shape[0]
    if x["mask"].ndim != 1:
      raise ValueError(f"WarmStartMF scores one task's rows x [N], got mask shape {x['mask'].shape}")
    # The context (MWUF's interacting users) is scored through the same tables: rows [n:] of one batch.
    ctx = {k: v[:0] for k, v in x.items()} if context is None else context
    both = {k: jnp.concatenate([x[k], ctx[k]], axis=0) for k in x if k in ctx}
    o = self._parts(both, other)
    u, b_user = (o["f"] + o["id"] + o["delta"])[:n], (o["f_b"] + o["id_b"] + o["bias_delta"])[:n]
    s = self._parts(x, self.side)
    if self.method == "metaemb":
      g = MLP(self.hidden, self.dim + 1, "tanh", name=f"{self.side}_generator")(s["f"])
      cold_v, cold_b = s["f"] + g[..., : self.dim] + s["delta"], s["f_b"] + g[..., self.dim] + s["bias_delta"]
    else:
      w = jnp.asarray(ctx["mask"], jnp.float32)[:, None]
      u_ctx = jnp.sum(w * (o["f"] + o["id"] + o["delta"])[n:], axis=0) / jnp.maximum(jnp.sum(w), 1.0)  # [D]
      scale = 1.0 + MLP(self.hidden, self.dim, name=f"{self.side}_meta_scale")(s["f"])
      shift = MLP(self.hidden, self.dim, name=f"{self.side}_meta_shift")(u_ctx)
      cold_v, cold_b = s["f"] + scale * s["delta"] + shift, s["f_b"] + s["bias_delta"]
    if self.mode == "ids":
      v, b = s["f"] + s["id"] + s["delta"], s["f_b"] + s["id_b"] + s["bias_delta"]
    else:
      v, b = cold_v, cold_b
    global_bias = self.param("global_bias", nn.initializers.constant(self.global_bias), (), jnp.float32)
    return jnp.sum(u * v, axis=-1) + b_user + b + global_bias


def warm_start_mf(
  spec: FeatureSpec,
  method: str = "metaemb",
  mode: str = "cold",
  side: str = "item",
  dim: int = 32,
  hidden: int = 32,
  global_bias: float = 3.5,
  init_scale: float = 0.1,
) -> Model:
  """`WarmStartMF` as a `Model` adapting the side's delta and bias delta (its cold id embedding) per task."""
  module = WarmStartMF(spec, dim, global_bias, init_scale, side, mode, method, hidden)
  regex = default_regex(side)
  return from_module(f"warm_start_mf_{method}_{mode}", module, regex, regex)
