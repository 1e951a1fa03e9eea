"""Knowledge distillation: a large id-based teacher, a small side-feature student, then per-task adaptation.

    params = {"teacher": teacher params, "student": student params}     (`teacher_student`: one Model, scores =
                                                                         the student's; the teacher is carried)
    stage 1  teacher   interaction minibatches   supervised loss of the teacher (trainable '^teacher/')
    stage 2  student   sampled pairs             alpha * hard + (1 - alpha) * soft   (trainable '^student/')
    eval               learner.adapt per task    fine-tune the student's adapt set on the support

    hard = masked MSE(student(observed), rating)
    soft = (masked MSE(student(observed), teacher(observed)) + masked MSE(student(sampled), teacher(sampled))) / 2

The teacher (default the two-tower backbone with ids) is an input of the student's objective through the
params tree, frozen in stage 2 by the optimiser mask and `stop_gradient`; sampled items are items the user has
no training row for (`data.streams.SampledPairIterator`), scored by the teacher only. The student is the
experiment's model (`config.model_name`, e.g. MeLU on side features). results.json "strategy" "describe" holds
the teacher and student parameter counts; experiments/bench_distill.py measures their serving latency.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.transfer import finetune
from transfer_meta.losses import mse
from transfer_meta.models import get_model
from transfer_meta.models.base import Model


def teacher_student(teacher: Model, student: Model) -> Model:
  """One Model over {"teacher", "student"} params that scores with the student (adapt/head regexes: the
  student's, under 'student/')."""

  def init(key, x, context=None):
    k_t, k_s = jax.random.split(key)
    return {"teacher": teacher.init(k_t, x, context), "student": student.init(k_s, x, context)}

  def apply(params, x, context=None):
    return student.apply(params["student"], x, context)

  under = lambda regex: f"^student/.*(?:{regex})"
  return Model(f"{student.name}<-{teacher.name}", init, apply, under(student.adapt_regex), under(student.head_regex))


def distill_objective(teacher: Model, student: Model, alpha: float = 0.5):
  """`(params, {"observed": x[B], "sampled": x[B]}, key) -> (loss, {"hard_loss", "soft_loss"})` (see module)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"distill: alpha={alpha!r} must be in [0, 1] (the weight of the hard labels)")

  def objective(params, batch, key):
    del key
    obs, sampled = batch["observed"], batch["sampled"]
    t_obs = jax.lax.stop_gradient(teacher.apply(params["teacher"], obs, None))
    t_sampled = jax.lax.stop_gradient(teacher.apply(params["teacher"], sampled, None))
    s_obs = student.apply(params["student"], obs, None)
    s_sampled = student.apply(params["student"], sampled, None)
    hard = mse(s_obs, obs["target"], obs["mask"])
    soft = 0.5 * (mse(s_obs, t_obs, obs["mask"]) + mse(s_sampled, t_sampled, sampled["mask"]))
    return alpha * hard + (1.0 - alpha) * soft, {"hard_loss": hard, "soft_loss": soft}

  return objective


def _teacher_objective(teacher: Model):
  def objective(params, batch, key):
    del key
    return mse(teacher.apply(params["teacher"], batch, None), batch["target"], batch["mask"]), {}

  return objective


def param_counts(params) -> dict:
  """{"teacher_params", "student_params"}: numbers of scalars in each part."""
  count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  return {"teacher_params": count(params["teacher"]), "student_params": count(params["student"])}


def distill(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  teacher_name: str = "two_tower",
  teacher: dict | None = None,
  teacher_steps: int | None = None,
  student_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  alpha: float = 0.5,
  inner_steps: int = 1,
  inner_lr: float = 0.01,
) -> stages.Strategy:
  """Teacher pretraining, distillation into the experiment's model, per-task fine-tuning of the student.

  Args:
    model: the student (the experiment's model).
    config: the experiment config (optimiser and `num_steps` defaults).
    spec: the dataset's feature sizes (to build the teacher).
    teacher_name, teacher: the teacher backbone and its kwargs (default two-tower with ids).
    teacher_steps, student_steps: steps of the two stages (default `config.num_steps` each).
    batch_size: interactions per step and seed (observed pairs; as many sampled ones in stage 2).
    learning_rate: both stages' learning rate (default the config optimiser's).
    alpha: weight of the hard labels in the student's loss (1 - alpha: the teacher's scores).
    inner_steps, inner_lr: per-task fine-tuning of the student's adapt set.
  """
  teacher_model = get_model(teacher_name, spec, **(teacher or {}))
  both = teacher_student(teacher_model, model)
  tx = stages.stage_optimizer(config, learning_rate)
  steps = lambda n: int(config.num_steps if n is None else n)
  teach = stages.Stage(
    "teacher", stages.objective_grad(_teacher_objective(teacher_model)), "interactions", steps(teacher_steps), tx,
    batch_size, "^teacher/",
  )  # fmt: skip
  learn = stages.Stage(
    "student", stages.objective_grad(distill_objective(teacher_model, model, alpha)), "sampled_pairs",
    steps(student_steps), tx, batch_size, "^student/",
  )  # fmt: skip
  learner = finetune(both, inner_steps=inner_steps, inner_lr=inner_lr, adapt_regex=both.adapt_regex, name="distill")
  return stages.Strategy("distill", (teach, learn), learner, param_counts)
