"""The meta-learning view of cross-domain cold start: meta-train on SOURCE-domain user tasks, adapt on target tasks.

    stage 1  source_meta   split.tasks['source'] batches ('source_tasks')   the learner's meta-step
    stage 2  target_meta   split.tasks['train'] batches ('tasks')         optional (`target_steps` > 0): the same
                                                                          meta-step on the warm target users
    eval     learner.adapt per cold user on their K target ratings (the learner's inner loop; K = 0: none)

Any registered meta-learner (`learner_name`: 'maml', 'fomaml', 'melu', 'reptile', ...) with its keywords
(`learner`), on the experiment's model. The source tasks are every user's source ratings (query `n_query`, the
rest support; the cold users' source ratings are training data), so the meta-initialisation has seen the cold
users' source behaviour but none of their target ratings. With `target_steps = 0` this is the pure "meta-train on
the source, adapt on the target" view; with both stages, source meta-training is a pre-training of the
target-only meta-learner that `config.learner_name` runs beside it.
"""

from __future__ import annotations

import ml_collections

from transfer_meta import stages, step
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners import get_learner
from transfer_meta.models.base import Model


def meta_source(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  learner_name: str = "maml",
  learner: dict | None = None,
  source_steps: int | None = None,
  target_steps: int = 0,
  batch_size: int | None = None,
  learning_rate: float | None = None,
) -> stages.Strategy:
  """Meta-training on source tasks (then optionally on target training tasks), evaluation on target tasks.

  Args:
    model: the experiment's model.
    config, spec: the experiment config (optimiser, `num_steps`, `batch_size` defaults) and feature sizes.
    learner_name, learner: the meta-learner and its keywords (`learners.get_learner`).
    source_steps: meta-steps on source tasks (default `config.num_steps`).
    target_steps: meta-steps on the target training tasks afterwards (0: none).
    batch_size: tasks per meta-step and seed (default `config.batch_size`).
    learning_rate: the outer learning rate (default the config optimiser's).
  """
  del spec
  meta = get_learner(learner_name, model, **(learner or {}))
  tx = stages.stage_optimizer(config, learning_rate)
  b = int(config.batch_size if batch_size is None else batch_size)
  grad = step.task_batch_grad_fn(meta)
  n = int(config.num_steps if source_steps is None else source_steps)
  out = [stages.Stage("source_meta", grad, "source_tasks", n, tx, b)]
  if target_steps:
    out.append(stages.Stage("target_meta", grad, "tasks", int(target_steps), tx, b))
  return stages.Strategy("meta_source", tuple(out), meta)
