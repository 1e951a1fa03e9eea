"""MetaEmb and MWUF: a pretrained base model, then networks that warm up cold ids, the backbone frozen.

    metaemb (Pan et al., "Warm Up Cold-start Advertisements: Improving CTR Predictions via Learning to Learn ID
             Embeddings", SIGIR'19)
      stage 1  pretrain  interaction minibatches   base MF in 'ids' mode, every leaf but the generator
      stage 2  meta      task batches              generator only: alpha * loss_a + (1 - alpha) * loss_b, with
                                                   loss_a on the support scored with the GENERATED embedding and
                                                   loss_b on the query after one SGD step of it on loss_a
    mwuf    (Zhu et al., "Learning to Warm Up Cold Item Embeddings for Cold-start Recommendation with Meta
             Scaling and Shifting Networks", SIGIR'21)
      stage 1  pretrain  interaction minibatches   base MF in 'ids' mode, every leaf but the meta networks
      stage 2  meta      task batches              meta scaling + shifting networks only: the query loss after
                                                   the support's warm-up of the cold embedding (alpha = 0)
    eval     learner.adapt per task: round-by-round SGD of the task side's cold embedding (`learners.warmup`)

Both treat the training ids (warm items) as if cold in stage 2 (their id rows are not read: `models.warm_start`
'cold' mode), as both papers simulate cold start with old ids. The side defaults to the protocol's task kind
('item' for item_cold / item_warmup, else 'user': user-as-task, as RecBole-MetaRec runs MetaEmb).

Where we differ from the reference code: the support/query of a training item are its K random ratings and all
the others (fixed per item: stage task streams are not resampled), not two equal minibatches; MWUF's meta networks
are trained by this MAML-like warm-up objective on old items instead of alternating with the cold embeddings'
own updates; see `models.warm_start` for the model-side differences.
"""

from __future__ import annotations

import ml_collections

from transfer_meta import stages
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.learners.warmup import warmup
from transfer_meta.models.base import Model
from transfer_meta.models.warm_start import BASE_REGEX, META_REGEX, warm_start_mf


def task_side(config: ml_collections.ConfigDict, side: str | None) -> str:
  """The side whose ids are warmed: `side`, else 'item' for item-as-task protocols ('item_*'), else 'user'."""
  if side is None:
    return "item" if config.protocol_name.startswith("item") else "user"
  if side not in ("user", "item"):
    raise ValueError(f"side={side!r} must be 'user' or 'item'")
  return side


def protocol_round_size(config: ml_collections.ConfigDict, round_size: int | None) -> int:
  """Warm-up round size: `round_size`, else item_warmup's `round_size` (default 5), else 0 (one round)."""
  if round_size is not None:
    return int(round_size)
  if config.protocol_name == "item_warmup":
    return int(config.protocol.to_dict().get("round_size", 5))
  return 0


def _build(
  method: str,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  *,
  side,
  dim,
  hidden,
  global_bias,
  pretrain_steps,
  meta_steps,
  batch_size,
  learning_rate,
  meta_learning_rate,
  alpha,
  warmup_lr,
  warmup_steps,
  round_size,
  loss,
) -> stages.Strategy:
  side = task_side(config, side)
  kw = dict(side=side, dim=dim, hidden=hidden, global_bias=global_bias)
  base, cold = warm_start_mf(spec, method, "ids", **kw), warm_start_mf(spec, method, "cold", **kw)
  learner = warmup(
    cold, protocol_round_size(config, round_size), warmup_steps, warmup_lr, objective="meta", alpha=alpha,
    meta_inner_steps=1 if method == "metaemb" else warmup_steps, loss=loss, name=method,
  )  # fmt: skip
  steps = lambda n: int(config.num_steps if n is None else n)
  pretrain = stages.Stage(
    "pretrain", stages.objective_grad(stages.supervised_objective(base, loss)), "interactions", steps(pretrain_steps),
    stages.stage_optimizer(config, learning_rate), int(batch_size), BASE_REGEX,
  )  # fmt: skip
  tx = stages.stage_optimizer(config, meta_learning_rate)
  meta = stages.meta_stage("meta", learner, steps(meta_steps), tx, config.batch_size, META_REGEX[method])
  return stages.Strategy(method, (pretrain, meta), learner)


def metaemb(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  side: str | None = None,
  dim: int = 32,
  hidden: int = 32,
  global_bias: float = 3.5,
  pretrain_steps: int | None = None,
  meta_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  meta_learning_rate: float | None = None,
  alpha: float = 0.1,
  warmup_lr: float = 0.1,
  warmup_steps: int = 1,
  round_size: int | None = None,
  loss: str = "mse",
) -> stages.Strategy:
  """MetaEmb: pretrain the base, then meta-train the id-embedding generator (module docstring).

  Args:
    model: unused (the strategy builds its own `models.warm_start` MF; the config's model is the others' rows).
    config: the experiment config (optimiser, `num_steps`, task `batch_size`, protocol).
    spec: the dataset's feature sizes.
    side: the side whose ids are generated (default: the protocol's task kind, `task_side`).
    dim, hidden, global_bias: the MF width, the generator's hidden width, the initial global bias.
    pretrain_steps, meta_steps: steps of the two stages (default `config.num_steps` each).
    batch_size: interactions per pretraining step and seed.
    learning_rate, meta_learning_rate: the stages' rates (default the config optimiser's).
    alpha: weight of the cold loss_a (MetaEmb's alpha; 1 - alpha weighs the warm loss_b).
    warmup_lr: SGD rate of the embedding's warm-up step (training) and of each round (evaluation).
    warmup_steps: SGD steps per warm-up round at evaluation.
    round_size: support rows per round (default `protocol_round_size`).
    loss: 'mse' (ratings) or 'bce' (clicks).
  """
  del model
  return _build("metaemb", config, spec, **{k: v for k, v in locals().items() if k not in ("config", "spec")})


def mwuf(
  model: Model,
  config: ml_collections.ConfigDict,
  spec: FeatureSpec,
  side: str | None = None,
  dim: int = 32,
  hidden: int = 32,
  global_bias: float = 3.5,
  pretrain_steps: int | None = None,
  meta_steps: int | None = None,
  batch_size: int = 256,
  learning_rate: float | None = None,
  meta_learning_rate: float | None = None,
  warmup_lr: float = 0.1,
  warmup_steps: int = 1,
  round_size: int | None = None,
  loss: str = "mse",
) -> stages.Strategy:
  """MWUF: pretrain the base, then meta-train the scaling and shifting networks (module docstring).

  Args: as `metaemb` (no alpha: the objective is the query loss after warm-up).
  """
  del model
  kw = {k: v for k, v in locals().items() if k not in ("config", "spec")}
  return _build("mwuf", config, spec, alpha=0.0, **kw)
