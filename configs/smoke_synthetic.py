"""Smoke run: the whole pipeline on a small synthetic dataset in seconds (tests reuse its 'tiny' variant).

Command (2 CPU cores: ~15 s wall, compilation included):

    python -m transfer_meta.main --config=configs/smoke_synthetic.py --workdir=runs/smoke

Synthetic ratings with planted structure (`tm.load_dataset("synthetic")`, 200 users x 150 items), the melu
protocol (four scenarios), a small MeLU network, second-order MAML (1 inner step, every parameter adapted)
beside `none`, 2 seeds x 40 meta-steps. Measured new-user MAE (mean ± std over 2 seeds): maml 0.760 ± 0.011,
none 0.881 ± 0.015, global_mean 0.939 ± 0.001, item_user_offset 0.738 ± 0.013. Not a benchmark.
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The smoke config; `arg` 'tiny' shrinks it further (8 steps) for unit tests."""
  c = default_config()
  c.dataset_name = "synthetic"
  c.dataset = ml_collections.ConfigDict(dict(n_users=200, n_items=150, ratings_per_user=(15, 40), seed=0))
  c.protocol_name = "melu"
  c.protocol = ml_collections.ConfigDict(dict(n_query=5, min_support=3))
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=8, hidden=(16, 16)))
  c.learner_name = "maml"
  c.learner = ml_collections.ConfigDict(dict(inner_steps=1, inner_lr=0.1))
  c.compare_learners = ("none",)
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=3e-3))
  c.seeds = 2
  c.batch_size = 8
  c.eval_batch_size = 32
  c.num_steps = 40
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 10
  c.buckets = (8, 48)  # two lengths: few compiled shapes, so the run takes seconds
  if arg == "tiny":  # unit tests: 8 steps, checkpoints every 2
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 8, 4, 2, 1
    c.baselines = ("global_mean", "item_user_offset")
    c.progress = False
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'tiny'")
  c.lock()
  return c


def sweep() -> list[dict]:
  """Ablations as override dicts (dotted keys) that `experiments/ablate.py` expands."""
  return [{"learner.inner_steps": k} for k in (0, 1, 3)] + [{"support_cap": k} for k in (1, 5, 0)]
