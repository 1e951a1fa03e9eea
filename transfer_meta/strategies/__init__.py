"""Transfer strategies: each an ordered list of stages plus the learner that adapts the result per task.

    strategy = get_strategy("pretrain_finetune", model, config, pretrain_steps=500)
    trained, seconds = stages.run_strategy(exp, strategy, workdir, mlog)

A config selects one with `config.strategy_name` and `config.strategy` (its keywords); `train_and_evaluate`
then trains it beside the learners and reports it as one more row of the same tables (results.json
"comparisons", plus "strategy": the stages run, and "heads" when the strategy reports more heads). Add a strategy
with one module here (a builder `(model, config, spec, **kw) -> stages.Strategy` that reads as its list of stages)
and one registry line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections

from transfer_meta import evaluate, runlog, stages, step
from transfer_meta import train as train_lib
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model
from transfer_meta.registry import lookup
from transfer_meta.stages import Strategy
from transfer_meta.strategies.align import coral_strategy, dann, mmd
from transfer_meta.strategies.distill import distill
from transfer_meta.strategies.emcdr import cmf, emcdr
from transfer_meta.strategies.fusion import fusion
from transfer_meta.strategies.meta_source import meta_source
from transfer_meta.strategies.multitask import multitask
from transfer_meta.strategies.pretrain import pretrain_finetune, pretrain_frozen_head
from transfer_meta.strategies.ptupcdr import ptupcdr
from transfer_meta.strategies.soup import soup
from transfer_meta.strategies.warm_start import metaemb, mwuf

STRATEGIES: dict[str, Callable[..., Strategy]] = {
  "pretrain_finetune": pretrain_finetune,  # supervised pretraining on every training interaction, fine-tune per task
  "pretrain_frozen_head": pretrain_frozen_head,  # same pretraining, closed-form ridge head per task
  "fusion": fusion,  # two pretrained models, score fusion (convex weight or linear stacking) fitted on validation
  "soup": soup,  # one pretrained init, K copies fine-tuned on disjoint data slices, their weights averaged
  "distill": distill,  # id-based teacher -> side-feature student (hard labels + teacher scores), fine-tune per task
  "metaemb": metaemb,  # pretrained base, then a generator of cold id embeddings from features (Pan et al. SIGIR'19)
  "mwuf": mwuf,  # pretrained base, then meta scaling/shifting nets warming cold embeddings (Zhu et al. SIGIR'21)
  "multitask": multitask,  # shared-bottom / MMoE heads: rating (mse), click and first-week (bce); rating adapted
  # Cross-domain (a `data.cross_domain.CrossDomainSplit`: protocols 'genre_split', 'ml1m_to_ml100k'):
  "emcdr": emcdr,  # source MF, target MF, user-vector mapping (linear; emcdr_mlp: MLP) learned on overlapping users
  "emcdr_mlp": functools.partial(emcdr, mapping="mlp"),
  "cmf": cmf,  # one MF, user factors shared by both rating matrices, weighted sum of the two losses
  "ptupcdr": ptupcdr,  # meta-network: source history -> personalised bridge of the frozen source user vector
  "dann": dann,  # shared side-feature encoder, domain classifier behind gradient reversal
  "mmd": mmd,  # shared side-feature encoder, multi-bandwidth Gaussian MMD between domains
  "coral": coral_strategy,  # shared side-feature encoder, CORAL (covariance alignment) between domains
  "meta_source": meta_source,  # a meta-learner meta-trained on source-domain tasks, adapted on target tasks
}
CROSS_DOMAIN = (
  "emcdr",
  "emcdr_mlp",
  "cmf",
  "ptupcdr",
  "dann",
  "mmd",
  "coral",
  "meta_source",
)  # need a cross-domain split
# Learn a map of USER vectors from the users with ratings in both domains: refused on user-disjoint splits.
NEEDS_SHARED_USERS = ("emcdr", "emcdr_mlp", "ptupcdr")


def check_shared_users(name: str, exp) -> None:
  """Refuses (DataError) a `NEEDS_SHARED_USERS` strategy on a cross-domain split without overlapping training
  users (an item-overlap, user-disjoint benchmark such as 'ml1m_to_ml100k'), before any stage runs."""
  from transfer_meta.data.cross_domain import is_cross_domain  # noqa: PLC0415
  from transfer_meta.data.interactions import DataError  # noqa: PLC0415

  if name not in NEEDS_SHARED_USERS:
    return
  for st in exp.seeds:
    split = st.split
    if is_cross_domain(split) and split.roles["train"].size == 0:
      others = [n for n in CROSS_DOMAIN if n not in NEEDS_SHARED_USERS]
      raise DataError(
        f"strategy {name!r} maps user vectors learned on users with ratings in both domains, and protocol "
        f"{split.protocol!r} (seed {st.seed}) has no such training user: its domains {list(split.domains)} share "
        f"{split.shared_users.size} users and {split.shared_items.size} items (user-disjoint). Strategies that "
        f"transfer through shared items or side features: {others}"
      )


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
  """Fails before any model is built when `kwargs` (a config's `strategy`) holds a keyword the builder of strategy
  `name` does not take (e.g. `pretrain_steps` given to `emcdr`), naming the keyword and the builder's keywords.

  Args:
    name: a key of `STRATEGIES` (unknown names raise ValueError listing the valid ones).
    kwargs: the builder's keywords, without model, config, spec and exp.
  """
  params = inspect.signature(lookup(STRATEGIES, name, "strategy")).parameters
  fixed = ("model", "config", "spec", "exp")
  unknown = sorted(k for k in kwargs if k not in params or k in fixed)
  if unknown:
    valid = [p for p in params if p not in fixed]
    raise ValueError(f"strategy {name!r} takes no keyword(s) {unknown} (config.strategy); its keywords: {valid}")


def get_strategy(
  name: str, model: Model, config: ml_collections.ConfigDict, spec: FeatureSpec, exp=None, **kwargs
) -> Strategy:
  """The strategy `name` for `model` (defaults from `config`: optimiser, steps, batch size).

  Args:
    name: a key of `STRATEGIES` (unknown names raise ValueError listing the valid ones).
    model: the experiment's model.
    config: the experiment config.
    spec: the dataset's feature sizes (strategies that build other models).
    exp: the `train.Experiment`, passed to builders with an `exp` parameter (data-dependent ones: PTUPCDR's
      source histories); with it, `check_shared_users` refuses EMCDR/PTUPCDR on user-disjoint splits.
    **kwargs: the builder's keywords (`config.strategy`).
  Returns:
    A `stages.Strategy` named `name`.
  Raises:
    DataError: `name` needs overlapping users and the experiment's split has none (`check_shared_users`).
  """
  check_kwargs(name, kwargs)
  builder = STRATEGIES[name]
  if exp is not None:
    check_shared_users(name, exp)
  if "exp" in inspect.signature(builder).parameters:
    kwargs["exp"] = exp
  strategy = builder(model, config, spec, **kwargs)
  return strategy._replace(name=name)


class StrategyRun(NamedTuple):
  trained: train_lib.Trained  # selected last-stage params per seed, the evaluation learner, wall time
  evaluated: list  # [{set: {metric: float}}] per seed (`train.evaluate_trained`)
  info: dict  # results.json "strategy": name, kwargs, stages run (no timings)
  seconds: dict  # {stage name: training seconds}


def run(exp: train_lib.Experiment, workdir: str, mlog: runlog.MetricsLog) -> StrategyRun:
  """Builds `exp.config.strategy_name` with `exp.config.strategy`, runs its stages and evaluates it like a learner.

  The strategy's name must differ from the learner names (it is a row of the same tables).
  """
  config = exp.config
  name, kwargs = config.strategy_name, config.strategy.to_dict()
  learners = [n for n, _ in train_lib._learner_specs(config)]
  if name in learners:
    raise ValueError(f"config.strategy_name={name!r} is also a learner name {learners}: rows must be distinct")
  strategy = get_strategy(name, exp.model, config, exp.spec, exp=exp, **kwargs)
  trained, seconds = stages.run_strategy(exp, strategy, workdir, mlog)
  info = {"name": name, "kwargs": kwargs, "learner": strategy.learner.name, "stages": stages.stage_info(strategy)}
  if strategy.describe is not None:
    info["describe"] = strategy.describe(jax.device_get(step.unstack(trained.selection.params, 0)))
  if strategy.report is not None:  # e.g. multitask's per-head metrics, per seed -> mean, std, per_seed
    per_seed = [strategy.report(exp, st, step.unstack(trained.selection.params, n)) for n, st in enumerate(exp.seeds)]
    info["heads"] = evaluate.summarize(per_seed)
  return StrategyRun(trained, train_lib.evaluate_trained(exp, trained), info, seconds)


__all__ = [
  "CROSS_DOMAIN",
  "NEEDS_SHARED_USERS",
  "STRATEGIES",
  "Strategy",
  "StrategyRun",
  "check_kwargs",
  "check_shared_users",
  "get_strategy",
  "run",
]
