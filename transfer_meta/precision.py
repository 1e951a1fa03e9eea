"""Mixed precision: compute a model in bf16 (or f16) while its (meta-)parameters stay f32.

    model = with_compute_dtype(get_model("melu", spec), jnp.bfloat16)
    learner = get_learner("maml", model, ...)     # meta_params, optimiser state, gradients: f32

Inside `apply` the float parameter leaves and the float example fields are cast to the compute dtype; ids,
masks and other integer/bool fields pass through; the scores come back as f32, so losses and metrics reduce
in f32. The cast is differentiable (its transpose casts back), so gradients reach the f32 parameters as f32,
and the outer optimiser updates f32 master weights. `init` is untouched: parameters are created in f32.

Layers that cast an input to f32 themselves compute in f32 from there on (jnp type promotion of bf16 with f32
is f32), so the saving is only as large as the part of the network that stays in the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transfer_meta.models.base import Model


def cast_floats(tree, dtype):
  """`tree` with every floating-point array leaf cast to `dtype` (ints, bools, None left alone)."""

  def cast(x):
    return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast, tree)


def with_compute_dtype(model: Model, dtype) -> Model:
  """`model` whose `apply` computes in `dtype` with f32 parameters and returns f32 scores.

  Args:
    model: any `Model`.
    dtype: the compute dtype (jnp.bfloat16, jnp.float16, or jnp.float32 for a no-op wrapper).
  Returns:
    A `Model` with the same name, `init`, `adapt_regex` and `head_regex`; `apply(params, x, context)`
    casts the float leaves of `params`, `x` and `context` to `dtype` and returns f32 scores [N].
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"compute dtype must be a floating-point dtype (e.g. bfloat16), got {dtype}")

  def apply(params, x, context=None):
    scores = model.apply(cast_floats(params, dtype), cast_floats(x, dtype), cast_floats(context, dtype))
    return scores.astype(jnp.float32)

  return model._replace(apply=apply)
