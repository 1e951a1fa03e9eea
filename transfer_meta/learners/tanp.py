"""TaNP's training objective (Lin et al., WWW'21) for the `tanp` model (`models/tanp.py`): no inner loop.

Per task (`task_grad`), the neural-process ELBO with the query as the target set:

    z ~ N(mu, sigma)(support + query)                          posterior sample (reparameterised, the task's key)
    loss_task = loss(model(query | support, z), y_query) + kl_weight * KL(N(support + query) || N(support))

Per batch (`batch_loss`, DESIGN.md "Learners with state or set-level losses"): the clustering loss of the
task-identity network over the soft assignments q [T, K] of the batch's tasks (from their supports),

    f_k = sum_t q_tk,   p_tk = (q_tk^2 / f_k) / sum_k' (q_tk'^2 / f_k'),   loss = cluster_weight * mean_t KL(p_t || q_t)

with P held fixed (stop-gradient, the self-training target of DEC), so the loss sharpens the assignments and
balances the clusters. Its gradient reaches the cluster centres and the encoder; the trainer adds it to the
mean task gradient once per step (`learner_state.batch_grad_fn`). Adapt is the identity: the model reads the
support when it scores (z = mu(support)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params
from transfer_meta.models.tanp import Z_KEY

AUX = ("latent", "assign")


def gaussian_kl(mu_q: jax.Array, sigma_q: jax.Array, mu_p: jax.Array, sigma_p: jax.Array) -> jax.Array:
  """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) summed over the last axis (diagonal Gaussians). [Z] -> []."""
  ratio = jnp.square(sigma_q / sigma_p)
  return 0.5 * jnp.sum(ratio + jnp.square((mu_q - mu_p) / sigma_p) - 1.0 - jnp.log(ratio), axis=-1)


def target_distribution(log_q: jax.Array, task_mask: jax.Array) -> jax.Array:
  """log p [T, K]: DEC's target p_tk ∝ q_tk^2 / f_k with cluster frequencies f_k over the real tasks only."""
  w = task_mask.astype(log_q.dtype)[:, None]
  log_f = jnp.log(jnp.sum(w * jnp.exp(log_q), axis=0) + 1e-12)  # [K]; > -inf even when no task is real
  return jax.nn.log_softmax(2.0 * log_q - log_f[None, :], axis=-1)


def cluster_loss(log_q: jax.Array, task_mask: jax.Array) -> jax.Array:
  """Mean over real tasks of KL(P || Q) with P = `target_distribution` held fixed. log_q [T, K] -> []."""
  log_p = jax.lax.stop_gradient(target_distribution(log_q, task_mask))
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)  # [T]
  w = task_mask.astype(kl.dtype)
  return jnp.sum(w * kl) / jnp.maximum(jnp.sum(w), 1.0)


def _union(support: dict, query: dict) -> dict:
  return {k: jnp.concatenate([support[k], query[k]], axis=0) for k in support}


def tanp(
  model: Model,
  kl_weight: float = 1.0,
  cluster_weight: float = 0.1,
  loss: str = "mse",
  name: str = "tanp",
) -> Learner:
  """TaNP's objective for a model exposing TaNP's latent and cluster functions (`get_model('tanp', ...)`).

  Args:
    model: the `tanp` model (possibly wrapped: residual, compute dtype); another model raises ValueError.
    kl_weight: weight of the KL between the posterior (support + query) and the prior (support) latents.
    cluster_weight: weight of the batch-level clustering loss (0 switches it off).
    loss: 'mse' or 'bce' on the query.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params, adapt the identity, with `task_outputs` (log q [K] of
    each task's support) and `batch_loss` (the clustering loss).
  """
  get_loss(loss)
  if model.aux is None or any(k not in model.aux for k in AUX):
    raise ValueError(
      f"learner 'tanp' trains TaNP's latent and task-identity networks: it needs model 'tanp', got {model.name!r}"
    )
  if kl_weight < 0 or cluster_weight < 0:
    raise ValueError(f"kl_weight={kl_weight} and cluster_weight={cluster_weight} must be >= 0")
  latent, assign = model.aux["latent"], model.aux["assign"]

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    return model_params

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del support, key
    return meta_params

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    support, query = task["support"], task["query"]
    real = jnp.any(query["mask"]).astype(jnp.float32)  # a padded task contributes exactly nothing

    def objective(params):
      mu_q, sigma_q = latent(params, _union(support, query))
      mu_p, sigma_p = latent(params, support)
      z = mu_q + sigma_q * jax.random.normal(key, mu_q.shape, mu_q.dtype)
      scores = model.apply(params, query, {**support, Z_KEY: z})
      nll = get_loss(loss)(scores, query["target"], query["mask"])
      kl = real * gaussian_kl(mu_q, sigma_q, mu_p, sigma_p)
      return nll + kl_weight * kl, {"nll": nll, "kl": kl}

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(meta_params)
    params = jax.lax.stop_gradient(meta_params)
    support_loss = inner.support_loss(model, loss, params, support)
    metrics["inner_loss_before"] = metrics["inner_loss_after"] = support_loss
    metrics["outer_loss"] = inner.query_loss(model, loss, params, query, support)  # as evaluated: z = mu(support)
    return grads, metrics

  def task_outputs(meta_params: Params, task: dict, key: jax.Array) -> dict:
    del key
    return {"log_q": assign(meta_params, task["support"])}

  def batch_loss(meta_params: Params, outputs: dict, task_mask: jax.Array) -> tuple[jax.Array, dict]:
    del meta_params
    value = cluster_loss(outputs["log_q"], task_mask)
    return cluster_weight * value, {"cluster_kl": value}

  return Learner(name, model, init, adapt, task_grad, task_outputs=task_outputs, batch_loss=batch_loss)
