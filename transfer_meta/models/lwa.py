"""LWA and NLBA (Vartak et al., "A Meta-Learning Perspective on Cold-Start Recommendations for Items",
NeurIPS'17): amortised user models built from the class-conditional means of the support's item representations.

Both read the support as context and have no inner gradient loop: train them with learner `none` (its `adapt`
is the identity, its `task_grad` the gradient of the task's loss with the support as context), so a config
names model + learner (`model_name='lwa', learner_name='none'`) and no learner alias is needed.

    F(x)     item representation: MLP over the item's side features (+ a zero-initialised id embedding)  [N, D]
    R1, R0   masked means of F over the positive / negative support items (target >= positive_threshold)
    LWA      w = R1 - R0 (paper §3.1, linear weight adaptation);
             logit = head([w . F(x), log((n1 + 1) / (n0 + 1))])          (head: Dense(1); see below)
    NLBA     h_0 = F(x); h_{l+1} = relu(W_l h_l + A_l R0 + B_l R1 + c_l)   (paper §3.2: biases of a shared MLP
             built from the class means by learned linear nets A_l, B_l); logit = out(h_L) + head(log-odds)

Where we differ from the paper, on purpose:
  - Leave-one-out: when a scored item is itself in the support (the support loss of `none`'s pretraining), it is
    left out of the class means it is scored with, so its own label never reaches its score (as the transformer
    does). Query items are never in the support, so evaluation is the paper's rule.
  - Empty class (a user with no negative, or no positive, support item): that class mean is a learned vector
    (`empty_neg` / `empty_pos`, zero-initialised) instead of an undefined mean; n_c = 0 enters the log-odds.
  - The paper's per-user bias (w_0 from learned alpha) is here a learned function of the support's class counts:
    the head's kernel on the log-odds feature and its bias. The head's kernel on w . F(x) starts at 1, so at
    initialisation logit = (R1 - R0) . F(x) + global_bias exactly.
  - Ratings: with positive_threshold 4 the classes are 'rated >= 4' vs not and the output is read as a rating
    (global_bias the mean rating), so the same models run in the rating setting of `recbole_metarec`.
  - `item_bias=True` adds a global per-item score g(F(x)) (a Dense over F), which the paper has not (it is off
    by default): a user-independent popularity term, as the item-mean baseline has.
User tasks only (the support is the user's rated items).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SideFeatures, require_inputs, resolve_ids

LWA_ADAPT_REGEX = r"head"
NLBA_ADAPT_REGEX = r"head|out"


def class_means(
  feats: jax.Array, positive: jax.Array, valid: jax.Array, empty_pos: jax.Array, empty_neg: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per scored item, the means of the support representations over its positive and negative support items.

  Args:
    feats: f32 [S, D] representations of the support items.
    positive: bool [S] True where the support item is of the positive class.
    valid: bool [N, S] support items each of N scored items may read (padding and leave-one-out masked out).
    empty_pos, empty_neg: f32 [D] used as a class's mean where that class has no valid item.
  Returns:
    (R1 f32 [N, D], R0 f32 [N, D], n1 f32 [N], n0 f32 [N]): class means and class counts.
  """
  pos = (valid & positive[None, :]).astype(feats.dtype)  # [N, S]
  neg = (valid & ~positive[None, :]).astype(feats.dtype)
  n1, n0 = jnp.sum(pos, axis=-1), jnp.sum(neg, axis=-1)
  mean = lambda w, n, empty: jnp.where(n[:, None] > 0, (w @ feats) / jnp.maximum(n, 1.0)[:, None], empty[None, :])
  return mean(pos, n1, empty_pos), mean(neg, n0, empty_neg), n1, n0


def _unit_then_zero(key, shape, dtype=jnp.float32):
  """Head kernel [2, 1]: 1 on the first feature (w . F or the MLP output), 0 on the log-odds."""
  del key
  return jnp.zeros(shape, dtype).at[0].set(1.0)


class ClassMeanModel(nn.Module):
  """`__call__(x [N], context [S] or None)` -> logits or ratings f32 [N]; kind 'lwa' or 'nlba' (module docstring).

  Attributes:
    spec: the dataset's feature sizes.
    kind: 'lwa' or 'nlba'.
    emb_dim: width of each item feature (and id) embedding.
    hidden: hidden widths of the item network F.
    dim: width D of F(x).
    nlba_hidden: widths of NLBA's classifier layers (ignored by LWA).
    use_item_ids: add a zero-initialised item id embedding to F's input.
    positive_threshold: a support item is positive iff its target >= this (0.5 on 0/1 clicks, 4 on ratings).
    global_bias: initial output bias (0 for clicks; the mean rating for ratings).
    item_bias: add a user-independent item score (off in the paper).
  """

  spec: FeatureSpec
  kind: str = "lwa"
  emb_dim: int = 16
  hidden: Sequence[int] = (64,)
  dim: int = 32
  nlba_hidden: Sequence[int] = (32,)
  use_item_ids: bool = True
  positive_threshold: float = 0.5
  global_bias: float = 0.0
  item_bias: bool = False

  def setup(self):
    self.item_features = SideFeatures(self.spec, "item", self.emb_dim)
    if self.use_item_ids:
      self.item_id = nn.Embed(self.spec.n_items, self.emb_dim, embedding_init=nn.initializers.zeros)
    self.item_hidden = [nn.Dense(w) for w in self.hidden]
    self.item_out = nn.Dense(self.dim)
    self.empty_pos = self.param("empty_pos", nn.initializers.zeros, (self.dim,), jnp.float32)
    self.empty_neg = self.param("empty_neg", nn.initializers.zeros, (self.dim,), jnp.float32)
    if self.kind == "nlba":
      self.layers = [nn.Dense(w) for w in self.nlba_hidden]
      self.from_neg = [nn.Dense(w, use_bias=False) for w in self.nlba_hidden]
      self.from_pos = [nn.Dense(w, use_bias=False) for w in self.nlba_hidden]
      self.out = nn.Dense(1, use_bias=False)
    if self.item_bias:
      self.item_score = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)
    self.head = nn.Dense(1, kernel_init=_unit_then_zero, bias_init=nn.initializers.constant(self.global_bias))

  def represent(self, x: dict) -> jax.Array:
    """F(x): f32 [N, D] from the item's side features (+ id)."""
    parts = [self.item_features(x)]
    if self.use_item_ids:
      parts.append(self.item_id(x["item"]))
    h = jnp.concatenate(parts, axis=-1)
    for layer in self.item_hidden:
      h = nn.relu(layer(h))
    return self.item_out(h)

  def _record(self, **values) -> None:
    """Sows values into 'intermediates' for tests (a no-op unless apply makes it mutable; never in init, so
    the initialised variables hold parameters only)."""
    if not self.is_initializing():
      for name, value in values.items():
        self.sow("intermediates", name, value)

  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    if x["item"].ndim != 1:
      raise ValueError(f"{self.kind} scores one task: x['item'] must be [N], got {x['item'].shape}")
    context = jax.tree_util.tree_map(lambda a: a[:0], x) if context is None else context
    support, scored = self.represent(context), self.represent(x)  # [S, D], [N, D]
    positive = context["target"] >= self.positive_threshold
    valid = context["mask"][None, :] & (context["item"][None, :] != x["item"][:, None])  # [N, S] leave-one-out
    r1, r0, n1, n0 = class_means(support, positive, valid, self.empty_pos, self.empty_neg)
    log_odds = jnp.log((n1 + 1.0) / (n0 + 1.0))
    self._record(support_features=support, features=scored)
    if self.kind == "lwa":
      w = r1 - r0
      self._record(weights=w)
      first = jnp.sum(w * scored, axis=-1)
    else:
      h = scored
      for layer, a, b in zip(self.layers, self.from_neg, self.from_pos):
        h = nn.relu(layer(h) + a(r0) + b(r1))
      first = self.out(h)[:, 0]
    out = self.head(jnp.stack([first, log_odds], axis=-1))[:, 0]
    if self.item_bias:
      out = out + self.item_score(scored)[:, 0]
    return out


def _build(
  name: str,
  spec: FeatureSpec,
  emb_dim: int,
  hidden: Sequence[int],
  dim: int,
  nlba_hidden: Sequence[int],
  use_ids: bool | None,
  use_item_ids: bool | None,
  positive_threshold: float,
  global_bias: float,
  item_bias: bool,
  adapt_regex: str,
  head_regex: str,
) -> Model:
  _, item_ids = resolve_ids(use_ids, None, use_item_ids, default=True)
  require_inputs(spec, ("item",), item_ids, name)
  if dim < 1 or emb_dim < 1:
    raise ValueError(f"{name}: dim and emb_dim must be >= 1, got dim={dim}, emb_dim={emb_dim}")
  if name == "nlba" and not nlba_hidden:
    raise ValueError("nlba: nlba_hidden must name at least one layer (its biases carry the class means)")
  module = ClassMeanModel(
    spec,
    name,
    emb_dim,
    tuple(hidden),
    dim,
    tuple(nlba_hidden),
    item_ids,
    float(positive_threshold),
    float(global_bias),
    bool(item_bias),
  )
  return from_module(name, module, adapt_regex, head_regex)


def lwa(
  spec: FeatureSpec,
  emb_dim: int = 16,
  hidden: Sequence[int] = (64,),
  dim: int = 32,
  use_ids: bool | None = None,
  use_item_ids: bool | None = None,
  positive_threshold: float = 0.5,
  global_bias: float = 0.0,
  item_bias: bool = False,
  adapt_regex: str = LWA_ADAPT_REGEX,
  head_regex: str = r"head",
) -> Model:
  """LWA as a `Model` (see `ClassMeanModel`); `use_ids` / `use_item_ids` switch the item id embedding (default
  on). The default adapt set is the head (what a MAML-style learner would step); with `none` nothing is."""
  return _build(
    "lwa",
    spec,
    emb_dim,
    hidden,
    dim,
    (),
    use_ids,
    use_item_ids,
    positive_threshold,
    global_bias,
    item_bias,
    adapt_regex,
    head_regex,
  )


def nlba(
  spec: FeatureSpec,
  emb_dim: int = 16,
  hidden: Sequence[int] = (64,),
  dim: int = 32,
  nlba_hidden: Sequence[int] = (32,),
  use_ids: bool | None = None,
  use_item_ids: bool | None = None,
  positive_threshold: float = 0.5,
  global_bias: float = 0.0,
  item_bias: bool = False,
  adapt_regex: str = NLBA_ADAPT_REGEX,
  head_regex: str = r"head",
) -> Model:
  """NLBA as a `Model` (see `ClassMeanModel`); `nlba_hidden` are the widths of its classifier layers."""
  return _build(
    "nlba",
    spec,
    emb_dim,
    hidden,
    dim,
    nlba_hidden,
    use_ids,
    use_item_ids,
    positive_threshold,
    global_bias,
    item_bias,
    adapt_regex,
    head_regex,
  )
