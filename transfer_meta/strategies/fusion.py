"""Score-level fusion of two models: each pretrained on every training interaction, fused by weights fitted on
validation in closed form.

    params = {"a": model A (the experiment's), "b": model B (`other_name`), "fusion": {"coef": [3], "gate": [2]}}
    score  = coef[0] + coef[1] * A(x) + coef[2] * B(x)          modes 'weight', 'stack' (parts fine-tuned first)
           = w(n) * A(x) + (1 - w(n)) * B(x),  w(n) = sigmoid(gate[0] + gate[1] * log(1 + n))    mode 'gate'
             (n: the task's support size, so the weight shifts between the models as a user rates more)
    stage 1  a   interaction minibatches   supervised loss of A alone (trainable '^a/')
    stage 2  b   interaction minibatches   supervised loss of B alone (trainable '^b/')
    fit          validation tasks          coef by least squares over every validation query rating:
                   mode 'weight': coef = (0, w, 1 - w), w = argmin sum (w sA + (1 - w) sB - y)^2 clipped to [0, 1]
                   mode 'stack':  coef = argmin || [1, sA, sB] coef - y ||^2 (linear stacking)
                   mode 'gate':   gate = argmin sum (w(n) sA + (1 - w(n)) sB - y)^2 (Levenberg-Marquardt, 2 numbers)

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

MODES = ("weight", "stack", "gate")


def gate_weight(gate, n):
  """w(n) = sigmoid(gate[0] + gate[1] * log(1 + n)): model A's weight for a task with n support ratings."""
  return jax.nn.sigmoid(gate[0] + gate[1] * jnp.log1p(n))


def fused_model(a: Model, b: Model, mode: str = "stack") -> Model:
  """One Model over {"a", "b", "fusion"} fusing the two parts' scores (see module); adapt sets: both parts'."""

  def init(key, x, context=None):
    k_a, k_b = jax.random.split(key)
    fusion = {"coef": jnp.array([0.0, 0.5, 0.5], jnp.float32), "gate": jnp.zeros(2, jnp.float32)}
    return {"a": a.init(k_a, x, context), "b": b.init(k_b, x, context), "fusion": fusion}

  def apply(params, x, context=None):
    sa, sb = a.apply(params["a"], x, context), b.apply(params["b"], x, context)
    if mode == "gate":
      n = jnp.sum(context["mask"].astype(jnp.float32)) if context is not None else jnp.float32(0.0)
      w = gate_weight(params["fusion"]["gate"], n)
      return w * sa + (1.0 - w) * sb
    coef = params["fusion"]["coef"]
    return coef[0] + coef[1] * sa + coef[2] * sb

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
  raise ValueError(f"fusion: mode={mode!r}; valid modes: {list(MODES)} ('gate' is fitted by fit_gate)")


def fit_gate(sa: np.ndarray, sb: np.ndarray, y: np.ndarray, n: np.ndarray, iters: int = 100) -> np.ndarray:
  """The gate [2] minimising sum (w(n) sA + (1 - w(n)) sB - y)^2 (`gate_weight`), by Levenberg-Marquardt from 0.

  Args:
    sa, sb, y: f [M] the two models' scores and the ratings; n: [M] the support size of each entry's task.
  """
  sa, sb, y, z = (np.asarray(v, np.float64) for v in (sa, sb, y, np.log1p(np.asarray(n, np.float64))))
  d, g, lam = sa - sb, np.zeros(2), 1e-3

  def residual(g):
    return 1.0 / (1.0 + np.exp(-(g[0] + g[1] * z))) * d + sb - y

  loss = np.sum(residual(g) ** 2)
  for _ in range(iters):
    w = 1.0 / (1.0 + np.exp(-(g[0] + g[1] * z)))
    jac = (d * w * (1.0 - w))[:, None] * np.stack([np.ones_like(z), z], axis=1)
    step = np.linalg.solve(jac.T @ jac + lam * np.eye(2), -jac.T @ residual(g))
    new_loss = np.sum(residual(g + step) ** 2)
    if new_loss < loss:
      g, loss, lam = g + step, new_loss, lam / 10.0
    else:
      lam *= 10.0
  return g.astype(np.float32)


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
    mode: 'weight' (a convex weight), 'stack' (intercept + two slopes) or 'gate' (weight by support size).
    steps: pretraining steps of each model (default `config.num_steps`).
    batch_size, learning_rate: of both pretraining stages.
    inner_steps, inner_lr: per-task fine-tuning of both parts' adapt sets.
  """
  if mode not in MODES:
    raise ValueError(f"fusion: mode={mode!r}; valid modes: {list(MODES)}")
  b = get_model(other_name, spec, **(other or {}))
  both = fused_model(model, b, mode)
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
    sa, sb, y, n = [], [], [], []
    for batch in valid_batches:
      keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(batch["task_id"])
      a_s, b_s = jax.device_get(scores(params, batch["support"], batch["query"], keys))
      real = np.asarray(batch["query"]["mask"]) & np.asarray(batch["task_mask"])[:, None]
      sizes = np.broadcast_to(np.asarray(batch["support"]["mask"]).sum(axis=1)[:, None], real.shape)
      sa.append(a_s[real]), sb.append(b_s[real]), y.append(np.asarray(batch["query"]["target"])[real])
      n.append(sizes[real])
    sa, sb, y, n = (np.concatenate(v) for v in (sa, sb, y, n))
    fusion = dict(params["fusion"])
    if mode == "gate":
      fusion["gate"] = jnp.asarray(fit_gate(sa, sb, y, n))
    else:
      fusion["coef"] = jnp.asarray(fit_coef(sa, sb, y, mode))
    return {**params, "fusion": fusion}

  def describe(params):
    return {k: [float(c) for c in np.asarray(v)] for k, v in params["fusion"].items()} | {"mode": mode}

  return stages.Strategy("fusion", out, learner, describe, fit)
