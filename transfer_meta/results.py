"""What a run leaves besides checkpoints: reference baselines on its splits, results.json, the printed table,
config.json and split_manifest.json (written by process 0 only)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from transfer_meta import evaluate, ranking_eval, report
from transfer_meta.baselines import evaluate_baselines
from transfer_meta.runlog import atomic_write

if TYPE_CHECKING:
  from transfer_meta.train import Experiment


def run_baselines(exp: Experiment) -> dict:
  """Each of `config.baselines` on every seed's scenarios: {name: [{scenario: {metric: float}}] per seed}."""
  names = tuple(exp.config.baselines)
  if not names:
    return {}
  per_seed = [evaluate_baselines(exp.data, st.split, names, seed=st.seed) for st in exp.seeds]
  per_seed = ranking_eval.rank_baselines(exp, per_seed)  # no-op unless config.eval_ranking goes beyond 'query'
  return {name: [r[name] for r in per_seed] for name in names}


# Stage streams whose batches are tasks (support/query), as the learners' meta-steps (`stages.STREAMS`).
TASK_STREAMS = ("tasks", "source_tasks")


def stage_tasks(stages: list[dict], n_seeds: int) -> int:
  """Tasks a strategy trained on, every seed together: steps x batch size of its task-batch stages.

  Args:
    stages: results.json "strategy" "stages" (`stages.stage_info`): name, stream, steps, batch_size per stage.
    n_seeds: seeds trained together (each stage step draws `batch_size` tasks per seed).
  Returns:
    The count; interaction-minibatch stages (pretraining) add none, though their time counts in the seconds.
  """
  if n_seeds < 1 or any(s["steps"] < 0 or s["batch_size"] < 1 for s in stages):
    raise ValueError(f"want n_seeds >= 1, steps >= 0 and batch_size >= 1 per stage, got {n_seeds}, {stages}")
  return sum(s["steps"] * s["batch_size"] for s in stages if s["stream"] in TASK_STREAMS) * n_seeds


def tasks_per_second(tasks: int, seconds: float) -> float | None:
  """`tasks` / `seconds` (2 decimals); None when the method trained on no task (a '-' in the tables)."""
  return round(tasks / max(seconds, 1e-9), 2) if tasks else None


def throughput(config, n_seeds: int, trained: dict, strategy_stages: dict | None = None) -> dict:
  """results.json "train" "learners": {method: {seconds, tasks, tasks_per_second}}, the same figure for every
  method: tasks of training (a learner's num_steps x batch_size; a strategy's `stage_tasks`), every seed, per
  second of that method's whole training (`Trained.seconds`: every stage, the first step's compilation and the
  validation passes inside the timed loop, as for the learners).

  Args:
    config: the experiment config (num_steps, batch_size of the learners' meta-steps).
    n_seeds: seeds trained together.
    trained: {method: `train.Trained`}.
    strategy_stages: {strategy name: its `stages.stage_info`} for the methods that are strategies.
  """
  stages = strategy_stages or {}
  out = {}
  for n, t in trained.items():
    tasks = stage_tasks(stages[n], n_seeds) if n in stages else config.num_steps * config.batch_size * n_seeds
    out[n] = {"seconds": round(t.seconds, 3), "tasks": tasks, "tasks_per_second": tasks_per_second(tasks, t.seconds)}
  return out


def build_results(
  exp: Experiment, main: dict, comparisons: dict, base: dict, trained: dict, strategy_stages: dict | None = None
) -> dict:
  """The results.json dict (DESIGN.md); `strategy_stages` as `throughput`'s."""
  config, split = exp.config, exp.seeds[0].split
  name = config.learner_name
  learners = throughput(config, len(exp.seeds), trained, strategy_stages)
  train = {
    "steps": config.num_steps,
    "seconds": round(trained[name].seconds, 3),
    "tasks_per_second": learners[name]["tasks_per_second"],
    "learners": learners,
  }
  return {
    "dataset": config.dataset_name,
    "protocol": split.protocol,
    "protocol_version": split.version,
    "learner": name,
    "model": config.model_name,
    "seeds": [st.seed for st in exp.seeds],
    "metrics": evaluate.summarize(main),
    "train": train,
    "comparisons": {n: evaluate.summarize(v) for n, v in comparisons.items()},
    "baselines": {n: evaluate.summarize(v) for n, v in base.items()},
    "selection": {
      "metric": config.select_metric,
      "mode": config.select_mode,
      "best_step": {n: t.selection.step for n, t in trained.items()},
      "best_value": {n: t.selection.value for n, t in trained.items()},
    },
    "manifest_hashes": [st.split.manifest["hash"] for st in exp.seeds],
  }


def results_table(results: dict) -> str:
  """Markdown table of scenarios x metrics: the learner, its comparisons, then the reference baselines."""
  methods = {results["learner"]: results["metrics"], **results.get("comparisons", {}), **results.get("baselines", {})}
  per_seed = {
    m: {s: {k: v["per_seed"] for k, v in per.items()} for s, per in metrics.items()} for m, metrics in methods.items()
  }
  rows = report.summarize(per_seed)
  table = report.to_markdown(rows, [m for m in report.columns(rows) if "/" not in m])  # not 'auc/tasks' counts
  from transfer_meta.learners import DISPLAY_NAMES

  legend = [
    f"{m} = {DISPLAY_NAMES[m]}" for m in (results["learner"], *results.get("comparisons", {})) if m in DISPLAY_NAMES
  ]
  return table + ("\nlearners: " + ", ".join(legend) + "\n" if legend else "")


def config_diff(old: dict, new: dict) -> list[str]:
  """The top-level keys on which a recorded run's `config.json` (`old`) and `new` differ.

  A key `new` has and `old` lacks is not a difference when its value in `new` is the trainer's default
  (`train.default_config()`): the field was added to the trainer after that run was made, and a new field's
  default keeps the behaviour it had before (e.g. `length_groups=0`). A key at a non-default value, a key
  `old` has and `new` lacks, and any changed value are differences.
  """
  from transfer_meta.train import default_config

  defaults = json.loads(default_config().to_json())
  added_at_default = {k for k in set(new) - set(old) if k in defaults and new[k] == defaults[k]}
  return sorted(k for k in set(old) | set(new) if k not in added_at_default and old.get(k) != new.get(k))


def write_run_files(exp: Experiment, workdir: str) -> None:
  """config.json (refusing a workdir that holds a different run) and split_manifest.json."""
  path = os.path.join(workdir, "config.json")
  config_json = json.loads(exp.config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = config_diff(old, config_json)
    if diff:
      raise ValueError(f"{workdir} holds a run with a different config (keys {diff}); use a fresh --workdir")
  atomic_write(path, json.dumps(config_json, indent=1, sort_keys=True))
  atomic_write(
    os.path.join(workdir, "split_manifest.json"), json.dumps([st.split.manifest for st in exp.seeds], indent=1)
  )
  ranking = ranking_eval.ranking_manifest(exp)  # the sampled negatives, when config.eval_ranking asks for them
  if ranking is not None:
    atomic_write(os.path.join(workdir, "ranking_manifest.json"), json.dumps(ranking))
