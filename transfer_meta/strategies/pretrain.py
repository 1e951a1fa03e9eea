"""Pretrain on every training interaction, then adapt per task: `pretrain_finetune` and `pretrain_frozen_head`.

    stage 1  pretrain   interaction minibatches   supervised loss over all training rows (not only task queries)
    stage 2  meta       task batches (optional)   the learner's meta-step from the pretrained init (`meta_steps`)
    eval                learner.adapt per task    fine-tune the adapt set / closed-form ridge head on the support

`pretrain_finetune` adapts with `inner_steps` SGD steps on `adapt_regex` (default the model's adapt set);
with `meta_steps > 0` a second stage meta-trains that same adaptation (MAML, second order unless
`first_order`) starting from the pretrained parameters. `stream='source_interactions'` pretrains on a
cross-domain split's SOURCE rows only (`data.cross_domain`): the source-only model of a cross-domain table.
`pretrain_frozen_head` freezes the features and fits the head (`model.head_regex`) on each support in closed form
(`learners.ridge`).
"""

from __future__ import annotations

import ml_collections

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.maml import maml
from transfer_meta.learners.ridge import ridge_head
from transfer_meta.learners.transfer import finetune
from transfer_meta.models.base import Model

PRETRAIN_STREAMS = ("interactions", "source_interactions")


def _pretrain_stage(
  model: Model, config: ml_collections.ConfigDict, steps, batch_size, learning_rate, trainable, loss, stream
) -> stages.Stage:
  if stream not in PRETRAIN_STREAMS:
    raise ValueError(f"pretraining stream {stream!r}: valid streams {list(PRETRAIN_STREAMS)}")
  return stages.Stage(
    "pretrain",
    stages.objective_grad(stages.supervised_objective(model, loss)),
    stream,
    int(config.num_steps if steps is None else steps),
    stages.stage_optimizer(config, learning_rate),
    int(batch_size),
    trainable,
  )


def pretrain_finetune(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  pretrain_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  trainable: str = ".*",
  adapt_regex: str | None = None,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
  meta_steps: int = 0,
  meta_learning_rate: float | None = None,
  first_order: bool = False,
  loss: str = "mse",
  stream: str = "interactions",
) -> stages.Strategy:
  """Supervised pretraining, optionally a meta-stage, then per-task fine-tuning.

  Args:
    model, config: the experiment's model and config (optimiser, `num_steps`, `batch_size` defaults).
    spec: the dataset's feature sizes (unused: one model).
    pretrain_steps: pretraining steps (default `config.num_steps`).
    batch_size: interactions per pretraining step and seed (a multiple of the device count).
    learning_rate: pretraining learning rate (default the config optimiser's).
    trainable: regex of the leaves pretraining (and the meta-stage) update; the others stay at their init.
    adapt_regex: leaves fine-tuned per task (default `model.adapt_regex`).
    inner_steps, inner_lr: the per-task fine-tuning SGD.
    meta_steps: > 0 adds a meta-stage of that many MAML steps on task batches (`config.batch_size` tasks).
    meta_learning_rate: its outer learning rate (default the config optimiser's).
    first_order: the meta-stage's MAML is first order.
    loss: 'mse' (ratings) or 'bce' (clicks).
    stream: the pretraining rows: 'interactions' (every training row) or 'source_interactions' (cross-domain
      splits: the source rows only).
  """
  del spec
  regex = model.adapt_regex if adapt_regex is None else adapt_regex
  learner = finetune(model, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=regex, loss=loss)
  out = [_pretrain_stage(model, config, pretrain_steps, batch_size, learning_rate, trainable, loss, stream)]
  if meta_steps:
    meta = maml(model, inner_steps, inner_lr, first_order=first_order, adapt_regex=regex, loss=loss)
    tx = stages.stage_optimizer(config, meta_learning_rate)
    out.append(stages.meta_stage("meta", meta, int(meta_steps), tx, config.batch_size, trainable))
  return stages.Strategy("pretrain_finetune", tuple(out), learner)


def pretrain_frozen_head(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  pretrain_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  trainable: str = ".*",
  l2: float = 1.0,
  head_regex: str | None = None,
  loss: str = "mse",
) -> stages.Strategy:
  """Supervised pretraining, then per task a closed-form ridge fit of the head on the support.

  Args:
    model, config, spec, pretrain_steps, batch_size, learning_rate, trainable, loss: as `pretrain_finetune`.
    l2: ridge penalty towards the pretrained head.
    head_regex: the head's leaves (default `model.head_regex`).
  """
  del spec
  learner = ridge_head(model, l2=l2, head_regex=head_regex, loss=loss)
  stage = _pretrain_stage(model, config, pretrain_steps, batch_size, learning_rate, trainable, loss, "interactions")
  return stages.Strategy("pretrain_frozen_head", (stage,), learner)
