"""PTUPCDR (Zhu et al., "Personalized Transfer of User Preferences for Cross-domain Recommendation", WSDM'22).

    params = {"source": MF, "target": MF, "meta": meta-network, "adapt": {"user_delta": [D], "user_bias_delta": []}}
    stage 1  source   source training rows       MF loss on the source ratings              (trainable '^source/')
    stage 2  target   target training rows       MF loss on the target ratings              (trainable '^target/')
    stage 3  meta     target rows of overlapping users, task-oriented loss: MSE of the bridged score below
                      on their target ratings; both MFs frozen                               (trainable '^meta/')
    history(u) = u's H most recent source items; e_j = v_s(j) (the frozen source item vectors)   [H, D]
    a = softmax_j(h(e_j)) over the real history (h: Dense-ReLU-Dense -> 1);  p_u = sum_j a_j e_j  [D]
    W_u = I + reshape(g(p_u), D x D),  beta_u = g_b(p_u)          (g: Dense-ReLU-Dense, the personalised bridge)
    score(u, i) = <u_s W_u + user_delta, v_t(i)> + b_s(u) + beta_u + user_bias_delta + b_t(i) + g_t
    eval     learner.adapt per task: `inner_steps` SGD steps on '^adapt/' on the target support (K = 0: none)

The history is data, not weights: built once from the source rows (`split.source_rows`) common to every seed
(refused if any of them is an evaluated query row), and closed over by the scorer as a constant. Where we differ
from the reference code: the MFs are the library's feature-aware MF with biases (the reference's has none), so
the bridge also emits a user bias offset beta_u; the bridge is a residual around the identity (the reference
starts from a random matrix); histories are capped at the H most recent items; model selection uses the
validation users only (the reference code picks its best epoch on the test set).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transfer_meta import stages
from transfer_meta.data import domain_streams
from transfer_meta.data.examples import FeatureSpec, make_examples
from transfer_meta.data.interactions import DataError
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import mse
from transfer_meta.models.base import Model
from transfer_meta.models.mf import mf
from transfer_meta.strategies.emcdr import MFVectors, mf_stages


class Bridge(nn.Module):
  """The meta-network: history item vectors e [N, H, D] and mask [N, H] -> (W [N, D, D], beta [N])."""

  dim: int
  hidden: int = 64

  @nn.compact
  def __call__(self, e: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = nn.Dense(1, name="att_out")(nn.relu(nn.Dense(self.hidden, name="att_hidden")(e)))[..., 0]
    logits = jnp.where(mask, logits, -1e30)
    a = jax.nn.softmax(logits, -1) * mask  # an empty history pools to zero
    p = jnp.einsum("nh,nhd->nd", a, e)
    h = nn.relu(nn.Dense(self.hidden, name="bridge_hidden")(p))
    w = nn.Dense(self.dim * self.dim, kernel_init=nn.initializers.zeros, name="bridge_out")(h)
    beta = nn.Dense(1, kernel_init=nn.initializers.zeros, name="bias_out")(h)[..., 0]
    return jnp.eye(self.dim) + w.reshape(*w.shape[:-1], self.dim, self.dim), beta


def ptupcdr_model(spec: FeatureSpec, history: dict, dim: int = 32, hidden: int = 64) -> Model:
  """The PTUPCDR scorer (see module).

  Args:
    spec: feature sizes.
    history: examples [U, H] of every user's source history (`make_examples` layout; mask False on padding).
    dim: both MFs' width D; hidden: the meta-network's hidden width.
  """
  parts, bridge = MFVectors(spec, dim), Bridge(dim, hidden)
  history = jax.tree.map(jnp.asarray, history)

  def bridged(params, x):
    u_s, b_s, _, _, _ = parts.apply(params["source"], x)
    hist = jax.tree.map(lambda a: a[x["user"]], history)  # [N, H, ...]
    _, _, e, _, _ = parts.apply(params["source"], hist)
    w, beta = bridge.apply(params["meta"], jax.lax.stop_gradient(e), hist["mask"])
    return jnp.einsum("nd,nde->ne", u_s, w), b_s + beta

  def init(key, x, context=None):
    k_s, k_t, k_m = jax.random.split(key, 3)
    h = history["mask"].shape[1]
    meta = bridge.init(k_m, jnp.zeros((1, h, dim), jnp.float32), jnp.ones((1, h), bool))
    adapt = {"user_delta": jnp.zeros(dim, jnp.float32), "user_bias_delta": jnp.zeros((), jnp.float32)}
    return {"source": parts.init(k_s, x), "target": parts.init(k_t, x), "meta": meta, "adapt": adapt}

  def apply(params, x, context=None):
    u, b = bridged(params, x)
    _, _, v_t, b_item, g = parts.apply(params["target"], x)
    u = u + params["adapt"]["user_delta"]
    return jnp.sum(u * v_t, -1) + b + params["adapt"]["user_bias_delta"] + b_item + g

  return Model("ptupcdr", init, apply, "^adapt/", "^adapt/")


def shared_source_history(exp, max_len: int) -> dict:
  """Examples [U, H] of each user's most recent source rows among `split.source_rows` of EVERY seed.

  Source rows are never evaluated (the cross-domain split checks its target sets hold target rows only); checked
  again here, since the history bypasses the per-seed streams: DataError if one is an evaluated query row.
  """
  common = None
  for st in exp.seeds:
    src, _ = domain_streams.domain_rows(st.split, "ptupcdr's source history")
    common = src if common is None else np.intersect1d(common, src)
    evaluated = np.concatenate([st.split.tasks[n].query_rows for n in ("valid", *st.split.scenarios)])
    leaked = np.intersect1d(src, evaluated)
    if leaked.size:
      raise DataError(f"seed {st.seed}: source history rows {leaked[:5].tolist()} are evaluated query rows")
  users = np.arange(exp.data.n_users)
  items, mask = domain_streams.history_items(exp.data, common, users, max_len)
  return make_examples(exp.feats, np.broadcast_to(users[:, None], items.shape), items, None, mask)


def bridge_objective(model: Model):
  """Task-oriented loss: MSE of the bridged score on target ratings (`(params, x, key) -> (loss, {})`)."""

  def objective(params, batch, key):
    del key
    return mse(model.apply(params, batch, None), batch["target"], batch["mask"]), {}

  return objective


def ptupcdr(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  exp=None,
  dim: int = 32,
  hidden: int = 64,
  history_len: int = 50,
  mf_steps: int | None = None,
  meta_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """Source MF, target MF, then the meta-network on overlapping users' target ratings (see module).

  Args:
    model: unused (PTUPCDR builds its own MFs of width `dim`).
    config, spec: the experiment config and feature sizes.
    exp: the `train.Experiment` (the source histories are built from its data and splits; required).
    dim, hidden: MF width and meta-network hidden width; history_len: H.
    mf_steps, meta_steps: steps of each MF stage and of the meta stage (defaults `config.num_steps`).
    batch_size, learning_rate: all stages'.
    inner_steps, inner_lr: per-task SGD on the adapt deltas over the target support.
  """
  del model
  if exp is None:
    raise ValueError("ptupcdr needs the experiment (get_strategy(..., exp=exp)) to build the source histories")
  both = ptupcdr_model(spec, shared_source_history(exp, history_len), dim, hidden)
  part = mf(spec, dim=dim)
  tx = stages.stage_optimizer(config, learning_rate)
  steps = lambda n: int(config.num_steps if n is None else n)  # noqa: E731
  grad = stages.objective_grad
  meta = stages.Stage(
    "meta", grad(bridge_objective(both)), "overlap_target", steps(meta_steps), tx, batch_size, "^meta/"
  )
  out = (*mf_stages(part, steps(mf_steps), tx, batch_size), meta)
  learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex="^adapt/", name="ptupcdr")
  return stages.Strategy("ptupcdr", out, learner)
