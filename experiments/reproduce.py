"""Benchmark tables: each config trained and evaluated over N seeds -> experiments/results/<config>.{md,csv}.

    python -m experiments.reproduce --configs=melu_ml100k,recbole_metarec_ml100k --seeds=5
    python -m experiments.reproduce --configs=smoke_synthetic --seeds=2 --set num_steps=20 --out=/tmp/results

Each config (`configs/<name>.py[:arg]`, `get_config(arg)`) gets `seeds=N` and the `--set` overrides (dotted keys;
a key the config lacks fails), then runs with `train_and_evaluate` into RUNS/reproduce/<name>/ (a rerun resumes
from its checkpoints; a finished run of the same config is reused, a different one refused). The table holds the
learner, its comparison learners and the reference baselines, per scenario, mean ± std over the seeds; the
Markdown header records the config, overrides, commit, seeds, training steps, wall time and machine.

A config that declares `PAPER` (a dict: `table`, the file `experiments/references/<table>.md` holding a paper's
published table; `scenarios`, the paper's scenario label -> ours; `methods`, our learner name -> the paper's
method) also gets `<config>_paper.{md,csv}`: per scenario the paper's rows as published, ours under the paper's
method names, the other learners and every reference baseline, on the paper's metrics. MeLU's Table 2:

    python -m experiments.reproduce --configs=melu_ml1m --seeds=5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping

from experiments import runner
from transfer_meta import report

REFERENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "references")


def paper_table(name: str) -> dict[str, dict[str, dict[str, float]]]:
  """A published table held as data: the first Markdown table of `experiments/references/<name>.md`.

  Its columns are scenario, method, then one per metric (named as in the paper: 'MAE', 'nDCG@1'); an empty
  scenario cell repeats the one above.

  Returns:
    {paper scenario label: {paper method: {metric (lower-cased, 'ndcg@1'): value}}}, in the file's order.
  Raises:
    ValueError: when the file has no such table or a cell is not a number.
  """
  path = os.path.join(REFERENCES, f"{name}.md")
  with open(path, encoding="utf-8") as f:
    lines = [line.strip() for line in f]
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
  if len(rows) < 3 or [c.lower() for c in rows[0][:2]] != ["scenario", "method"]:
    raise ValueError(f"{path}: want a Markdown table whose columns start 'scenario | method'")
  metrics = [c.lower() for c in rows[0][2:]]
  out, scenario = {}, None
  for k, cells in enumerate(rows[2:], start=3):
    scenario = cells[0] or scenario
    try:
      values = [float(c) for c in cells[2:]]
    except ValueError as e:
      raise ValueError(f"{path}: table row {k} {cells}: {e}") from e
    if scenario is None or len(values) != len(metrics):
      raise ValueError(f"{path}: table row {k} {cells}: want a scenario and {len(metrics)} numbers")
    out.setdefault(scenario, {})[cells[1]] = dict(zip(metrics, values))
  return out


def paper_rows(paper: Mapping, results: Mapping) -> list[report.Row]:
  """The paper's rows beside ours, per scenario (see the module docstring).

  Args:
    paper: a config's `PAPER` dict (`table`, `scenarios`, `methods`).
    results: the run's results.json.
  Returns:
    Rows per scenario in the paper's order: '<method> (paper)' (the published value, std NaN), then our
    learners ('<paper method> (ours)' for those in `paper['methods']`, '<learner> (ours)' for the others),
    then '<baseline> (baseline)'; cells on the paper's metrics only.
  """
  published = paper_table(paper["table"])
  unknown = sorted(set(published) - set(paper["scenarios"]))
  if unknown:
    raise ValueError(f"paper table {paper['table']!r}: scenarios {unknown} have no entry in PAPER['scenarios']")
  values = runner.method_values(results)
  learners = [results["learner"], *results.get("comparisons", {})]
  missing = sorted(set(paper["methods"]) - set(learners))
  if missing:
    raise ValueError(f"PAPER['methods'] names {missing}, not learners of the run ({learners})")
  rows = []
  for label, per_method in published.items():
    scenario = paper["scenarios"][label]
    metrics = list(next(iter(per_method.values())))
    for method, cells in per_method.items():
      rows.append(
        report.Row(scenario, f"{method} (paper)", {m: report.Stat(v, math.nan, (v,)) for m, v in cells.items()})
      )
    for method, per_scenario in values.items():
      name = f"{paper['methods'].get(method, method)} (ours)" if method in learners else f"{method} (baseline)"
      got = per_scenario[scenario]
      absent = [m for m in metrics if m not in got]
      if absent:
        raise ValueError(f"run has no {absent} for {method!r} on {scenario!r}; it has {list(got)}")
      rows.append(report.Row(scenario, name, {m: report.stat(got[m]) for m in metrics}))
  return rows


def header(spec: str, overrides: dict, info: runner.RunInfo, command: str) -> str:
  """The Markdown header of one config's table (provenance lines)."""
  results, train = info.results, info.results["train"]
  return "\n".join(
    [
      f"# {runner.config_name(spec)}: {results['learner']} ({results['model']}) on {results['dataset']}, "
      f"protocol {results['protocol']} v{results['protocol_version']}",
      "",
      f"`{command}`",
      "",
      f"- config: `{os.path.relpath(runner.config_path(spec), runner.ROOT)}`"
      + (f" arg `{spec.partition(':')[2]}`" if ":" in spec else ""),
      f"- overrides: {', '.join(f'`{k}={v!r}`' for k, v in overrides.items()) or 'none'}",
      f"- commit: {runner.commit()}",
      f"- seeds: {results['seeds']} (each seed its own split, initialisation and data order)",
      f"- training: {train['steps']} meta-steps per learner; {train['seconds']:.1f} s for {results['learner']} "
      f"({train['tasks_per_second']:.1f} tasks/s)",
      f"- wall time (train + evaluate, all learners): {runner.describe_wall(info)}",
      f"- machine: {runner.machine()}",
      "",
    ]
  )


def notes(results: dict) -> list[str]:
  selection = results.get("selection", {})
  out = ["mean ± std over seeds; std is the population standard deviation (ddof=0), as in results.json."]
  if selection:
    out.append(
      f"meta-parameters selected per seed on {selection['metric']} ({selection['mode']}); best steps "
      f"{selection['best_step']}."
    )
  if results.get("manifest_hashes"):
    out.append(f"split manifest hashes: {', '.join(h[:12] for h in results['manifest_hashes'])}.")
  return out


def reproduce(spec: str, seeds: int | None, overrides: dict, runs: str, out: str, command: str) -> tuple[str, ...]:
  """Runs one config and writes its table.

  Args:
    spec: config spec ('melu_ml100k' or 'configs/x.py:arg').
    seeds: number of seeds (0..N-1), or None to keep the config's.
    overrides: dotted-key overrides applied after `seeds`.
    runs: runs root; the workdir is RUNS/reproduce/<config name>.
    out: output directory of the tables.
    command: the command line, recorded in the header.
  Returns:
    (markdown path, csv path), then the paper table's two when the config declares `PAPER`.
  """
  all_overrides = ({"seeds": seeds} if seeds is not None else {}) | overrides
  module, arg = runner.config_module(spec)
  config = runner.apply_overrides(module.get_config(arg), all_overrides)
  name = runner.config_name(spec)
  info = runner.run(config, os.path.join(runs, "reproduce", name))
  rows = report.summarize(runner.method_values(info.results))
  head = header(spec, all_overrides, info, command)
  paths = report.write_table(rows, os.path.join(out, name), header=head, notes=notes(info.results))
  paper = getattr(module, "PAPER", None)
  if paper is not None:
    source = os.path.relpath(os.path.join(REFERENCES, f"{paper['table']}.md"), runner.ROOT)
    paper_notes = [
      f"'(paper)' rows: the published figures as held in `{source}` (no spread: the paper gives none).",
      "'(ours)' and '(baseline)' rows: this run, mean ± std over its seeds.",
      *notes(info.results)[1:],
    ]
    paths += report.write_table(
      paper_rows(paper, info.results), os.path.join(out, f"{name}_paper"), header=head, notes=paper_notes, digits=4
    )
  return paths


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", required=True, help="comma-separated config specs (name or name:arg)")
  runner.add_run_args(parser, "RUNS/reproduce/<config>")
  args = runner.parse_run_args(parser, argv)
  specs = [s for s in args.configs.split(",") if s]
  if not specs:
    parser.error("--configs names no config")
  overrides = runner.parse_sets(args.sets)
  runner.enable_compilation_cache(args.compilation_cache)
  command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
  start = time.time()
  for spec in specs:
    paths = reproduce(spec, args.seeds, overrides, args.runs, args.out, command)
    print(f"wrote {', '.join(paths)}")
  print(f"total wall time {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
