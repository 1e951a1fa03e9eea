"""Cross-domain cold start on MovieLens-100K, `genre_split` (source: action-led genres, target: comedy/drama-led).

Command (one run: β = 0.5, K = 5 target support ratings, 5 seeds; 2 CPU cores at load average 17-30 shared with
other jobs: 59 min wall; measured cold-user MAE: MAML-MeLU 0.792 ± 0.007, item_user_offset 0.794 ± 0.008,
item_mean_source_offset 0.787 ± 0.010, source_item_user_offset 0.885 ± 0.011; experiments/README.md "Cross-domain"):

    python -m transfer_meta.main --config=configs/genre_split_ml100k.py --workdir=runs/genre_split_ml100k

The table (method × β × 5 seeds, MAE/RMSE/nDCG@5/AUC on the cold users' target ratings, selection on valid):

    python -m experiments.ablate --config=genre_split_ml100k --sweep=beta \
      --compare=item_user_offset,source_item_user_offset

`arg`: 'ml1m' (same on MovieLens-1M), 'smoke' (seconds, same data), 'tiny' (synthetic data; unit tests).
Protocol (`transfer_meta/data/protocols/genre_split.py`): items go to the domain of their first listed genre;
a fraction β of the overlapping users are cold in the target (K target support ratings, the rest is the test
query), 10% are validation users held out the same way. The network is MeLU's (side features, embeddings 32,
decision layers 64-64) predicting the residual over item mean + user offset (fit on target training rows and the
task's support); MAML adapts the decision layers (2 steps), fine-tuning the same set, Reptile every parameter
(its outer update only moves what it adapts), `none` does not adapt. Baselines: the reference scorers fit on
target training rows (target-only), `source_item_user_offset` (source-only: on this split, a user's shrunk mean
source rating) and `item_mean_source_offset` (target item mean + the user's offset measured on their source
ratings). Measured numbers: experiments/README.md "Cross-domain".
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config

MELU_ADAPT = r"decision_|output"
CROSS_BASELINES = ("source_item_user_offset", "item_mean_source_offset")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg` None/'' (ML-100K), 'ml1m', 'smoke' or 'tiny' (see the module docstring)."""
  c = default_config()
  c.dataset_name = "ml-100k"
  c.dataset = ml_collections.ConfigDict()
  c.protocol_name = "genre_split"
  c.protocol = ml_collections.ConfigDict(dict(beta=0.5, n_support=5, min_query=10, n_query=10, valid_fraction=0.1))
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=32, hidden=(64, 64), use_user_ids=False, use_item_ids=True))
  c.learner_name = "melu"
  inner = dict(inner_steps=2, inner_lr=0.05)
  c.learner = ml_collections.ConfigDict(dict(inner, first_order=False))
  c.compare_learners = ("reptile", "finetune", "none")
  c.compare_kwargs = ml_collections.ConfigDict(
    {"reptile": dict(inner), "finetune": dict(inner, adapt_regex=MELU_ADAPT)}
  )
  c.baselines = (*default_config().baselines, *CROSS_BASELINES)
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=5e-4))
  c.seeds = 5
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 300
  c.log_every = 10
  c.eval_every = 20
  c.checkpoint_every = 50
  c.select_metric, c.select_mode = "valid/mae", "min"
  c.residual, c.resample_train = "item_user_offset", True
  if arg == "ml1m":
    c.dataset_name = "ml-1m"
  elif arg == "smoke":
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every = 2, 20, 10, 10
  elif arg == "tiny":  # unit tests: synthetic data, a small network, a few steps
    c.dataset_name = "synthetic"
    c.dataset = ml_collections.ConfigDict(dict(n_users=120, n_items=100, ratings_per_user=(20, 40), seed=0))
    c.protocol.min_query = 6
    c.model = ml_collections.ConfigDict(dict(emb_dim=8, hidden=(16, 16), use_user_ids=False, use_item_ids=True))
    c.compare_learners, c.compare_kwargs = ("none",), ml_collections.ConfigDict()
    c.baselines = ("global_mean", "item_user_offset", *CROSS_BASELINES)
    c.seeds, c.batch_size, c.eval_batch_size = 1, 8, 32
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 6, 3, 3, 1
    c.buckets = (8, 48)
    c.progress, c.min_tasks = False, 0
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'ml1m', 'smoke', 'tiny'")
  c.lock()
  return c


# The source-only model: the same network pretrained on the SOURCE rows only, fine-tuned on each support like
# `finetune`, selected on target valid; beside it `none` trained on target tasks without the residual (the same
# network, target-only). Strategies take no residual (train.build_experiment).
SOURCE_ONLY = {
  "strategy_name": "pretrain_finetune",
  "strategy": dict(
    stream="source_interactions",
    pretrain_steps=300,
    batch_size=256,
    inner_steps=2,
    inner_lr=0.05,
    adapt_regex=MELU_ADAPT,
  ),
  "learner_name": "none",
  "learner": {},
  "compare_learners": (),
  "compare_kwargs": {},
  "residual": "",
}


def sweep(name: str | None = None) -> list[dict]:
  """Runs for `experiments/ablate.py`: sweep 'beta' (the default) the three β values, 0.5 (the headline) first;
  'beta05' only 0.5 (the same run directory, so either reuses the other's run); 'source_only' the source-only
  model at β = 0.5 (`SOURCE_ONLY`)."""
  if name == "beta05":
    return [{"protocol.beta": 0.5}]
  if name == "source_only":
    return [{**SOURCE_ONLY, "protocol.beta": 0.5}]
  if name not in (None, "beta"):
    raise ValueError(f"unknown sweep {name!r}; valid: 'beta', 'beta05', 'source_only'")
  return [{"protocol.beta": b} for b in (0.5, 0.2, 0.8)]
