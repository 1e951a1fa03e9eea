"""Warm-up in rounds: a task's support arrives in successive batches of `round_size` ratings, each one update.

    adapt      for r in 0..R-1:  `inner_steps` SGD steps on support rows [r K, (r + 1) K) (the round's ratings),
               context = the rows of rounds 0..r (what has been seen so far); all-padded rounds change nothing
    task_grad  objective 'joint':  the plain gradient of the task's loss on support and query (a global model,
                                   as `transfer.finetune`)
               objective 'meta':   alpha * L(support; theta) + (1 - alpha) * L(query; theta'),
                                   theta' = `meta_inner_steps` SGD steps on the support (MetaEmb's cold-start /
                                   warm-up meta-loss, Pan et al. SIGIR'19; alpha = 0 is MAML on the adapt set)

On `item_warmup` the support of scenario 'warm_<r>' lists rounds a..r in time order, so `adapt` reproduces the
literature's warm-up evaluation (update the cold item's embedding with round a, test; then b, test; ...): with
`adapt_regex` the task side's delta (`models.mf.default_regex('item')`) only the item's embedding and bias move.
`round_size=0` treats the whole support as one round (plain fine-tuning).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transfer_meta.learners import inner
from transfer_meta.learners.base import Learner
from transfer_meta.losses import examples_loss, get_loss
from transfer_meta.models.base import Model, Params, adapt_mask

OBJECTIVES = ("joint", "meta")


def round_masks(mask: jax.Array, round_size: int) -> tuple[jax.Array, jax.Array]:
  """Per round r, the support rows of round r and of rounds 0..r.

  Args:
    mask: bool [S], the support mask; real rows in arrival order (padding may sit anywhere).
    round_size: K >= 1 (0: one round holding the whole support).
  Returns:
    (this_round bool [R, S], seen bool [R, S]) with R = ceil(S / K) (1 when K = 0): the j-th real row (j from 0)
    is in round j // K.
  """
  S = mask.shape[0]
  if round_size == 0:
    return mask[None], mask[None]
  n_rounds = max(1, -(-S // round_size))
  pos = ((jnp.cumsum(mask) - 1) // round_size)[None, :]
  r = jnp.arange(n_rounds)[:, None]
  return (pos == r) & mask[None], (pos <= r) & mask[None]


def warmup_sgd(
  model: Model, loss: str, params: Params, support: dict, mask: Params, lr, steps: int, round_size: int
) -> Params:
  """The round-by-round SGD of `adapt` (module docstring); returns the warmed-up params."""
  this_round, seen = round_masks(support["mask"], round_size)
  adapted, frozen = inner.partition(params, mask)

  def one_round(a, masks):
    rows, context = ({**support, "mask": m} for m in masks)
    loss_fn = lambda a_: examples_loss(model.apply, inner.combine(a_, frozen, mask), rows, context, loss)

    def sgd(a_, _):
      grads = jax.grad(loss_fn)(a_)
      return jax.tree.map(lambda p, g: p - lr * g, a_, grads), None

    return jax.lax.scan(sgd, a, None, length=steps)[0], None

  adapted = jax.lax.scan(one_round, adapted, (this_round, seen))[0]
  return inner.combine(adapted, frozen, mask)


def warmup(
  model: Model,
  round_size: int = 5,
  inner_steps: int = 1,
  inner_lr: float = 0.1,
  adapt_regex: str | None = None,
  objective: str = "joint",
  alpha: float = 0.1,
  meta_inner_steps: int = 1,
  loss: str = "mse",
  name: str = "warmup",
) -> Learner:
  """Round-by-round warm-up of the adapt set (see the module docstring).

  Args:
    model: the model (scores a task's rows with the support seen so far as context).
    round_size: K, support rows per round (0: the whole support is one round).
    inner_steps: SGD steps per round; inner_lr: their rate.
    adapt_regex: leaves warmed up (default `model.adapt_regex`).
    objective: 'joint' (pretrain a global model) or 'meta' (alpha-weighted cold/warm meta-loss).
    alpha: weight of the support loss before adaptation in the 'meta' objective, in [0, 1].
    meta_inner_steps: SGD steps on the whole support giving theta' in the 'meta' objective (>= 1).
    loss: 'mse' or 'bce'.
    name: the learner's name in tables.
  Returns:
    A `Learner` whose meta_params are the model params.
  """
  if isinstance(round_size, bool) or not isinstance(round_size, int) or round_size < 0:
    raise ValueError(f"warmup: round_size={round_size!r} must be an int >= 0")
  inner.check_steps(inner_steps)
  if objective not in OBJECTIVES:
    raise ValueError(f"warmup: objective={objective!r} must be one of {list(OBJECTIVES)}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"warmup: alpha={alpha!r} must be in [0, 1]")
  if inner.check_steps(meta_inner_steps) < 1:
    raise ValueError(f"warmup: meta_inner_steps={meta_inner_steps} must be >= 1")
  get_loss(loss)
  regex = model.adapt_regex if adapt_regex is None else adapt_regex

  def init(key: jax.Array, model_params: Params) -> Params:
    del key
    adapt_mask(model_params, regex)
    return model_params

  def adapt(meta_params: Params, support: dict, key: jax.Array) -> Params:
    del key
    mask = adapt_mask(meta_params, regex)
    return warmup_sgd(model, loss, meta_params, support, mask, inner_lr, inner_steps, round_size)

  def meta_loss(params: Params, support: dict, query: dict) -> tuple[jax.Array, dict]:
    loss_a = inner.support_loss(model, loss, params, support)
    support_fn = lambda p: inner.support_loss(model, loss, p, support)
    stepped, _ = inner.inner_sgd(support_fn, params, adapt_mask(params, regex), inner_lr, meta_inner_steps)
    loss_b = inner.query_loss(model, loss, stepped, query, support)
    return alpha * loss_a + (1.0 - alpha) * loss_b, {"loss_a": loss_a, "loss_b": loss_b}

  def task_grad(meta_params: Params, task: dict, key: jax.Array) -> tuple[Params, dict]:
    support, query = task["support"], task["query"]
    if objective == "joint":
      value, grads = jax.value_and_grad(lambda p: inner.joint_loss(model, loss, p, support, query))(meta_params)
      metrics = {"pretrain_loss": value}
    else:
      (value, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(meta_params, support, query)
      metrics = {**metrics, "meta_loss": value}
    start = jax.lax.stop_gradient(meta_params)
    warmed = adapt(start, support, key)
    metrics["inner_loss_before"] = inner.support_loss(model, loss, start, support)
    metrics["inner_loss_after"] = inner.support_loss(model, loss, warmed, support)
    metrics["outer_loss"] = inner.query_loss(model, loss, warmed, query, support)
    return grads, metrics

  return Learner(name, model, init, adapt, task_grad)
