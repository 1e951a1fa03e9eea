"""Domain adaptation on shared side-feature representations: DANN, MMD and CORAL (strategies 'dann', 'mmd',
'coral'), never raw ids.

    params = {"net": {encoder, head}, "disc": discriminator (DANN only)}
    z = encoder(user side features ++ item side features)             [B, D]   shared by both domains
    score = head(z)                                                   rating head (Dense(1) + global bias)
    stage  align  paired source/target batches  (1 - w_t) L_source + w_t L_target + weight * A(z_s, z_t)
      A = DANN:  BCE(disc(grad_reverse(z, lam(p))), domain)    lam(p) = lambda_max * (2 / (1 + exp(-10 p)) - 1),
                 p = stage step / stage steps (the adversary is trained to tell the domains apart; the reversed
                 gradient trains the encoder to make them indistinguishable)
          MMD:   squared MMD, multi-bandwidth Gaussian kernels (`domain_adapt.mmd2`, biased estimator by default)
          CORAL: ||C_s - C_t||_F^2 / (4 D^2) (`domain_adapt.coral`)
    eval   learner.adapt per task: `inner_steps` SGD steps on the head over the target support

The target loss L_target uses the target-domain ratings of warm (non-cold) users only: the split's training
rows. References: Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR'16; Long et al., ICML'15
(DAN, MMD); Sun & Saenko, ECCV-W'16 (Deep CORAL). Where we differ from the references: they adapt image
classifiers with unlabelled target data; here the target domain has some labels (warm users), the 'features'
are user/item side features (categorical, multi-hot genres, dense text), and the head is a rating regressor.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.domain_adapt import coral, dann_lambda, grad_reverse, mmd2
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import bce, mse
from transfer_meta.models.base import Model
from transfer_meta.models.features import SideFeatures, require_inputs

METHODS = ("dann", "mmd", "coral")


class FeatureNet(nn.Module):
  """Encoder over both sides' side features (no ids) and a rating head. `encode(x) -> z [N, D]`."""

  spec: FeatureSpec
  emb_dim: int = 16
  hidden: tuple[int, ...] = (64, 32)
  global_bias: float = 3.5

  def setup(self):
    self.user = SideFeatures(self.spec, "user", self.emb_dim, "concat")
    self.item = SideFeatures(self.spec, "item", self.emb_dim, "concat")
    self.layers = [nn.Dense(h, name=f"encoder_{k}") for k, h in enumerate(self.hidden)]
    self.head = nn.Dense(1, name="head")
    self.bias = self.param("global_bias", nn.initializers.constant(self.global_bias), (), jnp.float32)

  def encode(self, x: dict) -> jax.Array:
    h = jnp.concatenate([self.user(x), self.item(x)], -1)
    for layer in self.layers:
      h = nn.relu(layer(h))
    return h

  def score(self, z: jax.Array) -> jax.Array:
    return self.head(z)[..., 0] + self.bias

  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    del context
    return self.score(self.encode(x))


class Discriminator(nn.Module):
  """DANN's domain classifier: z [N, D] -> logit [N] (target = 1)."""

  hidden: int = 32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    return nn.Dense(1, name="out")(nn.relu(nn.Dense(self.hidden, name="hidden")(z)))[..., 0]


def align_model(spec: FeatureSpec, method: str, emb_dim: int = 16, hidden: tuple[int, ...] = (64, 32)) -> Model:
  """The scorer over {"net", "disc"?}: the rating head on the shared encoding; adapt set: the head."""
  if method not in METHODS:
    raise ValueError(f"domain adaptation method={method!r}; valid methods: {list(METHODS)}")
  require_inputs(spec, ("user", "item"), False, method)
  net = FeatureNet(spec, emb_dim, tuple(hidden))

  def init(key, x, context=None):
    k_n, k_d = jax.random.split(key)
    params = {"net": net.init(k_n, x)}
    if method == "dann":
      params["disc"] = Discriminator().init(k_d, jnp.zeros((1, tuple(hidden)[-1]), jnp.float32))
    return params

  def apply(params, x, context=None):
    return net.apply(params["net"], x)

  return Model(method, init, apply, "^net/.*head", "^net/.*head")


def align_objective(
  spec: FeatureSpec,
  method: str,
  steps: int,
  weight: float = 0.1,
  target_weight: float = 0.5,
  lambda_max: float = 1.0,
  emb_dim: int = 16,
  hidden: tuple[int, ...] = (64, 32),
  unbiased: bool = False,
):
  """`(params, {"source", "target", "step"}, key) -> (loss, {"source_loss", "target_loss", "align_loss"})`."""
  if not 0.0 <= target_weight <= 1.0 or weight < 0 or lambda_max < 0:
    raise ValueError(f"{method}: want 0 <= target_weight <= 1, weight >= 0, lambda_max >= 0, got "
                     f"{target_weight}, {weight}, {lambda_max}")  # fmt: skip
  net, disc = FeatureNet(spec, emb_dim, tuple(hidden)), Discriminator()

  def objective(params, batch, key):
    del key
    s, t = batch["source"], batch["target"]
    zs = net.apply(params["net"], s, method=FeatureNet.encode)
    zt = net.apply(params["net"], t, method=FeatureNet.encode)
    ls = mse(net.apply(params["net"], zs, method=FeatureNet.score), s["target"], s["mask"])
    lt = mse(net.apply(params["net"], zt, method=FeatureNet.score), t["target"], t["mask"])
    metrics = {"source_loss": ls, "target_loss": lt}
    if method == "dann":
      lam = lambda_max * dann_lambda(batch["step"][0].astype(jnp.float32) / steps)
      z = grad_reverse(jnp.concatenate([zs, zt], 0), lam)
      label = jnp.concatenate([jnp.zeros(zs.shape[0]), jnp.ones(zt.shape[0])])
      align = bce(disc.apply(params["disc"], z), label, jnp.concatenate([s["mask"], t["mask"]]))
      metrics["lambda"] = lam
    elif method == "mmd":
      align = mmd2(zs, zt, s["mask"], t["mask"], unbiased=unbiased)
    else:
      align = coral(zs, zt, s["mask"], t["mask"])
    metrics["align_loss"] = align
    return (1.0 - target_weight) * ls + target_weight * lt + weight * align, metrics

  return objective


def _builder(method: str):
  def build(
    model: Model,
    config: ml_collections.ConfigDict,
    spec: FeatureSpec,
    emb_dim: int = 16,
    hidden: tuple[int, ...] = (64, 32),
    weight: float = 0.1,
    target_weight: float = 0.5,
    lambda_max: float = 1.0,
    unbiased: bool = False,
    steps: int | None = None,
    batch_size: int = 256,
    learning_rate: float | None = None,
    inner_steps: int = 1,
    inner_lr: float = 0.01,
  ) -> stages.Strategy:
    """One alignment stage on paired source/target batches, then per-task head fine-tuning (see module).

    Args:
      model: unused (the feature encoder is built here, without ids).
      config, spec: the experiment config and feature sizes.
      emb_dim, hidden: side-feature embedding width and the encoder's layer widths (z = the last).
      weight: the alignment term's weight; target_weight: of the target rating loss (vs the source's).
      lambda_max: DANN's final reversal strength; unbiased: MMD's U-statistic.
      steps, batch_size, learning_rate: the stage's (batch_size ratings of EACH domain per step).
      inner_steps, inner_lr: per-task SGD on the head over the target support.
    """
    del model
    n = int(config.num_steps if steps is None else steps)
    both = align_model(spec, method, emb_dim, hidden)
    objective = align_objective(spec, method, n, weight, target_weight, lambda_max, emb_dim, hidden, unbiased)
    stage = stages.Stage(
      "align", stages.objective_grad(objective), "domain_pairs", n, stages.stage_optimizer(config, learning_rate),
      batch_size,
    )  # fmt: skip
    learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=both.adapt_regex, name=method)
    return stages.Strategy(method, (stage,), learner)

  build.__name__ = method
  return build


dann, mmd, coral_strategy = _builder("dann"), _builder("mmd"), _builder("coral")
