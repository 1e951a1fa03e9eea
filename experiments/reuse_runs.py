"""Rebuild the finished-run workdirs of a strategies table from its .json, when the runs directory is gone, so that
`experiments.strategies` reuses those runs and reruns only the rows whose config has changed since.

    python -m experiments.reuse_runs --table=experiments/results/strategies_peers_ml1m_click.json --set progress=False
    python -m experiments.strategies --config=peers_ml1m --protocols=click --set progress=False

The table's .json holds every row's full results.json (`experiments.strategies` writes it). A row is restored
(results.json, config.json of today's grid cell, wall_time.json with the recorded wall time) only when what the
recorded results say of the run agrees with today's cell (`mismatches`: dataset, protocol, learner and comparisons,
model, seeds, steps, selection metric, strategy name and keywords, each stage's length and batch);
otherwise it is left out, and `experiments.strategies` trains it afresh. What results.json does not record (e.g. a
learner's keywords other than those above, a factory's defaults) cannot be checked: restore only a table written
by code whose configs and defaults you have compared (`git diff <the table's commit> -- configs/ transfer_meta/`).
An existing workdir is never overwritten. Pass the same `--set`/`--seeds` as the table's command (its header).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ml_collections

from experiments import runner
from experiments import strategies as table
from transfer_meta.strategies import get_strategy
from transfer_meta.train import build_experiment


def _stage_lengths(stages: list[dict]) -> list[tuple]:
  return [(s["name"], s["stream"], s["steps"], s["batch_size"]) for s in stages]


def mismatches(results: dict, cell: ml_collections.ConfigDict, stages: list[dict] | None) -> list[str]:
  """What the recorded `results` (a results.json) says of its run that differs from today's grid `cell`.

  Args:
    results: the recorded results.json of one table row.
    cell: that row's locked config, as `experiments.strategies.grid` builds it today.
    stages: today's `stages.stage_info` of the cell's strategy (None when the row is no strategy).
  Returns:
    One line per difference ('field: recorded X, now Y'); [] when the run can be reused.
  """
  now = {
    "dataset": cell.dataset_name,
    "protocol": cell.protocol_name,
    "learner": cell.learner_name,
    "comparisons": sorted([*cell.compare_learners, *([cell.strategy_name] if cell.strategy_name else [])]),
    "model": cell.model_name,
    "seeds": list(range(cell.seeds)),
    "steps": cell.num_steps,
    "selection": [cell.select_metric, cell.select_mode],
    "strategy": [cell.strategy_name, cell.strategy.to_dict()] if cell.strategy_name else None,
    "stages": _stage_lengths(stages) if stages is not None else None,
  }
  strategy = results.get("strategy")
  recorded = {
    "dataset": results["dataset"],
    "protocol": results["protocol"],
    "learner": results["learner"],
    "comparisons": sorted(results.get("comparisons", {})),
    "model": results["model"],
    "seeds": results["seeds"],
    "steps": results["train"]["steps"],
    "selection": [results["selection"]["metric"], results["selection"]["mode"]],
    "strategy": [strategy["name"], strategy["kwargs"]] if strategy else None,
    "stages": _stage_lengths(strategy["stages"]) if strategy else None,
  }
  return [f"{k}: recorded {recorded[k]!r}, now {now[k]!r}" for k in now if recorded[k] != now[k]]


def _wall(text: str) -> float | None:
  """'853.1 s' or '853.1 s (reused run)' -> 853.1; 'reused run' -> None."""
  head = text.split(" s", 1)[0]
  try:
    return float(head)
  except ValueError:
    return None


def _stages_now(cell: ml_collections.ConfigDict, exp_cache: dict) -> list[dict] | None:
  """Today's stage list of the cell's strategy (built on the cell's experiment: data and protocol, no training)."""
  if not cell.strategy_name:
    return None
  key = json.dumps(runner.config_json(cell), sort_keys=True)
  if key not in exp_cache:
    from transfer_meta import stages  # noqa: PLC0415

    exp = build_experiment(runner.apply_overrides(cell, {"seeds": 1}))  # the stages do not depend on the seeds
    strategy = get_strategy(cell.strategy_name, exp.model, cell, exp.spec, exp=exp, **cell.strategy.to_dict())
    exp_cache[key] = stages.stage_info(strategy)
  return exp_cache[key]


def restore(table_path: str, runs: str, base: dict, smoke: bool = False) -> dict[str, list[str]]:
  """Writes the reusable rows of a strategies table's .json under `runs`, as `experiments.strategies` lays out its
  workdirs (RUNS/strategies/<config>[-smoke]/<protocol>/<row>).

  Args:
    table_path: the table's .json ({"config", "protocol", "runs": [{"strategy": row, "wall", "results"}]}).
    runs: the runs root.
    base: the overrides the table's command applied to every run (`--seeds`, `--set`).
    smoke: the table was written with `--smoke`.
  Returns:
    {row: [why it was not restored]}, [] for each restored row.
  """
  with open(table_path) as f:
    saved = json.load(f)
  spec, protocol = saved["config"], saved["protocol"]
  name = runner.config_name(spec) + ("-smoke" if smoke else "")
  cells = {row: cell for p, row, cell in table.grid(spec, [protocol], base, smoke) if p == protocol}
  cache, out = {}, {}
  for record in saved["runs"]:
    row, results = record["strategy"], record["results"]
    workdir = os.path.join(runs, "strategies", name, protocol, row)
    if row not in cells:
      out[row] = [f"no row {row!r} in today's grid ({sorted(cells)})"]
    elif os.path.exists(os.path.join(workdir, "config.json")):
      out[row] = [f"{workdir} exists (never overwritten)"]
    else:
      out[row] = mismatches(results, cells[row], _stages_now(cells[row], cache))
    if out[row]:
      continue
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(runner.config_json(cells[row]), f, indent=1)
    with open(os.path.join(workdir, runner.WALL_FILE), "w") as f:
      json.dump({"wall_seconds": _wall(record["wall"]), "restored_from": table_path}, f)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--table", required=True, help="a strategies table's .json (experiments/results/...)")
  parser.add_argument("--smoke", action="store_true", help="the table was written with --smoke")
  runner.add_run_args(parser, "RUNS/strategies/<config>/<protocol>/<row>")
  args = runner.parse_run_args(parser, argv)
  base = ({"seeds": args.seeds} if args.seeds is not None else {}) | runner.parse_sets(args.sets)
  for row, why in restore(args.table, args.runs, base, args.smoke).items():
    print(f"{row}: " + ("restored" if not why else "left to rerun: " + "; ".join(why)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
