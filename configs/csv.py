"""MAML-MeLU on your own ratings file (+ optional user/item feature tables), everything from the command line.

Command (the example files come from `python -m transfer_meta.data.csv_export --out=runs/my_data`, which
writes the synthetic dataset as ratings.csv, users.csv, items.csv; point the paths at your own files):

    python -m transfer_meta.main --config=configs/csv.py --workdir=runs/my_csv \\
      --config.dataset.interactions=runs/my_data/ratings.csv \\
      --config.dataset.users_file=runs/my_data/users.csv --config.dataset.items_file=runs/my_data/items.csv \\
      --config.dataset.user_categorical=age,gender,occupation --config.dataset.multi_hot="items.genre=|" \\
      --config.dataset.item_year_column=year --config.dataset.name=my_data

Every `load_csv` keyword is a field of `config.dataset` (`--help` lists them with their defaults):
  interactions, users_file, items_file   file paths (.csv, .tsv, .parquet); '' or unset: no feature table
  columns.user/.item/.rating/.timestamp   column names; columns.timestamp='' when the file has none
  user_categorical, item_categorical, item_text   column names, comma-separated ('age,gender')
  multi_hot                      '<users|items>.<column>=<separator>' entries, space-separated
  item_year_column               items column with the release year (the melu protocol needs one)
  rating_scale                   inclusive (low, high), e.g. '(0.5, 5)' for half stars
  sep, decimal, encoding         delimiter (default: tab for .tsv, else ','), decimal mark, text encoding
  duplicates                     repeated (user, item) pairs: 'error' | 'last' | 'mean'
  name                           the dataset's name (default: the file's stem)
Protocol parameters are `config.protocol.*` (every keyword of the protocol named by `protocol_name`):
`--config.protocol.year_cutoff=2010`, `--config.protocol.min_ratings=5`, ...; without item years use
`--config.protocol_name=recbole_metarec`. The year cutoff of a dataset the library does not know (any name but
ml-100k / ml-1m) is the release year that leaves the share of new items (among dated ones) closest to 20%;
a task set with fewer than `config.min_tasks` tasks (default 20) is warned about, with the parameters that
would give it more.

The model is MeLU's network with id embeddings as well as side features (`use_ids=True`), so a file with no
feature tables still has inputs; 3 seeds x 300 meta-steps. Expected figures depend on your data; on the
exported synthetic example (2 CPU cores) it runs in about a minute. `arg` 'smoke' shrinks it to seconds.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from transfer_meta.train import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CSV config; `arg` 'smoke' shrinks it to seconds (2 seeds, 10 steps)."""
  c = default_config()
  c.dataset_name = "csv"
  c.dataset = ml_collections.ConfigDict(
    dict(
      interactions="ratings.csv",
      users_file=config_dict.placeholder(str),  # load_csv's users= (a ConfigDict field cannot be 'items')
      items_file=config_dict.placeholder(str),
      columns=dict(user="user", item="item", rating="rating", timestamp="timestamp"),
      user_categorical="",
      item_categorical="",
      multi_hot="",
      item_year_column=config_dict.placeholder(str),
      item_text="",
      rating_scale=(1.0, 5.0),
      duplicates="error",
      name=config_dict.placeholder(str),
      sep=config_dict.placeholder(str),
      decimal=".",
      encoding="utf-8",
    )
  )
  c.protocol_name = "melu"
  c.protocol = ml_collections.ConfigDict(dict(n_query=10, min_support=1))
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=32, hidden=(64, 64), use_ids=True))
  c.learner_name = "melu"
  c.learner = ml_collections.ConfigDict(dict(inner_steps=2, inner_lr=0.05))
  c.compare_learners = ("none",)
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=5e-4))
  c.seeds = 3
  c.num_steps = 300
  c.eval_every = 20
  c.checkpoint_every = 50
  if arg == "smoke":
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 2, 10, 5, 5, 5
    c.model.emb_dim, c.model.hidden, c.batch_size = 8, (16,), 8
    c.progress = False
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'smoke'")
  c.lock()
  return c
