"""Score-level fusion of two models: each pretrained on every training interaction, fused by weights fitted on
validation in closed form.

    params = {"a": model A (the experiment's), "b": model B (`other_name`), "fusion": {"coef": f32 [3]}}
    score  = coef[0] + coef[1] * A(x) + coef[2] * B(x)          (both parts fine-tuned per task first)
    stage 1  a   interaction minibatches   supervised loss of A alone (trainable '^a/')
    stage 2  b   interaction minibatches   supervised loss of B alone (trainable '^b/')
    fit          validation tasks          coef by least squares over every validation query rating:
                   mode 'weight': coef = (0, w, 1 - w), w = argmin sum (w sA + (1 - w) sB - y)^2 clipped to [0, 1]
                   mode 'stack':  coef = argmin || [1, sA, sB] coef - y ||^2 (linear stacking)

The last stage's parameters are selected on validation (with the initial coef (0, 1/2, 1/2)); the fit then uses
the same validation tasks, adapted exactly as at evaluation (the learner's `adapt`). Nothing from the test
scenarios is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import mse
from transfer_meta.models import get_model
from transfer_meta.models.base import Model

MODES = ("weight", "stack")


def fused_model(a: Model, b: Model) -> Model:
  """One Model over {"a", "b", "fusion"} scoring coef[0] + coef[1] * a + coef[2] * b; adapt sets: both parts'."""

  def init(key, x, context=None):
    k_a, k_b = jax.random.split(key)
    coef = jnp.array([0.0, 0.5, 0.5], jnp.float32)
    return {"a": a.init(k_a, x, context), "b": b.init(k_b, x, context), "fusion": {"coef": coef}}

  def apply(params, x, context=None):
    coef = params["fusion"]["coef"]
    return coef[0] + coef[1] * a.apply(params["a"], x, context) + coef[2] * b.apply(params["b"], x, context)

  adapt = f"^a/.*(?:{a.adapt_regex})|^b/.*(?:{b.adapt_regex})"
  head = f"^a/.*(?:{a.head_regex})|^b/.*(?:{b.head_regex})"
  return Model(f"{a.name}+{b.name}", init, apply, adapt, head)


def fit_coef(sa: np.ndarray, sb: np.ndarray, y: np.ndarray, mode: str) -> np.ndarray:
  """Fusion coefficients [3] from the two models' scores sa, sb [M] and the ratings y [M] (see module)."""
  sa, sb, y = (np.asarray(v, np.float64) for v in (sa, sb, y))
  if mode == "stack":
    design = np.stack([np.ones_like(sa), sa, sb], axis=1)
    return np.linalg.lstsq(design, y, rcond=None)[0].astype(np.float32)
  if mode == "weight":
    d = sa - sb
    w = float(np.clip(np.dot(d, y - sb) / max(np.dot(d, d), 1e-12), 0.0, 1.0))
    return np.array([0.0, w, 1.0 - w], np.float32)
  raise ValueError(f"fusion: mode={mode!r}; valid modes: {list(MODES)}")


def _part_objective(part: Model, name: str):
  def objective(params, batch, key):
    del key
    return mse(part.apply(params[name], batch, None), batch["target"], batch["mask"]), {}

  return objective


def fusion(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  other_name: str = "mf",
  other: dict | None = None,
  mode: str = "stack",
  steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """Two pretrained models fused by coefficients fitted on validation.

  Args:
    model: model A (the experiment's); other_name, other: model B and its kwargs.
    config, spec: the experiment config and feature sizes.
    mode: 'weight' (a convex weight) or 'stack' (intercept + two slopes).
    steps: pretraining steps of each model (default `config.num_steps`).
    batch_size, learning_rate: of both pretraining stages.
    inner_steps, inner_lr: per-task fine-tuning of both parts' adapt sets.
  """
  if mode not in MODES:
    raise ValueError(f"fusion: mode={mode!r}; valid modes: {list(MODES)}")
  b = get_model(other_name, spec, **(other or {}))
  both = fused_model(model, b)
  tx = stages.stage_optimizer(config, learning_rate)
  n = int(config.num_steps if steps is None else steps)
  grad = lambda part, name: stages.objective_grad(_part_objective(part, name))
  out = (
    stages.Stage("a", grad(model, "a"), "interactions", n, tx, batch_size, "^a/"),
    stages.Stage("b", grad(b, "b"), "interactions", n, tx, batch_size, "^b/"),
  )
  learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=both.adapt_regex, name="fusion")

  def part_scores(params, support, query, key):
    adapted = learner.adapt(params, support, key)
    return model.apply(adapted["a"], query, support), b.apply(adapted["b"], query, support)

  scores = jax.jit(jax.vmap(part_scores, in_axes=(None, 0, 0, 0)))

  def fit(params, valid_batches, key):
    sa, sb, y = [], [], []
    for batch in valid_batches:
      keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(batch["task_id"])
      a_s, b_s = jax.device_get(scores(params, batch["support"], batch["query"], keys))
      real = np.asarray(batch["query"]["mask"]) & np.asarray(batch["task_mask"])[:, None]
      sa.append(a_s[real]), sb.append(b_s[real]), y.append(np.asarray(batch["query"]["target"])[real])
    coef = fit_coef(np.concatenate(sa), np.concatenate(sb), np.concatenate(y), mode)
    return {**params, "fusion": {"coef": jnp.asarray(coef)}}

  describe = lambda params: {"coef": [float(c) for c in np.asarray(params["fusion"]["coef"])], "mode": mode}
  return stages.Strategy("fusion", out, learner, describe, fit)
