"""Transfer strategies on MovieLens-100K, beside the MAML family and the reference baselines.

Command (the whole strategies table, both protocols, 5 seeds; 2 CPU cores: wall time in experiments/README.md):

    python -m experiments.strategies --config=strategies_ml100k

One run of it:

    python -m transfer_meta.main --config=configs/strategies_ml100k.py --workdir=runs/strategies_ml100k

The protocol's benchmark config unchanged (`configs/melu_ml100k.py` with its issue-8 training protocol: residual over
item mean + user offset, episodic resampling, item ids, OOV rows, numeric year; or `configs/item_cold_ml100k.py`
with arg 'item_cold') with `config.strategy_name` set: MAML-MeLU, FOMAML and `none` train exactly as in that
config, then the strategy's stages, whose streams carry the same residual prior and OOV features. Strategy
settings (`STRATEGY_KWARGS`, one table row each; `ROW_STRATEGY` names the strategy of rows not named after one)
are fixed, not tuned; every method's parameters are selected on valid MAE only. `pretrain_finetune` adapts MeLU's
adapt set with MAML-MeLU's budget (2 SGD steps, lr 0.05) after 500 steps of supervised pretraining on every
training interaction (512 per step, Adam 2e-3);
`distill` trains a two-tower teacher with ids for 300 steps, then distils it into the MeLU student for 300 steps
(observed pairs and as many sampled unrated items, alpha 0.5) and fine-tunes the student like `pretrain_finetune`;
`fusion` pretrains MeLU and MF (500 steps each, as above) and stacks their fine-tuned scores with coefficients
fitted on the validation tasks by least squares; `soup` pretrains MeLU for 100 steps, fine-tunes 4 copies for 300 steps
on disjoint quarters of each batch and averages their weights; `multitask` trains an MMoE network (4 experts of
width 64, one gate and a 32-wide tower per head) on the rating (MSE), click (rating >= 4, BCE) and first-week
(rated within 7 days of the user's first known rating, BCE) heads at weight 1 each for 300 steps (512 interactions,
Adam 1e-3), then fine-tunes the rating head per task like `pretrain_finetune`; `multitask_shared_bottom` is the same
with one shared 64-wide bottom; `mmoe_{rating,click,week}_only` are its single-task counterparts (one weight 1, the
others 0), whose per-head metrics sit beside it in `strategies_<config>_<protocol>_heads.md`; the click-only and
week-only runs keep their last step (`ROW_OVERRIDES`: valid MAE of a rating head they never train cannot select).
Args: '' / 'melu' / 'item_cold', optionally ',smoke' (seconds: 2 seeds, 20 steps).
"""

from __future__ import annotations

import ml_collections

from transfer_meta import config_files

MELU_ADAPT = r"decision_|output"
PRETRAIN = dict(pretrain_steps=500, batch_size=512, learning_rate=2e-3)
STRATEGY_KWARGS = {
  "pretrain_finetune": dict(PRETRAIN, adapt_regex=MELU_ADAPT, inner_steps=2, inner_lr=0.05),
  "pretrain_frozen_head": dict(PRETRAIN, l2=1.0),
  # B = MF with ids and features (its default user-side adapt set, on both protocols); coefficients fitted on valid
  "fusion": dict(
    steps=500, batch_size=512, learning_rate=2e-3, other_name="mf", mode="stack", inner_steps=2, inner_lr=0.05
  ),
  # 4 copies of MeLU share the pretrained init, each fine-tuned on its quarter of every batch, then averaged
  # pretrain_steps 100: valid MAE of pretrain_finetune's pretraining is best near step 80 and diverges by 500, and
  # soup selects only during its last stage (a choice made on validation curves only)
  "soup": dict(PRETRAIN, pretrain_steps=100, copy_steps=300, n_copies=4, inner_steps=2, inner_lr=0.05),
  # teacher: the two-tower backbone with ids (default kwargs); student: the config's MeLU on side features
  "distill": dict(
    teacher_steps=300, student_steps=300, batch_size=512, learning_rate=2e-3, alpha=0.5, inner_steps=2, inner_lr=0.05
  ),
}
# multitask rows: the same MMoE backbone with every head, with one head (its single-task counterparts), and the
# shared-bottom architecture
MULTITASK = dict(steps=300, batch_size=512, learning_rate=1e-3, hidden=(64,), tower=(32,), inner_steps=2, inner_lr=0.05)
MMOE = dict(MULTITASK, arch="mmoe", n_experts=4)
STRATEGY_KWARGS.update(
  {
    "multitask": MMOE,
    "multitask_shared_bottom": dict(MULTITASK, arch="shared_bottom"),
    **{
      f"mmoe_{head}_only": dict(MMOE, loss_weights={h: float(h == head) for h in ("rating", "click", "week")})
      for head in ("rating", "click", "week")
    },
  }
)
ROW_STRATEGY = {row: "multitask" for row in STRATEGY_KWARGS if row.startswith(("multitask", "mmoe_"))}
# Selection reads valid MAE of the adapted rating head, which the click-only and week-only runs never train: they
# keep their last step instead (one evaluation, at the end), the budget the other multitask rows select near.
ROW_OVERRIDES = {row: {"eval_every": MULTITASK["steps"]} for row in ("mmoe_click_only", "mmoe_week_only")}
PROTOCOL_CONFIGS = {"melu": "melu_ml100k", "item_cold": "item_cold_ml100k"}


def _base(name: str, arg: str | None) -> ml_collections.ConfigDict:
  return config_files.sibling(__file__, name).get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: '[melu|item_cold][,smoke]' (default melu, full size)."""
  parts = [p for p in (arg or "").split(",") if p]
  protocol = next((p for p in parts if p in PROTOCOL_CONFIGS), "melu")
  smoke = "smoke" in parts
  unknown = [p for p in parts if p not in (*PROTOCOL_CONFIGS, "smoke")]
  if unknown:
    raise ValueError(f"unknown config arg {arg!r}; valid: '[melu|item_cold][,smoke]'")
  c = _base(PROTOCOL_CONFIGS[protocol], "smoke" if smoke else None)
  c.unlock()
  c.strategy_name = "pretrain_finetune"
  kwargs = dict(STRATEGY_KWARGS["pretrain_finetune"])
  if smoke:
    kwargs.update(pretrain_steps=20, batch_size=128)
  c.strategy = ml_collections.ConfigDict(kwargs)
  c.lock()
  return c


def sweep() -> list[dict]:
  """One run per table row (`experiments/strategies.py` expands it over both protocols)."""
  return [
    {"strategy_name": ROW_STRATEGY.get(row, row), "strategy": kwargs, **ROW_OVERRIDES.get(row, {})}
    for row, kwargs in STRATEGY_KWARGS.items()
  ]


def sweep_rows() -> list[str]:
  """The table row label of each `sweep()` run (several rows run the multitask strategy)."""
  return list(STRATEGY_KWARGS)
