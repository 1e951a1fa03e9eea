"""Residual scoring: a model predicts the offset from a reference scorer, so learning starts where it ends.

    score(x | support) = x["prior"] + offset(support) + model(x | support)
    offset(support)    = sum over support rows of (target - prior) / (support size + lam)   (kind 'item_user_offset')

`x["prior"]` is the reference score of each row, computed from training rows only
(`baselines.reference_prior`: the global mean, or the shrunk item mean); the support offset is the task
user's residual, computed inside `apply` from the context (the task's support, see `models/base.py`), never
from the query. With the wrapped model's output bias at 0, an untrained network scores exactly the
reference baseline of the same name (`global_mean`, `item_mean`, `item_user_offset` in `baselines.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transfer_meta.data.tasks import PRIOR
from transfer_meta.models.base import Model

# name -> whether the task's support offset is added on top of the per-row prior.
KINDS = {"global_mean": False, "item_mean": False, "item_user_offset": True}


def check_kind(kind: str) -> str:
  if kind not in KINDS:
    raise ValueError(f"unknown residual reference {kind!r}; valid: {sorted(KINDS)} (or '' for none)")
  return kind


def support_offset(context: dict | None, lam: float) -> jax.Array:
  """Scalar: the support's summed residual (target - prior) over (its size + lam); 0 without a context."""
  if context is None:
    return jnp.zeros((), jnp.float32)
  mask = context["mask"].astype(jnp.float32)
  residual = (context["target"].astype(jnp.float32) - context[PRIOR].astype(jnp.float32)) * mask
  return jnp.sum(residual) / (jnp.sum(mask) + lam)


def with_residual(model: Model, kind: str, lam: float = 5.0) -> Model:
  """`model` scoring the offset from the reference `kind` (a key of `KINDS`).

  Args:
    model: any `Model`; its output is added to the reference (start it at 0: output bias 0).
    kind: 'global_mean', 'item_mean' or 'item_user_offset' (the prior's meaning is fixed by the data).
    lam: shrinkage of the support offset (the `lam` of `baselines.py`), >= 0; 'item_user_offset' only.
  Returns:
    A `Model` with the same name, init and adapt sets; apply(params, x [N], context [S]) -> f32 [N]. Examples
    must carry key 'prior' (task data built with a prior); otherwise apply raises ValueError.
  """
  offset = KINDS[check_kind(kind)]
  if lam < 0:
    raise ValueError(f"residual lam={lam} must be >= 0")

  def apply(params, x, context=None):
    if PRIOR not in x or (offset and context is not None and PRIOR not in context):
      raise ValueError(
        f"residual model ({kind}) needs examples with key {PRIOR!r}, the reference score per row: build the "
        "task data with a prior (config.residual does this in the trainer)"
      )
    scores = model.apply(params, x, context).astype(jnp.float32) + x[PRIOR].astype(jnp.float32)
    return scores + support_offset(context, lam) if offset else scores

  return model._replace(apply=apply)
