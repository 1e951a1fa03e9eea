"""Cross-domain methods (issue 10) on MovieLens-100K `genre_split`, beside target-only and source-only baselines.

The table (every method of `sweep()`, β = 0.5, 5 seeds; wall time in experiments/README.md "Cross-domain methods"):

    python -m experiments.ablate --config=cross_domain_ml100k --sweep=methods \
      --compare=item_user_offset,source_item_user_offset

One run of it (`arg`: '[beta02|beta05|beta08][,<strategy>][,smoke]', default beta05 and emcdr; 2 CPU cores at
load ~28: about 10 min for 5 seeds):

    python -m transfer_meta.main --config=configs/cross_domain_ml100k.py --workdir=runs/cd_emcdr
    python -m transfer_meta.main --config=configs/cross_domain_ml100k.py:beta05,ptupcdr --workdir=runs/cd_ptupcdr

The data, protocol and network are those of `configs/genre_split_ml100k.py` (K = 5 target support ratings per
cold user, 10% validation users, selection on valid MAE only) with the residual off (the stage streams carry no
reference prior). Every run also trains the learner `none` (100 steps) on the MeLU network (side features, item
ids; no adaptation: a target-only network) and the reference baselines: target-only global/item mean and item mean +
user offset (fit on target training rows and the cold user's support), source-only `source_item_user_offset`,
and `item_mean_source_offset` (target item mean + the user's offset measured on their source ratings). Method
settings (`STRATEGY_KWARGS`) are fixed, not tuned: MFs of width 32, Adam 2e-3, 512 ratings per step; 2 SGD
steps (lr 0.05) of per-user adaptation on the support. `arg` ',smoke' shrinks every stage to 10 steps, 1 seed.
"""

from __future__ import annotations

import re

import ml_collections

from transfer_meta import config_files
from transfer_meta.train import default_config


def _genre_split():
  """configs/genre_split_ml100k.py, the benchmark this table extends (its source-only model row)."""
  return config_files.sibling(__file__, "genre_split_ml100k")


MF = dict(dim=32, batch_size=512, learning_rate=2e-3, inner_steps=2, inner_lr=0.05)
ALIGN = dict(emb_dim=16, hidden=(64, 32), steps=600, batch_size=512, learning_rate=2e-3, inner_steps=2, inner_lr=0.05)
STRATEGY_KWARGS = {
  "ptupcdr": dict(MF, mf_steps=500, meta_steps=400, hidden=64, history_len=50),
  "emcdr": dict(MF, mf_steps=500, map_steps=300, map_batch_size=64),
  "cmf": dict(MF, steps=1000, alpha=0.5),
  "dann": dict(ALIGN, weight=0.1, lambda_max=1.0),
  "mmd": dict(ALIGN, weight=1.0),
  "coral": dict(ALIGN, weight=1.0),
  "emcdr_mlp": dict(MF, mf_steps=500, map_steps=300, map_batch_size=64, hidden=64),
  "meta_source": dict(
    learner_name="melu", learner=dict(inner_steps=2, inner_lr=0.05, adapt_regex=r"decision_|output"), source_steps=150
  ),
  # the source-only MODEL: the network pretrained on the source rows only, fine-tuned on each support
  # (genre_split_ml100k.SOURCE_ONLY; the other fields it sets are this config's already)
  "pretrain_finetune": dict(_genre_split().SOURCE_ONLY["strategy"]),
}
SMOKE = {
  "emcdr": dict(mf_steps=10, map_steps=10),
  "emcdr_mlp": dict(mf_steps=10, map_steps=10),
  "ptupcdr": dict(mf_steps=10, meta_steps=10),
  "cmf": dict(steps=10),
  "dann": dict(steps=10),
  "mmd": dict(steps=10),
  "coral": dict(steps=10),
  "meta_source": dict(source_steps=10),
  "pretrain_finetune": dict(pretrain_steps=10),
}
BETAS = {"beta02": 0.2, "beta05": 0.5, "beta08": 0.8}
DATASETS = {"ml1m": "ml-1m"}  # arg -> dataset (default ml-100k)
CAP = re.compile(r"cap([1-9][0-9]*)$")  # 'cap200': protocol max_query=200


def _base() -> ml_collections.ConfigDict:
  """The data, protocol, network and evaluation of configs/genre_split_ml100k.py (K = 5, 10% validation users)."""
  c = default_config()
  c.dataset_name, c.dataset = "ml-100k", ml_collections.ConfigDict()
  c.protocol_name = "genre_split"
  c.protocol = ml_collections.ConfigDict(
    dict(beta=0.5, n_support=5, min_query=10, n_query=10, valid_fraction=0.1, max_query=None)
  )
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=32, hidden=(64, 64), use_user_ids=False, use_item_ids=True))
  c.baselines = (*default_config().baselines, "source_item_user_offset", "item_mean_source_offset")
  c.optimizer_name, c.optimizer = "adam", ml_collections.ConfigDict(dict(learning_rate=2e-3))
  c.seeds, c.batch_size, c.eval_batch_size, c.log_every = 5, 32, 64, 10
  c.select_metric, c.select_mode = "valid/mae", "min"
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: '[beta02|beta05|beta08][,cap<N>][,ml1m][,<strategy>][,smoke]' (default beta05, no cap, ML-100K, emcdr,
  full size). 'cap<N>' caps every held-out user's query (valid and cold) at N random target ratings (protocol
  `max_query`; the rest are in no set); 'ml1m' runs the same benchmark on MovieLens-1M."""
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts if p not in (*BETAS, *STRATEGY_KWARGS, *DATASETS, "smoke") and not CAP.match(p)]
  if unknown:
    raise ValueError(
      f"unknown config arg {arg!r} ({unknown}); valid: '[{'|'.join(BETAS)}][,cap<N>][,{'|'.join(DATASETS)}]"
      f"[,<one of {list(STRATEGY_KWARGS)}>][,smoke]'"
    )
  name = next((p for p in parts if p in STRATEGY_KWARGS), "emcdr")
  beta = next((BETAS[p] for p in parts if p in BETAS), 0.5)
  cap = next((int(CAP.match(p).group(1)) for p in parts if CAP.match(p)), None)
  smoke = "smoke" in parts
  c = _base()
  c.protocol.beta, c.protocol.max_query = beta, cap
  c.dataset_name = next((DATASETS[p] for p in parts if p in DATASETS), c.dataset_name)
  c.residual, c.resample_train = "", False
  c.learner_name, c.learner = "none", ml_collections.ConfigDict()
  c.compare_learners, c.compare_kwargs = (), ml_collections.ConfigDict()
  c.num_steps, c.eval_every, c.checkpoint_every = 100, 50, 100
  c.strategy_name = name
  c.strategy = ml_collections.ConfigDict(_kwargs(name, smoke))
  if smoke:
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every = 1, 10, 5, 10
  c.lock()
  return c


def _kwargs(name: str, smoke: bool) -> dict:
  return {**STRATEGY_KWARGS[name], **(SMOKE[name] if smoke else {})}


def sweep(name: str | None = None) -> list[dict]:
  """One override dict per method, for `experiments.ablate` (the strategy's keywords ride along with its name).

  `name`: None / 'methods' (every method, in order), 'methods_tail' (the last four in reverse order: a second
  process can run them while the first runs the others; `ablate` reuses finished runs, so a last 'methods'
  command only tabulates), 'methods_smoke' (every method at 10 steps per stage) or names joined by '+'
  ('emcdr+cmf': those methods' runs, e.g. to tabulate the finished ones).
  """
  smoke = name == "methods_smoke"
  picked = [n for n in (name or "").split("+") if n in STRATEGY_KWARGS]
  if name not in (None, "methods", "methods_tail", "methods_smoke") and not (picked and "+" in name):
    raise ValueError(
      f"unknown sweep {name!r}; valid: 'methods', 'methods_tail', 'methods_smoke' or '+'-joined names of "
      f"{list(STRATEGY_KWARGS)} (at least two)"
    )
  out = [{"strategy_name": n, "strategy": _kwargs(n, smoke)} for n in STRATEGY_KWARGS]
  if picked:
    return [o for o in out if o["strategy_name"] in picked]
  return out[::-1][:4] if name == "methods_tail" else out
