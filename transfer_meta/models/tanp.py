"""TaNP (Lin et al., "Task-adaptive Neural Process for User Cold-Start Recommendation", WWW'21) as a model whose
`apply` reads the support: no inner gradient loop, the support is encoded into a task representation that
modulates the decoder.

    e_i   = concat(user features, item features) of row i                        (shared by encoder and decoder)
    r     = masked mean_i MLP_r(concat(e_i, y_i))        deterministic task embedding over the support [R]
    s     = masked mean_i MLP_s(concat(e_i, y_i));  mu, sigma = Dense(s), 0.1 + 0.9 softplus(Dense(s))   latent [Z]
    q_k   = (1 + |r - c_k|^2 / alpha)^(-(alpha+1)/2) / sum_k' (...)   Student-t soft assignment to the K clusters c
    o     = r + sum_k q_k c_k                                             task embedding moved toward its clusters
    t     = concat(z, o)       z = mu at scoring time; a posterior sample in training (`learners/tanp.py`)
    h_l   = relu(modulate(Dense_l(h_{l-1}), t))      h_0 = e of the scored item;  score = Dense_out(h_L)[0]

    film:    h <- gamma * h + beta              gamma, beta = tanh(Dense(t))
    gating:  h <- gamma' * h + beta'            gamma' = gamma d + eta (1 - d), beta' = beta d + eta (1 - d),
                                                 eta = tanh(Dense(t)), d = sigmoid(Dense(t))

Rows are pooled by masked means, so the task embedding is invariant to the order of the support and ignores
padded rows (tested); an empty support gives r = s = 0.

Where we differ from the reference code (TaNP's own release and RecBole-MetaRec's port), and why:
- sigma = 0.1 + 0.9 softplus(.) (the usual neural-process bound) instead of an exponential of an unbounded
  output, and the Student-t kernel in log space (log1p, log-softmax): RecBole-MetaRec's TaNP produces NaN from
  step 3 at its listed settings; with these every quantity stays finite (tests/test_tanp.py runs real ML-100K
  steps and checks it).
- The clustering loss's target distribution P is computed over the tasks of the batch (`learners/tanp.py`
  `cluster_loss`); computed over one task at a time P equals Q and the loss is identically 0.
- The task embedding fed to the modulation is concat(z, r + q C): the deterministic embedding plus its
  soft-assigned cluster centres (the reference's memory read), beside the latent sample.
- Ratings enter the encoder normalised, (y - rating_center) / rating_scale, not one-hot.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model
from transfer_meta.models.features import SideFeatures, require_inputs
from transfer_meta.models.transformer import empty_context

ADAPT_REGEX = r"decoder_|output"
HEAD_REGEX = r"output"
Z_KEY = "tanp_z"  # optional context key: the latent sample the decoder uses instead of mu (training)
MODULATIONS = ("film", "gating")


def masked_pool(h: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked mean over rows. h f32 [S, D], mask bool [S] -> [D]; zeros when no row is real."""
  w = mask.astype(h.dtype)[:, None]
  return jnp.sum(h * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)


def student_t_log_assign(r: jax.Array, centers: jax.Array, alpha: float) -> jax.Array:
  """log q_k: Student-t soft assignment of embedding r [R] to centres [K, R] with `alpha` degrees of freedom.

  Returns:
    f32 [K], log of q_k = (1 + |r - c_k|^2 / alpha)^(-(alpha + 1) / 2) / sum_k' (...), computed in log space.
  """
  d2 = jnp.sum(jnp.square(r[None, :] - centers), axis=-1)
  return jax.nn.log_softmax(-0.5 * (alpha + 1.0) * jnp.log1p(d2 / alpha))


def film(h: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
  """FiLM: h [N, D] scaled by tanh(gamma) and shifted by tanh(beta) (gamma, beta: pre-activations [D])."""
  return jnp.tanh(gamma) * h + jnp.tanh(beta)


def gating(h: jax.Array, gamma: jax.Array, beta: jax.Array, eta: jax.Array, delta: jax.Array) -> jax.Array:
  """Gated FiLM (TaNP's 'gating'): tanh(gamma), tanh(beta) mixed with tanh(eta) by the gate sigmoid(delta)."""
  g, b, e, d = jnp.tanh(gamma), jnp.tanh(beta), jnp.tanh(eta), jax.nn.sigmoid(delta)
  return (g * d + e * (1 - d)) * h + (b * d + e * (1 - d))


class TaNP(nn.Module):
  """`__call__(x [N], context [S] or None)` -> scores f32 [N].

  Attributes:
    spec: the dataset's feature sizes.
    emb_dim: width of each feature embedding.
    enc_hidden: hidden widths of the encoder MLPs (deterministic and latent paths).
    r_dim, z_dim: widths of the deterministic task embedding and of the latent.
    n_clusters: K, the size of the global cluster pool.
    alpha: degrees of freedom of the Student-t kernel.
    dec_hidden: widths of the modulated decoder layers.
    modulation: 'film' or 'gating'.
    rating_center, rating_scale: a rating y enters the encoder as (y - center) / scale.
    global_bias: initial output bias (the mean rating; 0 for click targets or a residual).
  """

  spec: FeatureSpec
  emb_dim: int = 16
  enc_hidden: Sequence[int] = (64,)
  r_dim: int = 32
  z_dim: int = 16
  n_clusters: int = 8
  alpha: float = 1.0
  dec_hidden: Sequence[int] = (64, 32)
  modulation: str = "film"
  rating_center: float = 3.0
  rating_scale: float = 2.0
  global_bias: float = 3.5

  def setup(self):
    self.user_features = SideFeatures(self.spec, "user", self.emb_dim)
    self.item_features = SideFeatures(self.spec, "item", self.emb_dim)
    self.enc_r = [nn.Dense(w) for w in self.enc_hidden] + [nn.Dense(self.r_dim)]
    self.enc_s = [nn.Dense(w) for w in self.enc_hidden]
    self.z_mu, self.z_sigma = nn.Dense(self.z_dim), nn.Dense(self.z_dim)
    self.clusters = self.param("clusters", nn.initializers.normal(1.0), (self.n_clusters, self.r_dim))
    n_mod = 2 if self.modulation == "film" else 4
    self.modulators = [[nn.Dense(w) for _ in range(n_mod)] for w in self.dec_hidden]
    self.decoder = [nn.Dense(w) for w in self.dec_hidden]
    self.output = nn.Dense(1, bias_init=nn.initializers.constant(self.global_bias))

  def rows(self, x: dict) -> jax.Array:
    """e_i: f32 [N, Fu*E + Fi*E] from the user and item side features of every row."""
    return jnp.concatenate([self.user_features(x), self.item_features(x)], axis=-1)

  def _pairs(self, context: dict) -> jax.Array:
    rating = (context["target"].astype(jnp.float32) - self.rating_center) / self.rating_scale
    return jnp.concatenate([self.rows(context), rating[:, None]], axis=-1)

  def embed(self, context: dict) -> jax.Array:
    """r: the deterministic task embedding f32 [R] (masked mean over the support rows)."""
    h = self._pairs(context)
    for layer in self.enc_r[:-1]:
      h = nn.relu(layer(h))
    return masked_pool(self.enc_r[-1](h), context["mask"])

  def latent(self, context: dict) -> tuple[jax.Array, jax.Array]:
    """(mu, sigma) f32 [Z] of the latent z given the rows of `context`."""
    h = self._pairs(context)
    for layer in self.enc_s:
      h = nn.relu(layer(h))
    s = masked_pool(h, context["mask"])
    return self.z_mu(s), 0.1 + 0.9 * nn.softplus(self.z_sigma(s))

  def assign(self, context: dict) -> jax.Array:
    """log q f32 [K]: the task's soft assignment to the cluster pool."""
    return student_t_log_assign(self.embed(context), self.clusters, self.alpha)

  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    if self.modulation not in MODULATIONS:
      raise ValueError(f"modulation must be one of {MODULATIONS}, got {self.modulation!r}")
    context = empty_context(x) if context is None else context
    r = self.embed(context)
    q = jnp.exp(student_t_log_assign(r, self.clusters, self.alpha))
    z = context[Z_KEY] if Z_KEY in context else self.latent(context)[0]
    t = jnp.concatenate([z, r + q @ self.clusters])
    h = self.rows(x)
    for layer, mods in zip(self.decoder, self.modulators):
      pre = [m(t) for m in mods]
      h = nn.relu(film(layer(h), *pre) if self.modulation == "film" else gating(layer(h), *pre))
    return self.output(h)[:, 0]


def tanp(
  spec: FeatureSpec,
  emb_dim: int = 16,
  enc_hidden: Sequence[int] = (64,),
  r_dim: int = 32,
  z_dim: int = 16,
  n_clusters: int = 8,
  alpha: float = 1.0,
  dec_hidden: Sequence[int] = (64, 32),
  modulation: str = "film",
  rating_center: float = 3.0,
  rating_scale: float = 2.0,
  global_bias: float = 3.5,
  adapt_regex: str = ADAPT_REGEX,
  head_regex: str = HEAD_REGEX,
) -> Model:
  """TaNP as a `Model` (see `TaNP`); `aux` holds 'latent' (params, context) -> (mu, sigma) [Z] and 'assign'
  (params, context) -> log q [K], which the `tanp` learner trains with."""
  if modulation not in MODULATIONS:
    raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
  if n_clusters < 1 or alpha <= 0 or rating_scale <= 0:
    raise ValueError(f"need n_clusters >= 1, alpha > 0, rating_scale > 0; got {n_clusters}, {alpha}, {rating_scale}")
  require_inputs(spec, ("user", "item"), False, "tanp")
  module = TaNP(
    spec,
    emb_dim,
    tuple(enc_hidden),
    r_dim,
    z_dim,
    n_clusters,
    float(alpha),
    tuple(dec_hidden),
    modulation,
    rating_center,
    rating_scale,
    global_bias,
  )

  def init(key, x, context=None):
    return module.init(key, x, context)

  def apply(params, x, context=None):
    return module.apply(params, x, context)

  aux = {
    "latent": lambda params, context: module.apply(params, context, method=TaNP.latent),
    "assign": lambda params, context: module.apply(params, context, method=TaNP.assign),
    "embed": lambda params, context: module.apply(params, context, method=TaNP.embed),
  }
  return Model("tanp", init, apply, adapt_regex, head_regex, aux)
