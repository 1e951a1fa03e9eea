"""Transfer strategies on the smoke data: supervised pretraining on every training interaction, a MAML
meta-stage from the pretrained init, then per-task fine-tuning; `none` and the reference baselines beside it.

Command (2 CPU cores: about 40 s wall, compilation included):

    python -m transfer_meta.main --config=configs/strategies_synthetic.py --workdir=runs/strategies

`:tiny` (alias `:smoke`) shrinks it for tests (tests/test_strategies.py kills it mid-stage; one batch shape);
`:frozen_head` swaps the strategy for `pretrain_frozen_head` (closed-form ridge head per task). Not a benchmark.
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The strategies smoke config; `arg` 'tiny' (tests) or 'frozen_head' (the other strategy)."""
  c = default_config()
  c.dataset_name = "synthetic"
  c.dataset = ml_collections.ConfigDict(dict(n_users=200, n_items=150, ratings_per_user=(15, 40), seed=0))
  c.protocol_name = "melu"
  c.protocol = ml_collections.ConfigDict(dict(n_query=5, min_support=3))
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=8, hidden=(16, 16)))
  c.learner_name = "none"
  c.compare_learners = ()
  c.strategy_name = "pretrain_finetune"
  strategy = dict(pretrain_steps=40, batch_size=128, inner_steps=1, inner_lr=0.1, meta_steps=20)
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=3e-3))
  c.seeds = 2
  c.batch_size = 8
  c.eval_batch_size = 32
  c.num_steps = 40
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 10
  c.buckets = (8, 48)
  if arg in ("tiny", "smoke"):  # tests: 6 pretraining + 4 meta steps, checkpoints every 2
    strategy.update(pretrain_steps=6, batch_size=64, meta_steps=4)
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 4, 2, 2, 1
    c.baselines = ("global_mean", "item_user_offset")
    c.progress = False
    # Widths 5 and 48: the queries (n_query=5) fit 5 and every support batch needs more, so every batch of a run has
    # one shape (support 48, query 5) and each evaluation program is traced and lowered once (with (8, 48) the
    # scenario whose supports all fit 8 was a second shape); padding changes no loss or metric (test_tasks.py).
    c.buckets = (5, 48)
  elif arg == "frozen_head":
    c.strategy_name = "pretrain_frozen_head"
    strategy = dict(pretrain_steps=40, batch_size=128, l2=1.0)
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'tiny' (= 'smoke'), 'frozen_head'")
  c.strategy = ml_collections.ConfigDict(strategy)
  c.lock()
  return c


def sweep() -> list[dict]:
  """Ablations (override dicts, dotted keys) that `experiments/ablate.py` expands."""
  out = [{"strategy.meta_steps": k} for k in (0, 20)]
  out += [{"strategy.inner_steps": k} for k in (0, 1, 3)]
  out += [
    {"strategy_name": "pretrain_frozen_head", "strategy": dict(pretrain_steps=40, batch_size=128, l2=l2)}
    for l2 in (0.1, 1.0)
  ]
  return out
