"""The strategies table: every strategy of a config's sweep x protocols x seeds, beside the MAML family and the
reference baselines -> experiments/results/strategies_<config>_<protocol>.{md,csv,json}.

    python -m experiments.strategies --config=strategies_ml100k                      # melu and item_cold, 5 seeds
    python -m experiments.strategies --config=strategies_ml100k --protocols=melu --seeds=2 --smoke

The grid (`grid`): per protocol, the config `get_config('<protocol>[,smoke]')`; its `sweep()` lists one override dict
per table row (`strategy_name`, `strategy`); an optional `sweep_rows()` labels the rows (default their strategy names)
when one strategy fills several, e.g. multitask and its single-task counterparts. The first row's run also trains the
config's learners (the MAML family and `none`); the others set `learner_name='none'` and no comparisons, so the MAML
family trains once per protocol and only their strategy row is kept. Strategies that report more heads (results.json
"strategy" "heads") get a second table, strategies_<config>_<protocol>_heads.{md,csv}, one row per run. Every method is
selected on validation only (each run's `select_metric`). Runs go to
RUNS/strategies/<config>/<protocol>/<row>/ and are reused or resumed like `experiments.ablate`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from experiments import ablate, runner
from transfer_meta import report
from transfer_meta.data import load_dataset

ONLY_STRATEGY = {"learner_name": "none", "learner": {}, "compare_learners": (), "compare_kwargs": {}}


def _smoke_steps(kwargs: dict) -> dict:
  """Every stage-length keyword (`*steps` but the per-task `inner_steps`) set to 20."""
  return {k: 20 if k.endswith("steps") and k != "inner_steps" else v for k, v in kwargs.items()}


def grid(spec: str, protocols: Sequence[str], base: dict, smoke: bool = False) -> list[tuple[str, str, object]]:
  """[(protocol, row label, locked config)] of the table, every override applied (typos fail before any run)."""
  module, _ = runner.config_module(spec)
  sweep = module.sweep()
  if not sweep or any("strategy_name" not in o for o in sweep):
    raise ValueError(f"config {spec!r}: sweep() must list override dicts that each set 'strategy_name'")
  rows = module.sweep_rows() if hasattr(module, "sweep_rows") else [o["strategy_name"] for o in sweep]
  if len(rows) != len(sweep) or len(set(rows)) != len(rows):
    raise ValueError(f"config {spec!r}: want one distinct row label per sweep() run (sweep_rows()), got {rows}")
  out = []
  for protocol in protocols:
    config = module.get_config(f"{protocol},smoke" if smoke else protocol)
    for i, (row, overrides) in enumerate(zip(rows, sweep)):
      extra = {} if i == 0 else ONLY_STRATEGY
      if smoke:
        extra = {**extra, "strategy": _smoke_steps(overrides.get("strategy", {}))}
      out.append((protocol, row, runner.apply_overrides(config, base | overrides | extra)))
  return out


def _strategy_name(row: str, results: dict) -> str:
  return results.get("strategy", {}).get("name", row)


def table_values(runs: Sequence[tuple[str, dict]]) -> dict:
  """[(row, results)] of one protocol -> {method: {scenario: {metric: [per seed]}}}: the first run's learner
  and comparisons, every run's strategy row (labelled by its row), then the first run's baselines."""
  first = runner.method_values(runs[0][1], baselines=False)
  values = {m: v for m, v in first.items() if m != _strategy_name(runs[0][0], runs[0][1])}
  for row, results in runs:
    values[row] = runner.method_values(results, baselines=False)[_strategy_name(row, results)]
  base = runner.method_values(runs[0][1], baselines=True)
  values.update({m: v for m, v in base.items() if m not in first})
  return values


def heads_values(runs: Sequence[tuple[str, dict]]) -> dict:
  """[(row, results)] -> {row: {scenario: {'<head>/<metric>': [per seed]}}} of the runs whose strategy reports
  heads (results.json "strategy" "heads"), in run order; {} when none does."""
  return {
    row: {s: {k: list(v["per_seed"]) for k, v in per.items()} for s, per in results["strategy"]["heads"].items()}
    for row, results in runs
    if "heads" in results.get("strategy", {})
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config spec (configs/<name>.py with sweep() of strategies)")
  parser.add_argument("--protocols", default="melu,item_cold", help="comma-separated get_config args")
  parser.add_argument("--smoke", action="store_true", help="the configs' smoke variants (seconds per run)")
  runner.add_run_args(parser, "RUNS/strategies/<config>/<protocol>/<strategy>")
  args = runner.parse_run_args(parser, argv)
  base = ({"seeds": args.seeds} if args.seeds is not None else {}) | runner.parse_sets(args.sets)
  protocols = [p for p in args.protocols.split(",") if p]
  cells = grid(args.config, protocols, base, args.smoke)
  runner.enable_compilation_cache(
    os.path.join(args.runs, "jax_cache") if args.compilation_cache == "auto" else args.compilation_cache
  )
  command = "python -m experiments.strategies " + " ".join(argv if argv is not None else sys.argv[1:])
  name = runner.config_name(args.config) + ("-smoke" if args.smoke else "")
  data = {}
  for protocol in protocols:
    start, runs, records = time.time(), [], []
    for p, strategy, config in cells:
      if p != protocol:
        continue
      if config.dataset_name not in data:
        data[config.dataset_name] = load_dataset(config.dataset_name, **config.dataset.to_dict())
      workdir = os.path.join(args.runs, "strategies", name, protocol, strategy)
      print(f"== {protocol}: {strategy} -> {workdir}", flush=True)
      info = runner.run(config, workdir, data=data[config.dataset_name])
      runs.append((strategy, info.results))
      records.append(
        {"strategy": strategy, "workdir": workdir, "wall": runner.describe_wall(info), "results": info.results}
      )
    first = runs[0][1]
    walls = "; ".join(f"{r['strategy']}: {r['wall']}" for r in records)
    header = "\n".join(
      [
        f"# Strategies on {first['dataset']}, protocol {first['protocol']} v{first['protocol_version']}",
        "",
        f"`{command}`",
        "",
        f"- strategies (rows): {', '.join(s for s, _ in runs)} (kwargs and stages in the .json); learners "
        f"{first['learner']}, {', '.join(m for m in first['comparisons'] if m not in dict(runs))}",
        f"- commit: {runner.commit()}; seeds: {first['seeds']}; selected on {first['selection']['metric']}",
        f"- wall time: {walls}; this protocol {time.time() - start:.1f} s",
        f"- machine: {runner.machine()}",
        "",
        "Mean ± std over seeds (population std, ddof=0).",
        "",
      ]
    )
    stem = os.path.join(args.out, f"strategies_{name}_{protocol}")
    tables = ablate.scenario_tables(table_values(runs))
    for path in report.write_tables(tables, stem, header=header):
      print(f"wrote {path}")
    heads = heads_values(runs)
    if heads:
      note = (
        "Per-head metrics of the multi-task runs (each head scored on every query row of the set with the "
        "selected parameters, no per-task adaptation; AUC pooled over the set's query rows). A single-task "
        "counterpart's row is its own head's figure; its other heads are untrained.\n"
      )
      for path in report.write_tables(ablate.scenario_tables(heads), f"{stem}_heads", header=header + "\n" + note):
        print(f"wrote {path}")
    with open(f"{stem}.json", "w") as f:
      json.dump({"config": args.config, "protocol": protocol, "runs": records}, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
