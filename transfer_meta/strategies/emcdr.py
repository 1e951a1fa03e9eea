"""Cross-domain cold start by mapping user vectors (EMCDR) and by shared user factors (CMF).

EMCDR (Man et al., "Cross-Domain Recommendation: An Embedding and Mapping Approach", IJCAI'17):

    params = {"source": MF, "target": MF, "map": mapping, "adapt": {"user_delta": [D], "user_bias_delta": []}}
    stage 1  source   source training rows     MF loss on the source ratings                  (trainable '^source/')
    stage 2  target   target training rows     MF loss on the target ratings                  (trainable '^target/')
    stage 3  map      overlapping users        mean_u || f([u_s, b_s]) - [u_t, b_t] ||^2      (trainable '^map/')
    score(u, i) = <f(u_s)[:D] + user_delta, v_t(i)> + f(u_s)[D] + user_bias_delta + b_t(i) + g_t
    eval     learner.adapt per task: `inner_steps` SGD steps on '^adapt/' on the target support (K = 0: none)

f is 'linear' (W [D+1, D+1] from the identity, plus a bias) or 'mlp' (one tanh hidden layer, as the paper's
MLP). Every user is scored through the mapping, so a cold user's target vector is f(their source vector); the
target MF's own user vectors are only the regression targets. Where we differ from the reference: the MFs are
the library's feature-aware MF (ids + side features, with biases), and the user bias is mapped together with
the vector (the paper's MF has no biases); the mapping is fitted with the experiment's optimiser on minibatches
instead of full-batch gradient descent; the paper's BPR variant is not implemented.

CMF (Singh & Gordon, "Relational Learning via Collective Matrix Factorization", KDD'08): one MF whose user
factors are shared by the two rating matrices (items of the two domains have their own rows), fitted in one
stage on paired source/target batches with loss alpha * L_source + (1 - alpha) * L_target (the paper's
weighted sum of the two reconstruction losses; squared loss, the experiment's optimiser instead of alternating
Newton steps). A cold user's factors come from their source ratings alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import mse
from transfer_meta.models.base import Model
from transfer_meta.models.mf import MF, mf

MAPPINGS = ("linear", "mlp")


class MFVectors(MF):
  """The MF's parts, with MF's exact parameter tree: `(u [N, D], b_user [N], v [N, D], b_item [N], g [])`."""

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None):
    del context
    u, b_user = self._side(x, "user")
    v, b_item = self._side(x, "item")
    g = self.param("global_bias", nn.initializers.constant(self.global_bias), (), jnp.float32)
    return u, b_user, v, b_item, g


class Mapping(nn.Module):
  """EMCDR's f: [N, D + 1] -> [N, D + 1]; 'linear' starts at the identity, 'mlp' has one tanh hidden layer."""

  kind: str = "linear"
  hidden: int = 64

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    width = z.shape[-1]
    if self.kind == "linear":
      return nn.Dense(width, kernel_init=lambda k, s, d=jnp.float32: jnp.eye(*s, dtype=d), name="linear")(z)
    if self.kind == "mlp":
      return nn.Dense(width, name="out")(jnp.tanh(nn.Dense(self.hidden, name="hidden")(z)))
    raise ValueError(f"EMCDR mapping={self.kind!r}; valid mappings: {list(MAPPINGS)}")


def user_part(u: jax.Array, b: jax.Array) -> jax.Array:
  """[N, D + 1]: a user's vector with its bias as the last column (what the mapping maps)."""
  return jnp.concatenate([u, b[..., None]], -1)


def emcdr_model(spec: FeatureSpec, dim: int = 32, mapping: str = "linear", hidden: int = 64) -> Model:
  """The EMCDR scorer over {"source", "target", "map", "adapt"} (see module); adapt set '^adapt/'."""
  if mapping not in MAPPINGS:
    raise ValueError(f"EMCDR mapping={mapping!r}; valid mappings: {list(MAPPINGS)}")
  parts, f = MFVectors(spec, dim), Mapping(mapping, hidden)

  def init(key, x, context=None):
    k_s, k_t, k_m = jax.random.split(key, 3)
    z = jnp.zeros((1, dim + 1), jnp.float32)
    adapt = {"user_delta": jnp.zeros(dim, jnp.float32), "user_bias_delta": jnp.zeros((), jnp.float32)}
    return {"source": parts.init(k_s, x), "target": parts.init(k_t, x), "map": f.init(k_m, z), "adapt": adapt}

  def apply(params, x, context=None):
    u_s, b_s, _, _, _ = parts.apply(params["source"], x)
    _, _, v_t, b_item, g = parts.apply(params["target"], x)
    z = f.apply(params["map"], user_part(u_s, b_s))
    u = z[..., :dim] + params["adapt"]["user_delta"]
    return jnp.sum(u * v_t, -1) + z[..., dim] + params["adapt"]["user_bias_delta"] + b_item + g

  return Model(f"emcdr_{mapping}", init, apply, "^adapt/", "^adapt/")


def part_objective(part: Model, name: str):
  """MSE of the MF under params[name] on an interaction minibatch: `(params, x, key) -> (loss, {})`."""

  def objective(params, batch, key):
    del key
    return mse(part.apply(params[name], batch, None), batch["target"], batch["mask"]), {}

  return objective


def mf_stages(part: Model, steps: int, tx, batch_size: int) -> tuple[stages.Stage, stages.Stage]:
  """The source MF on every source row ('source_interactions', '^source/'), then the target MF on the target
  training rows ('interactions', '^target/'): stages 1-2 of EMCDR and PTUPCDR."""
  grad = lambda name: stages.objective_grad(part_objective(part, name))  # noqa: E731
  return (
    stages.Stage("source", grad("source"), "source_interactions", steps, tx, batch_size, "^source/"),
    stages.Stage("target", grad("target"), "interactions", steps, tx, batch_size, "^target/"),
  )


def mapping_objective(spec: FeatureSpec, dim: int, mapping: str, hidden: int):
  """EMCDR's stage 3: masked mean over users of ||f([u_s, b_s]) - [u_t, b_t]||^2 (targets under stop_gradient)."""
  parts, f = MFVectors(spec, dim), Mapping(mapping, hidden)

  def objective(params, batch, key):
    del key
    u_s, b_s, *_ = parts.apply(params["source"], batch)
    u_t, b_t, *_ = parts.apply(params["target"], batch)
    z = f.apply(params["map"], user_part(u_s, b_s))
    err = jnp.sum(jnp.square(z - jax.lax.stop_gradient(user_part(u_t, b_t))), -1)
    m = batch["mask"].astype(jnp.float32)
    return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0), {}

  return objective


def emcdr(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  dim: int = 32,
  mapping: str = "linear",
  hidden: int = 64,
  mf_steps: int | None = None,
  map_steps: int | None = None,
  batch_size: int = 256,
  map_batch_size: int = 64,
  learning_rate: float | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """Source MF, target MF, then the user-vector mapping on overlapping users (see module).

  Args:
    model: unused (EMCDR builds its own two MFs of width `dim`).
    config, spec: the experiment config (optimiser, `num_steps`) and feature sizes.
    mapping, hidden: 'linear' or 'mlp' and the MLP's hidden width.
    mf_steps: steps of each MF stage; map_steps: of the mapping stage (defaults `config.num_steps`).
    batch_size: ratings per MF step and seed; map_batch_size: overlapping users per mapping step.
    learning_rate: all stages' (default the config optimiser's).
    inner_steps, inner_lr: per-task SGD on the adapt deltas over the target support.
  """
  del model
  both = emcdr_model(spec, dim, mapping, hidden)
  part = mf(spec, dim=dim)
  tx = stages.stage_optimizer(config, learning_rate)
  steps = lambda n: int(config.num_steps if n is None else n)  # noqa: E731
  grad = stages.objective_grad
  out = (
    *mf_stages(part, steps(mf_steps), tx, batch_size),
    stages.Stage(
      "map", grad(mapping_objective(spec, dim, mapping, hidden)), "overlap_users", steps(map_steps), tx,
      map_batch_size, "^map/",
    ),
  )  # fmt: skip
  learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex="^adapt/", name="emcdr")
  return stages.Strategy("emcdr", out, learner)


def cmf_objective(part: Model, alpha: float):
  """`(params, {"source": x, "target": x}, key) -> (alpha L_s + (1 - alpha) L_t, {"source_loss", "target_loss"})`."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"CMF: alpha={alpha!r} must be in [0, 1] (the weight of the source matrix)")

  def objective(params, batch, key):
    del key
    s, t = batch["source"], batch["target"]
    ls = mse(part.apply(params, s, None), s["target"], s["mask"])
    lt = mse(part.apply(params, t, None), t["target"], t["mask"])
    return alpha * ls + (1.0 - alpha) * lt, {"source_loss": ls, "target_loss": lt}

  return objective


def cmf(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  dim: int = 32,
  alpha: float = 0.5,
  steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """One MF with user factors shared by both domains, fitted on paired batches (see module).

  Args:
    model: unused (CMF builds its MF of width `dim`).
    config, spec: the experiment config and feature sizes.
    alpha: weight of the source matrix's loss (1 - alpha: the target's).
    steps, batch_size, learning_rate: the one stage's (batch_size ratings of EACH domain per step).
    inner_steps, inner_lr: per-task fine-tuning of the user deltas on the target support.
  """
  del model
  part = mf(spec, dim=dim)
  stage = stages.Stage(
    "cmf", stages.objective_grad(cmf_objective(part, alpha)), "domain_pairs",
    int(config.num_steps if steps is None else steps), stages.stage_optimizer(config, learning_rate), batch_size,
  )  # fmt: skip
  learner = finetune(part, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=part.adapt_regex, name="cmf")
  return stages.Strategy("cmf", (stage,), learner)
