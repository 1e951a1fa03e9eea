"""Masked losses: every reduction over interactions happens here, honouring the mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` where `mask` is True; 0 when nothing is masked in. Shapes equal."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mse(scores: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked mean squared error. scores, target f32 [N]; mask bool [N] -> scalar."""
  return masked_mean(jnp.square(scores - target), mask)


def bce(logits: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked binary cross-entropy on logits, target in {0, 1}. [N] -> scalar."""
  losses = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return masked_mean(losses, mask)


LOSSES = {"mse": mse, "bce": bce}


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
  return LOSSES[name]


def examples_loss(model_apply, params, x, context, loss_name: str = "mse") -> jax.Array:
  """Loss of `params` on examples `x` (with `context` for context-reading models)."""
  return get_loss(loss_name)(model_apply(params, x, context), x["target"], x["mask"])
