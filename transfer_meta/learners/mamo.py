"""MAMO (Dong et al., "MAMO: Memory-Augmented Meta-Optimization for Cold-start Recommendation", KDD'20).

Two memories, read by attention over a profile of the task's user, personalise MAML's starting point; they are
written by moving averages after each outer step and live in the training state as non-differentiable state
(`learner_state`; checkpointed with the parameters, resume bit-identical):

    p_u  = masked mean over support rows of sum_f E[f, user_cat_f]      profile embedding (learned) [P]
    k_u  = p_u W                                                        attention key (W learned, created once) [P]
    a_u  = softmax_k(cos(k_u, M_P[k]) / temperature)                     attention over the K slots [K]
    phi_u = phi - tau * a_u M_theta + a_u M_UI                           personalised init of the adapted leaves
    theta_u = local update: inner_steps SGD steps from phi_u on the support (MAML's inner loop)
    outer loss = loss(theta_u on the query); d/d(phi, E, W) as first-order MAML (the paper's global update;
                 `first_order=False` differentiates through the local update)

    memory writes, after the step, averaged over the batch's real tasks t (mean_t):
    M_P     <- beta  * mean_t(a_t (x) k_t)        + (1 - beta)  * M_P        profile memory [K, P]
    M_theta <- alpha * mean_t(a_t (x) grad_t)     + (1 - alpha) * M_theta    feature-specific memory [K, |adapted|]
    M_UI    <- gamma * mean_t(a_t (x) delta_t)    + (1 - gamma) * M_UI       task-specific memory [K, |preference|]

grad_t is the support-loss gradient at phi_u (the adapted leaves, flattened); delta_t = theta_u - phi on the
preference leaves (`pref_regex`, default the model's head), the fast weights the local update arrived at. M_UI is
kept zero-only on the preference leaves: its read is added there, M_theta's on every adapted leaf.

Where we differ from the paper and the reference code (RecBole-MetaRec's MAMO), and why:
- The attention projection W is a parameter created once in `init` and trained; the reference re-creates its
  attention layer with random weights at every call, so its reads are noise.
- Everything is a pure function of explicit state: no saved meta-weights aliasing live parameters (the
  reference's copies alias, so fast weights leak across tasks).
- Writes use the mean over the batch's tasks, once per outer step (vectorised); with one task per batch this is
  the paper's per-user rule exactly. Padded tasks never write; a batch with no real task leaves the memories.
- The memory cube stores the preference leaves' fast-weight offsets from the global init (flattened; a cube
  [K, d, d] for a d x d preference matrix) and its read is added to the global init rather than replacing it, so
  any backbone's output layer can serve as the preference layer; at step 0 (zero memories) MAMO starts at
  first-order MAML with the MeLU adapt set.
- The profile is a learned embedding of the user's categorical features, looked up in one table of
  `profile_vocab` rows per feature (a learner sees no vocabulary sizes); a value >= profile_vocab shares the
  last row and is counted in the 'profile_overflow' metric (0 at every logged step of the ML-100K run with the
  default 1024). User multi-hot and dense features do not enter the profile (ML-100K has none); a dataset
  without user categorical features gets a zero profile, so uniform attention: one shared memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import get_loss
from transfer_meta.models.base import Model, Params, adapt_mask


def cosine(k: jax.Array, memory: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Cosine similarity of k [P] with every row of memory [K, P] -> [K]; finite (and 0) for a zero vector."""
  norm = lambda v: jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + eps)  # noqa: E731 (smooth at 0: no NaN gradient)
  return (memory @ k) / (norm(memory) * norm(k))


def moving_average(memory: jax.Array, att: jax.Array, values: jax.Array, task_mask: jax.Array, rate: float):
  """One memory write: rate * mean_t(att_t (x) values_t) + (1 - rate) * memory over the real tasks t.

  Args:
    memory: [K, D]. att: [T, K] attention of each task. values: [T, D] what each task writes.
    task_mask: bool [T]. rate: the write rate in [0, 1].
  Returns:
    [K, D] the written memory; `memory` unchanged when no task is real.
  """
  w = task_mask.astype(memory.dtype)
  n = jnp.sum(w)
  outer = jnp.einsum("t,tk,td->kd", w, att, values) / jnp.maximum(n, 1.0)
  return jnp.where(n > 0, rate * outer + (1.0 - rate) * memory, memory)


def mamo(
  model: Model,
  n_slots: int = 3,
  profile_dim: int = 16,
  profile_vocab: int = 1024,
  max_profile_features: int = 8,
  temperature: float = 1.0,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  first_order: bool = True,
  tau: float = 0.1,
  alpha: float = 0.1,
  beta: float = 0.05,
  gamma: float = 0.1,
  adapt_regex: str | None = None,
  pref_regex: str | None = None,
  loss: str = "mse",
  name: str = "mamo",
) -> Learner:
  """MAMO (see the module docstring).

  Args:
    model: the backbone.
    n_slots: K, memory slots.
    profile_dim: P, width of the profile embedding and of the profile memory.
    profile_vocab, max_profile_features: rows per user categorical feature in the profile table, and the most
      features it holds (more raise ValueError at trace time).
    temperature: the attention's softmax temperature over cosine similarities (1: the paper's softmax of cos).
    inner_steps, inner_lr: the local update (SGD steps on the support).
    first_order: the paper's first-order global update (True); False differentiates through the local update.
    tau: scale of the feature-specific bias (phi_u = phi - tau * a M_theta + ...).
    alpha, beta, gamma: write rates of M_theta, M_P and M_UI, in [0, 1].
    adapt_regex: leaves of the local update (default the model's adapt set, MeLU's decision layers).
    pref_regex: the preference leaves of the task-specific memory (default the model's head); must be adapted.
    loss: 'mse' or 'bce'.
    name: the learner's name in tables.
  Returns:
    A stateful `Learner`: meta_params {'params', 'profile': {'table', 'key'}}, state {'profile' [K, P],
    'feature' [K, |adapted|], 'task' [K, |preference|]}; adapt/task_grad/task_outputs take the state last.
  """
  inner.check_steps(inner_steps)
  get_loss(loss)
  for label, rate in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    if not 0.0 <= rate <= 1.0:
      raise ValueError(f"mamo: write rate {label}={rate} must be in [0, 1]")
  if n_slots < 1 or profile_dim < 1 or profile_vocab < 1 or max_profile_features < 1 or temperature <= 0:
    raise ValueError("mamo: n_slots, profile_dim, profile_vocab, max_profile_features must be >= 1, temperature > 0")
  adapt_re = model.adapt_regex if adapt_regex is None else adapt_regex
  pref_re = model.head_regex if pref_regex is None else pref_regex

  def masks(params: Params) -> tuple[Params, Params]:
    adapt = adapt_mask(params, adapt_re)
    pref = jax.tree.map(lambda a, p: a and p, adapt, adapt_mask(params, pref_re))
    if not any(jax.tree.leaves(pref)):
      raise ValueError(f"mamo: pref_regex {pref_re!r} selects no adapted leaf (adapt_regex {adapt_re!r})")
    return adapt, pref

  def flat(params: Params, mask: Params) -> tuple[jax.Array, object]:
    return ravel_pytree(inner.partition(params, mask)[0])

  def init(key: jax.Array, model_params: Params) -> dict:
    masks(model_params)  # a regex matching nothing fails here
    k_table, k_key = jax.random.split(key)
    table = 0.1 * jax.random.normal(k_table, (max_profile_features * profile_vocab, profile_dim))
    w = jnp.eye(profile_dim) + 0.1 * jax.random.normal(k_key, (profile_dim, profile_dim))
    return {"params": model_params, "profile": {"table": table, "key": w}}

  def init_state(key: jax.Array, meta_params: dict) -> dict:
    adapt, pref = masks(meta_params["params"])
    n_adapt, n_pref = flat(meta_params["params"], adapt)[0].size, flat(meta_params["params"], pref)[0].size
    return {
      "profile": jax.random.normal(key, (n_slots, profile_dim)),
      "feature": jnp.zeros((n_slots, n_adapt)),
      "task": jnp.zeros((n_slots, n_pref)),
    }

  def attention(meta_params: dict, support: dict, state: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(key k_u [P], attention a_u [K], overflow fraction []) of the task's user."""
    cat = support["user_cat"]  # [S, Fu]
    if cat.shape[-1] > max_profile_features:
      raise ValueError(f"mamo: {cat.shape[-1]} user categorical features > max_profile_features={max_profile_features}")
    rows = jnp.arange(cat.shape[-1]) * profile_vocab + jnp.clip(cat, 0, profile_vocab - 1)
    per_row = jnp.sum(meta_params["profile"]["table"][rows], axis=-2)  # [S, P]
    m = support["mask"].astype(per_row.dtype)
    profile = jnp.sum(per_row * m[:, None], axis=0) / jnp.maximum(jnp.sum(m), 1.0)
    k = profile @ meta_params["profile"]["key"]
    att = jax.nn.softmax(cosine(k, state["profile"]) / temperature)
    over = jnp.sum((cat >= profile_vocab) * m[:, None]) / jnp.maximum(jnp.sum(m) * max(cat.shape[-1], 1), 1.0)
    return k, att, over

  def personal_init(meta_params: dict, att: jax.Array, state: dict) -> Params:
    params = meta_params["params"]
    adapt, pref = masks(params)
    theta, unravel = flat(params, adapt)
    _, frozen = inner.partition(params, adapt)
    phi_u = inner.combine(unravel(theta - tau * (att @ state["feature"])), frozen, adapt)
    pref_theta, pref_unravel = flat(phi_u, pref)
    _, pref_rest = inner.partition(phi_u, pref)
    return inner.combine(pref_unravel(pref_theta + att @ state["task"]), pref_rest, pref)

  def local_update(meta_params: dict, support: dict, state: dict):
    k, att, over = attention(meta_params, support, state)
    start = personal_init(meta_params, att, state)
    loss_fn = lambda p: inner.support_loss(model, loss, p, support)  # noqa: E731
    adapt, _ = masks(start)
    task_params, metrics = inner.inner_sgd(loss_fn, start, adapt, inner_lr, inner_steps, first_order=first_order)
    return task_params, {**metrics, "profile_overflow": over}, (k, att, start, loss_fn)

  def adapt(meta_params: dict, support: dict, key: jax.Array, state: dict) -> Params:
    del key
    return local_update(meta_params, support, state)[0]

  def task_grad(meta_params: dict, task: dict, key: jax.Array, state: dict) -> tuple[dict, dict]:
    del key

    def outer(meta):
      task_params, metrics, _ = local_update(meta, task["support"], state)
      outer_loss = inner.query_loss(model, loss, task_params, task["query"], task["support"])
      return outer_loss, {**metrics, "outer_loss": outer_loss}

    (_, metrics), grads = jax.value_and_grad(outer, has_aux=True)(meta_params)
    return grads, metrics

  def task_outputs(meta_params: dict, task: dict, key: jax.Array, state: dict) -> dict:
    del key
    task_params, _, (k, att, start, loss_fn) = local_update(meta_params, task["support"], state)
    adapt, pref = masks(start)
    adapted, frozen = inner.partition(start, adapt)
    grad = ravel_pytree(jax.grad(lambda a: loss_fn(inner.combine(a, frozen, adapt)))(adapted))[0]
    delta = flat(task_params, pref)[0] - flat(meta_params["params"], pref)[0]
    return {"key": k, "att": att, "grad": grad, "delta": delta}

  def update_state(state: dict, meta_params: dict, outputs: dict, task_mask: jax.Array) -> dict:
    del meta_params
    att = outputs["att"]
    return {
      "profile": moving_average(state["profile"], att, outputs["key"], task_mask, beta),
      "feature": moving_average(state["feature"], att, outputs["grad"], task_mask, alpha),
      "task": moving_average(state["task"], att, outputs["delta"], task_mask, gamma),
    }

  return Learner(
    name, model, init, adapt, task_grad, init_state=init_state, update_state=update_state, task_outputs=task_outputs
  )
