"""Cross-domain methods on the synthetic data cut by `genre_split` (first listed genre; default genre groups).

Command (2 CPU cores: about a minute wall, compilation included):

    python -m transfer_meta.main --config=configs/cross_domain_synthetic.py --workdir=runs/cd_synthetic
    python -m transfer_meta.main --config=configs/cross_domain_synthetic.py:ptupcdr --workdir=runs/cd_ptupcdr

`arg` is a strategy name of `strategies.CROSS_DOMAIN` (default 'emcdr'), optionally ',tiny' (alias ',smoke'):
a few steps per stage, for tests (tests/test_strategies.py runs every cross-domain strategy through it). Not a
benchmark: see configs/cross_domain_ml100k.py.
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config

# Keywords per strategy (the stage sizes of the non-tiny run; tiny overrides the step counts).
STRATEGY_KWARGS = {
  "emcdr": dict(dim=8, mf_steps=60, map_steps=60, batch_size=128, map_batch_size=32, inner_lr=0.1),
  "emcdr_mlp": dict(dim=8, hidden=16, mf_steps=60, map_steps=60, batch_size=128, map_batch_size=32, inner_lr=0.1),
  "cmf": dict(dim=8, steps=60, batch_size=128, inner_lr=0.1),
  "ptupcdr": dict(dim=8, hidden=16, history_len=20, mf_steps=60, meta_steps=60, batch_size=128, inner_lr=0.1),
  "dann": dict(emb_dim=4, hidden=(16, 8), steps=60, batch_size=128, inner_lr=0.1),
  "mmd": dict(emb_dim=4, hidden=(16, 8), steps=60, batch_size=128, inner_lr=0.1),
  "coral": dict(emb_dim=4, hidden=(16, 8), steps=60, batch_size=128, inner_lr=0.1),
  "meta_source": dict(learner_name="maml", learner=dict(inner_steps=1, inner_lr=0.1), source_steps=60),
}
TINY_STEPS = {  # 2 steps per stage: checkpoints every 2 in tests
  "emcdr": dict(mf_steps=2, map_steps=2, batch_size=64),
  "emcdr_mlp": dict(mf_steps=2, map_steps=2, batch_size=64),
  "cmf": dict(steps=2, batch_size=64),
  "ptupcdr": dict(mf_steps=2, meta_steps=2, batch_size=64),
  "dann": dict(steps=2, batch_size=64),
  "mmd": dict(steps=2, batch_size=64),
  "coral": dict(steps=2, batch_size=64),
  "meta_source": dict(source_steps=2, target_steps=2),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: '<strategy>[,tiny|,smoke]' (default 'emcdr', full size)."""
  parts = [p for p in (arg or "").split(",") if p]
  tiny = any(p in ("tiny", "smoke") for p in parts)
  names = [p for p in parts if p not in ("tiny", "smoke")]
  if len(names) > 1 or (names and names[0] not in STRATEGY_KWARGS):
    raise ValueError(f"unknown config arg {arg!r}; valid: '<strategy>[,tiny]' with strategy in {list(STRATEGY_KWARGS)}")
  name = names[0] if names else "emcdr"
  c = default_config()
  c.dataset_name = "synthetic"
  c.dataset = ml_collections.ConfigDict(dict(n_users=200, n_items=150, ratings_per_user=(30, 60), seed=0))
  c.protocol_name = "genre_split"
  c.protocol = ml_collections.ConfigDict(dict(beta=0.5, n_support=3, min_query=6, n_query=5, valid_fraction=0.2))
  c.model_name = "mf"
  c.model = ml_collections.ConfigDict(dict(dim=8))
  c.learner_name = "none"
  c.compare_learners = ()
  c.strategy_name = name
  strategy = dict(STRATEGY_KWARGS[name])
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-2))
  c.seeds = 2
  c.batch_size = 8
  c.eval_batch_size = 32
  c.num_steps = 60
  c.log_every = 10
  c.eval_every = 20
  c.checkpoint_every = 20
  c.buckets = (8, 64)
  c.baselines = ("global_mean", "item_mean", "item_user_offset")
  if tiny:
    strategy.update(TINY_STEPS[name])
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 2, 1
    c.progress = False
  c.strategy = ml_collections.ConfigDict(strategy)
  c.lock()
  return c


def sweep() -> list[dict]:
  """Every cross-domain strategy with its keywords (`experiments.ablate` expands them)."""
  return [{"strategy_name": name, "strategy": dict(kwargs)} for name, kwargs in STRATEGY_KWARGS.items()]
