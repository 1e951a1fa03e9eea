"""MeLU on MovieLens-100K under the RecBole-MetaRec protocol (rating setting), side by side with the peer.

Command (2 CPU cores: 3 min 39 s wall measured on a 2-core machine shared with other jobs):

    python -m transfer_meta.main --config=configs/recbole_metarec_ml100k.py --workdir=runs/recbole_metarec_ml100k

Protocol `recbole_metarec`: users with 13..100 ratings are tasks, split 8:1:1 by first appearance in the
shuffled interactions (heavier users land in train, as in the reference code); 10 query ratings per task, the
rest support; P/R/HR/nDCG/MRR@5 ranked inside each task's query, relevance = the 5 highest-rated query items.
Names without ':index' take the exact expectation over prediction ties; ':index' variants break every tie by
item position like the peer's `torch.topk` (that is the column to hold against the peer's numbers). MeLU as
in `melu_ml100k` (trained on MSE), selected on valid nDCG@5 every 20 of 300 steps.

Test nDCG@5, mean ± std over 5 seeds (peer: RecBole-MetaRec's measured figures, ML-100K, 5 seeds):

    method              ndcg_bin@5:index   ndcg_bin@5       peer nDCG@5
    MAML-MeLU           0.558 ± 0.019      0.720 ± 0.017
    FOMAML (FOMeLU)     0.560 ± 0.019      0.720 ± 0.021    0.500 ± 0.024
    none                0.566 ± 0.019      0.721 ± 0.017
    random              0.489 ± 0.011      0.658 ± 0.011    0.500
    constant            0.600 ± 0.021      0.672 ± 0.010    0.5755
    item_mean           0.611 ± 0.011      0.761 ± 0.009    0.634

Our FOMeLU beats the peer's (0.560 vs 0.500) and random, but with index tie-breaking no learner beats the
constant predictor (ties broken by index track relevance ties broken by index); with exact tie expectation
the learners beat random and constant, and the item mean beats them all.
"""

from __future__ import annotations

import ml_collections

from transfer_meta.train import default_config

MELU_ADAPT = r"decision_|output"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg` 'smoke' shrinks it to seconds (same data and protocol)."""
  c = default_config()
  c.dataset_name = "ml-100k"
  c.protocol_name = "recbole_metarec"
  c.protocol = ml_collections.ConfigDict(dict(setting="rating", n_query=10))
  c.model_name = "melu"
  c.model = ml_collections.ConfigDict(dict(emb_dim=32, hidden=(64, 64), use_ids=False, global_bias=3.5))
  c.learner_name = "melu"
  inner = dict(inner_steps=2, inner_lr=0.05, loss="mse")  # 'bce' in the click setting
  c.learner = ml_collections.ConfigDict(inner)
  c.compare_learners = ("fomaml", "none")
  c.compare_kwargs = ml_collections.ConfigDict(
    {"fomaml": dict(inner, adapt_regex=MELU_ADAPT), "none": dict(loss="mse")}
  )
  c.optimizer_name = "adam"
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=5e-4))
  c.seeds = 5
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 300
  c.log_every = 10
  c.eval_every = 20
  c.checkpoint_every = 50
  c.select_metric, c.select_mode = "valid/ndcg_bin@5", "max"
  if arg == "smoke":
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every = 2, 20, 10, 10
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'smoke'")
  c.lock()
  return c


def sweep() -> list[dict]:
  """Ablations (override dicts, dotted keys) that `experiments/ablate.py` expands."""
  out = [{"learner.inner_steps": k} for k in (0, 1, 3, 5)]
  out += [{"learner.inner_lr": lr} for lr in (0.01, 0.05, 0.1)]
  out += [{"support_cap": k} for k in (1, 3, 5, 10, 20, 0)]
  out += [
    {
      "protocol.setting": "click",
      "learner.loss": "bce",
      "compare_kwargs.fomaml.loss": "bce",
      "compare_kwargs.none.loss": "bce",
      "model.global_bias": 0.0,
    }
  ]
  return out
