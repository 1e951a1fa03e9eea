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

Rows that are not strategies: a config may define `table_rows(protocol) -> [(row name, override dict)]` instead;
the first entry's run is the config's learners (as above), each later entry that sets no `strategy_name` trains the
config's learner with its overrides (e.g. another model: `model_name='lwa', learner_name='none'`) and no
comparisons, and that learner's row is kept under the entry's name (the peers' table, `configs/peers_ml100k.py`).
Every row also gets its training throughput (`train tasks/s`: tasks of all seeds per second of that method's whole
training, from results.json; a strategy's tasks are those of its task-batch stages, `throughput`); a config may
declare `REFERENCE_ROWS` ({protocol: {scenario: {method: {metric: (mean, std)}}}}: published or measured figures,
shown as given) and the notes say which trained rows beat the `item_user_offset`, `constant` and `random` baselines
by more than 2 SE, paired by seed, on the selection metric (and its ':index' variant), or on the config's
`VERDICT_METRICS[protocol]` when it declares them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from experiments import ablate, bench_common, runner
from transfer_meta import report
from transfer_meta import results as results_lib
from transfer_meta.data import load_dataset
from transfer_meta.strategies import check_kwargs

ONLY_STRATEGY = {"learner_name": "none", "learner": {}, "compare_learners": (), "compare_kwargs": {}}
ONLY_LEARNER = {"compare_learners": (), "compare_kwargs": {}}
THROUGHPUT = "train tasks/s"
VERDICT_BASELINES = ("item_user_offset", "constant", "random")


def entries(module, spec: str, protocol: str) -> list[tuple[str, dict]]:
  """[(row name, override dict)] of one protocol: the config's `table_rows(protocol)`, else its `sweep()` of
  strategies, each named by `sweep_rows()` when the config has it, else by its `strategy_name`."""
  if hasattr(module, "table_rows"):
    out = [(str(name), dict(o)) for name, o in module.table_rows(protocol)]
  else:
    sweep = module.sweep()
    if not sweep or any("strategy_name" not in o for o in sweep):
      raise ValueError(f"config {spec!r}: sweep() must list override dicts that each set 'strategy_name'")
    rows = module.sweep_rows() if hasattr(module, "sweep_rows") else [o["strategy_name"] for o in sweep]
    if len(rows) != len(sweep):
      raise ValueError(f"config {spec!r}: want one row label per sweep() run (sweep_rows()), got {rows}")
    out = [(str(row), dict(o)) for row, o in zip(rows, sweep)]
  names = [n for n, _ in out]
  if not out or len(set(names)) != len(names):
    raise ValueError(f"config {spec!r}: the table needs rows with distinct names, got {names}")
  return out


SMOKE_STEPS = 20


def _smoke_steps(kwargs: dict) -> dict:
  """The strategy's own stage-length keywords (`*steps` but the per-task `inner_steps`: `mf_steps`, `source_steps`,
  ...) capped at SMOKE_STEPS; no keyword is added, so every builder accepts the result."""
  return {k: min(v, SMOKE_STEPS) if k.endswith("steps") and k != "inner_steps" else v for k, v in kwargs.items()}


def grid(spec: str, protocols: Sequence[str], base: dict, smoke: bool = False) -> list[tuple[str, str, object]]:
  """[(protocol, row label, locked config)] of the table, every override applied (typos fail before any run)."""
  module, _ = runner.config_module(spec)
  out = []
  for protocol in protocols:
    config = module.get_config(f"{protocol},smoke" if smoke else protocol)
    for i, (name, overrides) in enumerate(entries(module, spec, protocol)):
      is_strategy = "strategy_name" in overrides
      extra = {} if i == 0 else (ONLY_STRATEGY if is_strategy else ONLY_LEARNER)
      if smoke and is_strategy:
        extra = {**extra, "strategy": _smoke_steps(overrides.get("strategy", {}))}
      cell = runner.apply_overrides(config, base | overrides | extra)
      if cell.strategy_name:  # a keyword its builder does not take fails here, before any run
        check_kwargs(cell.strategy_name, cell.strategy.to_dict())
      out.append((protocol, name, cell))
  return out


def _strategy_name(row: str, results: dict) -> str:
  return results.get("strategy", {}).get("name", row)


def table_values(runs: Sequence[tuple[str, dict]]) -> dict:
  """[(row, results)] of one protocol -> {method: {scenario: {metric: [per seed]}}}: the first run's learner
  and comparisons, every run's strategy row (labelled by its row), then the first run's baselines."""
  first = runner.method_values(runs[0][1], baselines=False)
  values = {m: v for m, v in first.items() if m != _strategy_name(runs[0][0], runs[0][1])}
  for i, (row, results) in enumerate(runs):
    run_values = runner.method_values(results, baselines=False)
    if "strategy" in results:  # a strategy run: its strategy's row, under the row's label
      values[row] = run_values[_strategy_name(row, results)]
    elif i:  # a later learner run (table_rows): its learner's row
      values[row] = run_values[row] if row in run_values else run_values[results["learner"]]
  base = runner.method_values(runs[0][1], baselines=True)
  values.update({m: v for m, v in base.items() if m not in first})
  # Counts such as 'auc/tasks' (tasks with a defined AUC) are not metric columns.
  return {m: {sc: {k: v for k, v in per.items() if "/" not in k} for sc, per in ps.items()} for m, ps in values.items()}


def _speeds(results: dict) -> dict[str, float | None]:
  """{method: training tasks/s} of one run. A strategy's figure is recounted from the stages results.json records
  (`results.stage_tasks`: its task-batch stages' tasks over all its stages' seconds), so runs written before the
  count was per stage (when a strategy's tasks were the config's `num_steps x batch_size`, whatever its stages
  ran) get the same figure as new ones."""
  out = {n: v["tasks_per_second"] for n, v in results["train"]["learners"].items()}
  if "strategy" in results:
    name = results["strategy"]["name"]
    tasks = results_lib.stage_tasks(results["strategy"]["stages"], len(results["seeds"]))
    out[name] = results_lib.tasks_per_second(tasks, results["train"]["learners"][name]["seconds"])
  return out


def throughput(runs: Sequence[tuple[str, dict]]) -> dict[str, float | None]:
  """{row: training tasks/s (None: trained on no task)}: every learner of the first run, then each later run's row
  (its strategy or learner); every figure is tasks of training per second of that method's training (`_speeds`)."""
  out = _speeds(runs[0][1])
  first_strategy = _strategy_name(runs[0][0], runs[0][1])
  if "strategy" in runs[0][1] and first_strategy in out and first_strategy != runs[0][0]:
    out[runs[0][0]] = out.pop(first_strategy)  # the first run's strategy row, under its row label
  for name, results in runs[1:]:
    speeds = _speeds(results)
    key = _strategy_name(name, results) if "strategy" in results else name
    out[name] = speeds[key if key in speeds else results["learner"]]
  return out


def with_throughput(rows: Sequence[report.Row], tasks_per_second: dict[str, float | None]) -> list[report.Row]:
  """Rows with a `train tasks/s` cell (a single value, no spread) where the method was trained on tasks."""
  nan = float("nan")
  return [
    dataclasses.replace(
      row,
      cells={**row.cells, THROUGHPUT: report.Stat(tasks_per_second[row.method], nan, (tasks_per_second[row.method],))},
    )
    if tasks_per_second.get(row.method) is not None
    else row
    for row in rows
  ]


def reference_rows(module, protocol: str) -> list[report.Row]:
  """The config's `REFERENCE_ROWS[protocol]` as rows (value and spread as given)."""
  given = getattr(module, "REFERENCE_ROWS", {}).get(protocol, {})
  return [
    report.Row(
      scenario, method, {m: report.Stat(float(mean), float(std), (float(mean),)) for m, (mean, std) in c.items()}
    )
    for scenario, per_method in given.items()
    for method, c in per_method.items()
  ]


def verdicts(values: dict, trained: Sequence[str], metrics: Sequence[str]) -> list[str]:
  """Note lines: per test scenario and metric, the trained rows that beat each of `VERDICT_BASELINES` by more than
  2 SE (paired by seed, `ablate.paired`), or 'nothing'."""
  lines = []
  scenarios = [sc for sc in next(iter(values.values())) if sc != "valid"]
  for sc in scenarios:
    for m in metrics:
      for ref in VERDICT_BASELINES:
        if ref not in values or m not in values[ref].get(sc, {}):
          continue
        b = values[ref][sc][m]
        wins = [
          t
          for t in trained
          if m in values[t].get(sc, {}) and ablate.paired(values[t][sc][m], b, ablate.lower_is_better(m))["wins"]
        ]
        lines.append(f"{sc}/{m}: beat {ref} by > 2 SE (paired over seeds): {', '.join(wins) or 'nothing'}.")
  return lines


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
  module, _ = runner.config_module(args.config)
  runner.enable_compilation_cache(args.compilation_cache)
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
      # every row after the first trains `none` as the one before did: copied from it (`learner_reuse`)
      info = runner.run(config, workdir, data=data[config.dataset_name], reuse_from=[r["workdir"] for r in records])
      runs.append((strategy, info.results))
      records.append(
        {"strategy": strategy, "workdir": workdir, "wall": runner.describe_wall(info), "results": info.results}
      )
    first = runs[0][1]
    walls = "; ".join(f"{r['strategy']}: {r['wall']}" for r in records)
    header = "\n".join(
      [
        f"# {name} on {first['dataset']}, protocol {first['protocol']} v{first['protocol_version']}",
        "",
        f"`{command}`",
        "",
        f"- rows: {', '.join(s for s, _ in runs)} (kwargs and stages in the .json); learners "
        f"{first['learner']}, {', '.join(m for m in first['comparisons'] if m not in dict(runs))}",
        f"- commit: {runner.commit()}; seeds: {first['seeds']}; selected on {first['selection']['metric']}",
        f"- wall time: {walls}; this protocol {time.time() - start:.1f} s",
        f"- machine: {runner.machine()}; CPU {bench_common.machine()['cpu']}; load average (1/5/15 min) when "
        f"the table was written: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}",
        "",
      ]
    )
    stem = os.path.join(args.out, f"strategies_{name}_{protocol}")
    values = table_values(runs)
    tables = ablate.scenario_tables(values)
    speeds = throughput(runs)
    tables = {sc: with_throughput(rows, speeds) for sc, rows in tables.items()}
    for row in reference_rows(module, protocol):
      tables.setdefault(row.scenario, []).append(row)
    metric = first["selection"]["metric"].split("/", 1)[1]
    metrics = getattr(module, "VERDICT_METRICS", {}).get(protocol) or [
      m for m in (metric, f"{metric}:index") if m in first["metrics"]["valid"]
    ]
    notes = [
      "Mean ± std over seeds (population std, ddof=0); 'train tasks/s' is one figure per method: the tasks it "
      "trained on (a learner's meta-steps x task batch; a strategy's task-batch stages' steps x batch, its "
      "interaction-minibatch stages counting none), every seed's together, per second of that method's whole "
      "training (every stage; the first step's compilation and the validation passes included), on the machine "
      "above; '-' where a method trained on no task batch.",
      *verdicts(values, list(speeds), metrics),
    ]
    for path in report.write_tables(tables, stem, header=header, notes=notes):
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
