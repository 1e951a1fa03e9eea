"""MAML-MeLU on your own ratings file (+ optional user/item feature tables), everything from the command line.

Command (as it stands it reads the example files in `examples/csv/`, the synthetic dataset written by
`transfer_meta.data.csv_export`; 3 seeds x 300 meta-steps, MAML-MeLU and `none`. Wall time on the 2 CPU cores
not yet measured idle: with the box at load ~20 from other jobs it ran ~1.2 s per meta-step, so ~12 min):

    python -m transfer_meta.main --config=configs/csv.py --workdir=runs/csv_example

On your own files, name them and their columns (this is the example again, spelled out):

    python -m transfer_meta.main --config=configs/csv.py --workdir=runs/my_csv \
      --config.dataset.interactions=examples/csv/ratings.csv --config.dataset.name=my_data \
      --config.dataset.users_file=examples/csv/users.csv --config.dataset.items_file=examples/csv/items.csv \
      --config.dataset.user_categorical=age,gender,occupation --config.dataset.item_categorical= \
      --config.dataset.multi_hot="items.genre=|" --config.dataset.item_year_column=year \
      --config.dataset.rating_scale="(1, 5)" --config.protocol.min_ratings=13 --config.protocol.year_cutoff=1994

Every `load_csv` keyword is a field of `config.dataset` (`--help` lists them with their defaults):
  interactions, users_file, items_file   paths (.csv, .tsv, .parquet); users_file/items_file '': no table
  columns.user/.item/.rating/.timestamp   column names; columns.timestamp='' when the file has none
  user_categorical, item_categorical, item_text   column names, comma-separated ('age,gender'); '': none
  multi_hot                      '<users|items>.<column>=<separator>' entries, space-separated
  item_year_column               items column with the release year (the melu protocol needs one)
  rating_scale                   inclusive (low, high), e.g. '(0.5, 5)' for half stars
  sep, decimal, encoding         delimiter (default: tab for .tsv, else ','), decimal mark, text encoding
  duplicates                     repeated (user, item) pairs: 'error' | 'last' | 'mean'
  name                           the dataset's name (default: the file's stem)
Protocol parameters are `config.protocol.*` (every keyword of the protocol named by `protocol_name`), e.g.
`--config.protocol.year_cutoff=2010`; without item years use `--config.protocol_name=recbole_metarec`.
Year cutoff of a dataset the library does not know (any name but ml-100k / ml-1m, see
`protocols.common.YEAR_CUTOFFS`): the release year that leaves the share of new items (among dated ones)
closest to 20%. A task set with fewer than `config.min_tasks` tasks (default 20) is warned about, with the
parameters that would give it more.

The model is MeLU's network with id embeddings as well as side features (`use_ids=True`), so a file with no
feature tables still has inputs. Expected figures depend on your data; this config makes no claim about them.
`arg` 'smoke' shrinks the run to seconds (2 seeds, 10 steps).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from transfer_meta.train import default_config

EXAMPLE = "examples/csv"  # relative to the repository root, where the commands run


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CSV config; `arg` 'smoke' shrinks it to seconds (2 seeds, 10 steps)."""
  c = default_config()
  c.dataset_name = "csv"
  c.dataset = ml_collections.ConfigDict(
    dict(
      interactions=f"{EXAMPLE}/ratings.csv",
      users_file=f"{EXAMPLE}/users.csv",  # load_csv's users= (a ConfigDict field cannot be called 'items')
      items_file=f"{EXAMPLE}/items.csv",
      columns=dict(user="user", item="item", rating="rating", timestamp="timestamp"),
      user_categorical="age,gender,occupation",
      item_categorical="",
      multi_hot="items.genre=|",
      item_year_column="year",
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


def sweep() -> list[dict]:
  """Ablations (override dicts, dotted keys) that `experiments/ablate.py` expands."""
  return [{"learner.inner_steps": k} for k in (0, 1, 3)] + [{"protocol.min_support": k} for k in (1, 3)]
