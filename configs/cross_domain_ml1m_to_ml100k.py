"""Cross-domain methods (issue 10) and item text (issue 11) on `ml1m_to_ml100k`: item overlap, users disjoint.

The table (every row of `sweep('methods')`, with and without MiniLM title embeddings, β = 0.5, 5 seeds; wall
time and figures in experiments/README.md "Cross-domain: ml1m_to_ml100k (issues 10, 11)"):

    python -m experiments.ablate --config=cross_domain_ml1m_to_ml100k --sweep=methods \
      --compare=item_user_offset,source_item_user_offset --compare_metrics=mae,rmse,ndcg@5
    python -m experiments.text_pairs \
      --ablate=experiments/results/ablate_cross_domain_ml1m_to_ml100k_methods.json   # paired Δ, with - without text

One run (the base: CMF beside the learner `none`, 5 seeds; one sweep row is this plus its overrides; wall and
CPU seconds of every row on 2 CPU cores: the README section):

    python -m transfer_meta.main --config=configs/cross_domain_ml1m_to_ml100k.py --workdir=runs/cd_ml1m_cmf

Data `ml-1m+ml-100k` and protocol `ml1m_to_ml100k` (`configs/ml1m_to_ml100k.py`): source ML-1M, target ML-100K,
1,539 items shared by exact title, no user shared; β of the ML-100K users cold (K = 5 target support ratings, the
rest the test query), 10% validation users held out the same way; selection on valid MAE only.

Rows (`sweep`):
  'learners'     MAML-MeLU and `none` trained on TARGET tasks, the residual over item mean + user offset
                 (`configs/ml1m_to_ml100k.py`'s network and training, the comparison learners cut to `none`).
  <strategy>     the cross-domain methods that apply with shared ITEMS and disjoint users, with
                 `configs/cross_domain_ml100k.py`'s settings (`STRATEGY_KWARGS`, not tuned), the residual off,
                 beside the learner `none` (100 steps): 'cmf' (one MF over both rating matrices: its item factors
                 are shared through the shared item ids, its user factors are disjoint), 'dann', 'mmd', 'coral'
                 (a shared side-feature encoder aligned across domains) and 'meta_source' (MAML-MeLU meta-trained
                 on ML-1M user tasks, adapted on the cold users' K target ratings).
  Every run also evaluates the reference scorers: target-only (global/item mean, item mean + user offset, fit
  on target training rows and the support) and source-only `source_item_user_offset` (on this benchmark: the
  ML-1M item means, shrunk, since a cold user has no source rating; the ML-1M global mean for a target-only item).
  `source_item_support_offset` (the ML-1M item means + the cold user's offset on their K support ratings against
  them) came after the runs: the table scores it on each run's own splits with `--late_baselines` (not in
  `baselines`, so the finished runs stay reusable):

    python -m experiments.ablate --config=cross_domain_ml1m_to_ml100k --sweep=learners+cmf+meta_source+coral+dann+mmd \
      --late_baselines=source_item_support_offset --compare=item_user_offset,source_item_user_offset \
      --compare_metrics=mae,rmse,ndcg@5 --set progress=False
Not rows: `NOT_APPLICABLE` (EMCDR, EMCDR-MLP, PTUPCDR map USER vectors learned on overlapping users; no user
is shared here, and they fail with a DataError saying so).

`arg`: 'smoke' (every stage and learner at 10 steps, 1 seed: seconds of training; tests and smoke runs).
"""

from __future__ import annotations

import ml_collections

from transfer_meta import config_files

APPLICABLE = ("cmf", "dann", "mmd", "coral", "meta_source")
NOT_APPLICABLE = {
  name: "maps user vectors learned on users with ratings in both domains; ml1m_to_ml100k shares no user"
  for name in ("emcdr", "emcdr_mlp", "ptupcdr")
}
# Every row, in run order (the cheaper rows first, the costly text run of the learners last); '<row>_text' is
# <row> with `dataset.text_features=True` (MiniLM title embeddings).
ROWS = ("learners", "cmf", "meta_source", "meta_source_text", "coral", "dann", "mmd", "learners_text")
# The 'learners' row over the base: configs/ml1m_to_ml100k.py's learner MAML-MeLU (residual, 300 steps, Adam 5e-4)
# with `none` as the only comparison learner.
LEARNERS = {
  "strategy_name": "",
  "learner_name": "melu",
  "learner": {"inner_steps": 2, "inner_lr": 0.05, "first_order": False},
  "compare_learners": ("none",),
  "residual": "item_user_offset",
  "num_steps": 300,
  "eval_every": 20,
  "optimizer.learning_rate": 5e-4,
}


def _load(name: str):
  return config_files.sibling(__file__, name)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The strategy rows' base, which `sweep()` turns into every row: `configs/ml1m_to_ml100k.py` (data, protocol,
  network, baselines) with `configs/cross_domain_ml100k.py`'s strategy setting (the learner `none` alone,
  100 steps, no residual: the source streams carry no reference prior; Adam 2e-3; selection every 100 steps),
  strategy 'cmf', and the text switch `dataset.text_features` (off). `arg` None/'' or 'smoke' (10 steps, 1 seed)."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'smoke'")
  smoke = arg == "smoke"
  c = _load("ml1m_to_ml100k").get_config(arg)
  with c.unlocked():
    c.dataset = ml_collections.ConfigDict(dict(text_features=False, text_template="{title}"))
    c.residual, c.learner_name, c.learner = "", "none", ml_collections.ConfigDict()
    c.compare_learners, c.compare_kwargs = (), ml_collections.ConfigDict()
    c.optimizer = ml_collections.ConfigDict(dict(learning_rate=2e-3))
    c.num_steps, c.eval_every, c.checkpoint_every = 100, 100, 50
    c.strategy_name, c.strategy = "cmf", ml_collections.ConfigDict(strategy_kwargs("cmf", smoke))
    if smoke:
      c.seeds, c.num_steps, c.eval_every, c.checkpoint_every = 1, 10, 5, 10
  c.lock()
  return c


def strategy_kwargs(name: str, smoke: bool = False, cd=None) -> dict:
  """`configs/cross_domain_ml100k.py`'s keywords of strategy `name` (its SMOKE step counts with `smoke`)."""
  if name in NOT_APPLICABLE:
    raise ValueError(f"strategy {name!r} does not apply to ml1m_to_ml100k: it {NOT_APPLICABLE[name]}")
  if name not in APPLICABLE:
    raise ValueError(f"unknown strategy {name!r}; valid on ml1m_to_ml100k: {list(APPLICABLE)}")
  cd = _load("cross_domain_ml100k") if cd is None else cd
  return {**cd.STRATEGY_KWARGS[name], **(cd.SMOKE[name] if smoke else {})}


def _row(name: str, smoke: bool) -> dict:
  """The overrides of row `name` ('learners', a strategy of `APPLICABLE`, either with '_text')."""
  base = name.removesuffix("_text")
  if base == "learners":
    out = dict(LEARNERS) | ({"num_steps": 10, "eval_every": 5} if smoke else {})
  else:
    out = {"strategy_name": base, "strategy": strategy_kwargs(base, smoke)}
  return out | ({"dataset.text_features": True} if name.endswith("_text") else {})


def sweep(name: str | None = None) -> list[dict]:
  """Runs for `experiments.ablate`: 'methods' (the default: every row of `ROWS`, in that order), 'methods_smoke'
  (the same at 10 steps per stage and learner), or '+'-joined names of `ROWS` (a run's label, hence its
  directory, is that of 'methods' when 'learners' and a strategy row are among the names: e.g. to tabulate the
  finished runs)."""
  smoke = name == "methods_smoke"
  picked = ROWS if name in (None, "methods", "methods_smoke") else tuple(p for p in name.split("+") if p)
  bad = [p for p in picked if p not in ROWS]
  if bad or not picked:
    raise ValueError(f"unknown sweep {name!r}; valid: 'methods', 'methods_smoke' or '+'-joined names of {list(ROWS)}")
  return [_row(p, smoke) for p in picked]
