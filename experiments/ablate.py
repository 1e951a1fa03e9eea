"""Ablations: a config's `sweep()` expanded into runs -> experiments/results/ablate_<config>_<sweep>.{md,csv,json}.

    python -m experiments.ablate --config=melu_ml100k --list                 # the named sweeps and their runs
    python -m experiments.ablate --config=melu_ml100k --sweep=support_cap --seeds=3 --set num_steps=100

Sweeps. `configs/<name>.py` defines `sweep()` returning a list of override dicts (dotted keys), a dict
{sweep name: list}, or takes the sweep name as its argument. A list is grouped into named sweeps by the first key
of each dict, named by that key's last component (`learner.inner_steps` -> 'inner_steps'; the full key when two
groups would share a name); `--sweep` takes that name, the full key, or 'all'.

Runs. Every override dict is applied (after `--seeds` and `--set`) to a copy of the locked config, so a key the
config lacks fails before anything runs. Run r goes to RUNS/ablate/<config>/<label>/ with label the values that
vary within its sweep ('support_cap=5'; support_cap 0, every support rating, reads 'all'). A run whose results.json
holds the same config is reused, so rerunning a command resumes the sweep; a run interrupted mid-training resumes
from its checkpoints.

Tables. One section per scenario; a row per (method, override value), methods being the learner, its comparison
learners and the reference baselines (`--baselines` picks which), written 'melu @ support_cap=5'; a column per metric,
mean ± std over seeds (`transfer_meta.report`). The .json beside them keeps each run's overrides, wall time and
full results.json.

Selection (`--select`): the (setting, method) with the best validation metric — the config's `select_metric`
(mean over seeds; trained methods only, never a baseline) — is chosen without looking at any test scenario;
ablate_<config>_<sweep>_selection.{md,json} list every tried setting's validation value, then the selected one
on every test scenario beside `--reference` (default item_user_offset), paired by seed: the mean difference, its
standard error (std of the per-seed differences, ddof=1, over sqrt(n)) and whether it wins by more than 2 SE.

Comparisons (`--compare=ref1,ref2`, e.g. a target-only and a source-only baseline on a cross-domain benchmark):
every method of every run (trained methods, each selected on valid inside its run, and the other baselines) on
every test scenario, paired by seed with each reference; ablate_<config>_<sweep>_compare.{md,json}. Per setting the
table names the methods that beat every reference by more than 2 SE on the first metric, or says that none does.
Several benchmarks in one command: `--config=a,b` (each config with its own sweep of that name).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from experiments import late_baselines, runner
from transfer_meta import report
from transfer_meta.data import load_dataset

# Values with a meaning beyond their number, shown by name in labels (run directories, table rows, plot ticks).
VALUE_NAMES = {"support_cap": {0: "all"}}
SEP = " @ "  # between a method and its run's label in table rows


def group_sweep(overrides: Sequence[Mapping]) -> dict[str, list[dict]]:
  """Groups a flat sweep by the first key of each override dict.

  Returns:
    {name: [override dict, ...]} in first-seen order; name = the key's last dotted component, or the full key
    when two groups' last components coincide.
  """
  groups: dict[str, list[dict]] = {}
  for i, o in enumerate(overrides):
    if not isinstance(o, Mapping) or not o:
      raise ValueError(f"sweep entry {i} is {o!r}: want a non-empty dict of dotted-key overrides")
    groups.setdefault(next(iter(o)), []).append(dict(o))
  short = [key.rsplit(".", 1)[-1] for key in groups]
  return {(s if short.count(s) == 1 else key): v for (key, v), s in zip(groups.items(), short)}


def named_sweeps(module, name: str | None = None) -> dict[str, list[dict]]:
  """The config module's sweeps as {name: [override dict]} (see the module docstring)."""
  fn = getattr(module, "sweep", None)
  if fn is None:
    raise ValueError(f"{module.__file__} defines no sweep()")
  if inspect.signature(fn).parameters and name not in (None, "all"):
    return {name: [dict(o) for o in fn(name)]}
  result = fn()
  if isinstance(result, Mapping):
    return {k: [dict(o) for o in v] for k, v in result.items()}
  return group_sweep(result)


def select(sweeps: Mapping[str, list], name: str) -> dict[str, list[dict]]:
  """The sweeps called `name` (a sweep name, the full first key of its dicts, or 'all')."""
  if name == "all":
    return dict(sweeps)
  for key, overrides in sweeps.items():
    if name == key or any(name == next(iter(o)) for o in overrides):
      return {key: overrides}
  raise ValueError(f"unknown sweep {name!r}; valid sweeps: {list(sweeps)} or 'all'")


def format_value(key: str, value) -> str:
  """A short, readable value: VALUE_NAMES first, then floats by %g, tuples joined by '+', '' as 'none'."""
  if isinstance(value, str) and not value:
    return "none"
  named = VALUE_NAMES.get(key.rsplit(".", 1)[-1], {})
  if not isinstance(value, bool) and isinstance(value, int | float) and value in named:
    return named[value]
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, list | tuple):
    return "+".join(format_value(key, v) for v in value) or "()"
  if isinstance(value, Mapping):
    return "{" + ",".join(f"{k}:{format_value(k, v)}" for k, v in value.items()) + "}"
  return str(value)


def labels(overrides: Sequence[Mapping]) -> list[str]:
  """One label per override dict: 'key=value' for each key of it whose value varies within the sweep (the first
  key when none varies), keys by their last dotted component; a key an override does not set is left out."""
  keys = list(dict.fromkeys(k for o in overrides for k in o))
  varying = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True, default=str) for o in overrides}) > 1]
  shown = varying or keys[:1]
  out = [
    ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(k, o[k])}" for k in shown if k in o)
    or f"{keys[0].rsplit('.', 1)[-1]}={format_value(keys[0], o.get(keys[0]))}"
    for o in overrides
  ]
  if len(set(out)) != len(out):
    raise ValueError(f"sweep has duplicate runs: labels {out}")
  return out


def run_dir(label: str) -> str:
  """A directory name for a label ('support_cap=5', 'model_name=two_tower')."""
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", label.replace(", ", ","))


def table_values(per_run: Mapping[str, Mapping]) -> dict:
  """{label: method values of that run} -> {'method @ label': {scenario: {metric: [per seed]}}}, methods in
  first-seen order, each method's runs in sweep order (so a scenario's rows read down the sweep)."""
  methods = list(dict.fromkeys(m for values in per_run.values() for m in values))
  return {f"{m}{SEP}{label}": values[m] for m in methods for label, values in per_run.items() if m in values}


def scenario_tables(values: Mapping) -> dict[str, list[report.Row]]:
  """`report.summarize` rows split into one table per scenario."""
  tables: dict[str, list[report.Row]] = {}
  for row in report.summarize(values):
    tables.setdefault(row.scenario, []).append(row)
  return tables


def ablate(
  spec: str,
  sweep: str,
  overrides: Sequence[dict],
  base: dict,
  runs: str,
  baselines: bool | Sequence[str] = True,
  late: Sequence[str] = (),
) -> dict:
  """Runs (or reuses) every run of one sweep.

  Args:
    spec: config spec; sweep: its name; overrides: its override dicts.
    base: overrides applied before each run's own (seeds, budget).
    runs: runs root; run workdirs are RUNS/ablate/<config name>/<run label>/.
    baselines: the reference baselines kept in the table values: True all, False none, or their names.
    late: baselines to score on the finished runs' splits where a run lacks them (`experiments.late_baselines`).
  Returns:
    {"labels": [...], "values": {label: method values}, "runs": [per-run record for the .json]}.
  """
  config = runner.load_config(spec)
  names = labels(overrides)
  configs = [runner.apply_overrides(config, base | o) for o in overrides]  # every typo fails before any run
  root = os.path.join(runs, "ablate", runner.config_name(spec))
  data_cache: dict = {}
  records = []
  for label, o, c in zip(names, overrides, configs):
    data_key = late_baselines.data_key(c)
    if data_key not in data_cache:
      data_cache[data_key] = load_dataset(c.dataset_name, **c.dataset.to_dict())
    workdir = os.path.join(root, run_dir(label))
    print(f"== {sweep}: {label} -> {workdir}", flush=True)
    # learners the sweep's earlier runs trained identically (e.g. `none` beside each setting) are copied, not retrained
    info = runner.run(c, workdir, data=data_cache[data_key], reuse_from=[r["workdir"] for r in records])
    records.append(
      {
        "label": label,
        "overrides": o,
        "workdir": workdir,
        "wall": runner.describe_wall(info),
        "wall_seconds": info.wall_seconds,
        "reused": info.reused,
        "results": info.results,
      }
    )
  if late:
    late_baselines.add_late_baselines(records, configs, late, data_cache)
  values = {r["label"]: runner.method_values(r["results"], baselines) for r in records}
  return {"labels": names, "values": values, "runs": records}


def write(spec: str, sweep: str, out: dict, base: dict, wall: float, out_dir: str, command: str) -> tuple[str, ...]:
  """Writes ablate_<config>_<sweep>.{md,csv,json}; returns the paths."""
  stem = os.path.join(out_dir, f"ablate_{runner.config_name(spec)}_{sweep}")
  first = out["runs"][0]["results"]
  sweep_list = ", ".join("`" + json.dumps(r["overrides"], default=str) + "`" for r in out["runs"])
  walls = [f"{r['label']}: {r['wall']}" for r in out["runs"]]
  total = sum(r["wall_seconds"] or 0.0 for r in out["runs"])
  header = "\n".join(
    [
      f"# Ablation `{sweep}` of {runner.config_name(spec)} ({first['dataset']}, protocol {first['protocol']} "
      f"v{first['protocol_version']})",
      "",
      f"`{command}`",
      "",
      f"- sweep: {sweep_list}",
      f"- base overrides: {', '.join(f'`{k}={v!r}`' for k, v in base.items()) or 'none'}",
      f"- commit: {runner.commit()}",
      f"- seeds: {first['seeds']}; {first['train']['steps']} meta-steps per learner",
      f"- wall time: {total:.1f} s of runs ({'; '.join(walls)}); this command {wall:.1f} s",
      f"- machine: {runner.machine()}",
      "",
      f"Rows are `method{SEP}override`; mean ± std over seeds (population std, ddof=0).",
      "",
    ]
  )
  md, csv = report.write_tables(scenario_tables(table_values(out["values"])), stem, header=header)
  with open(f"{stem}.json", "w") as f:
    json.dump({"config": spec, "sweep": sweep, "base_overrides": base, "runs": out["runs"]}, f, indent=1, default=str)
  return md, csv, f"{stem}.json"


LOWER_IS_BETTER = ("mae", "rmse", "mse")


def lower_is_better(metric: str) -> bool:
  """True for error metrics (MAE, RMSE, MSE), False for ranking metrics (nDCG, precision, ...)."""
  return metric.split("@")[0].split(":")[0] in LOWER_IS_BETTER


def default_metrics(select_metric: str, records: Sequence[Mapping]) -> list[str]:
  """The test metrics of the selection and compare tables when `--select_metrics` is not given: the metric the
  config selects on ('valid/mae' -> 'mae'), then every ranking metric the runs' first test scenario reports
  (nDCG@5 and AUC on `genre_split`, nDCG@1/@3 on `melu`), in the protocol's order.

  Args:
    select_metric: the config's `select_metric`, 'valid/<metric>'.
    records: the runs of a sweep (`ablate(...)["runs"]`).
  Returns:
    Metric names, the selection metric first.
  """
  metric = select_metric.partition("/")[2]
  scenarios = [s for s in records[0]["results"]["metrics"] if s != "valid"] if records else []
  if not scenarios:
    raise ValueError("the sweep's runs report no test scenario: no metric to tabulate")
  reported = list(records[0]["results"]["metrics"][scenarios[0]])
  if metric not in reported:
    raise ValueError(f"selection metric {metric!r} is not reported on {scenarios[0]!r}; it has {reported}")
  ranking = [m for m in reported if "/" not in m and not lower_is_better(m) and m != metric]
  return [metric, *ranking]


def trained_methods(results: Mapping) -> dict:
  """{method: {set: {metric: {...}}}} of the learner and its comparisons (never the baselines)."""
  return {results["learner"]: results["metrics"], **results.get("comparisons", {})}


def select_on_valid(records: Sequence[Mapping], metric: str, mode: str, methods: Sequence[str] | None = None) -> dict:
  """Every (setting, trained method) by its validation `metric`, and the best one; no test scenario is read.

  Args:
    records: the runs of a sweep (`ablate(...)["runs"]`: label and results each).
    metric: a metric inside the 'valid' set ('mae'); mode: 'min' or 'max'.
    methods: choose among these trained methods only (e.g. one method's setting, `--select_methods`); None: all.
  Returns:
    {"metric", "mode", "rows": [{"label", "method", "mean", "per_seed"}] in sweep order, "selected": the best row}.
  """
  if mode not in ("min", "max"):
    raise ValueError(f"selection mode {mode!r}: want 'min' or 'max'")
  if methods is not None:
    known = sorted({m for r in records for m in trained_methods(r["results"])})
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
      raise ValueError(f"select_methods {list(methods)}: not trained in the sweep {unknown}; its methods: {known}")
  rows = []
  for r in records:
    for method, sets in trained_methods(r["results"]).items():
      if methods is not None and method not in methods:
        continue
      if "valid" not in sets or metric not in sets["valid"]:
        raise ValueError(f"run {r['label']!r}, method {method!r} has no valid/{metric}: cannot select on it")
      per_seed = list(sets["valid"][metric]["per_seed"])
      rows.append({"label": r["label"], "method": method, "mean": float(np.mean(per_seed)), "per_seed": per_seed})
  if not rows:
    raise ValueError("no trained method in the sweep's runs: nothing to select")
  best = (min if mode == "min" else max)(rows, key=lambda row: row["mean"])
  return {"metric": metric, "mode": mode, "rows": rows, "selected": best}


def paired(a: Sequence[float], b: Sequence[float], lower_better: bool) -> dict:
  """The per-seed improvement of a over b (b - a for error metrics, a - b otherwise).

  Returns:
    {"mean", "se" (std of the differences, ddof=1, / sqrt(n); nan for n < 2), "z" (mean / se), "wins" (z > 2)}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"paired comparison needs per-seed values of one length, got {a.shape} and {b.shape}")
  d = (b - a) if lower_better else (a - b)
  se = float(np.std(d, ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
  mean = float(d.mean())
  z = mean / se if se > 0 else (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0)
  return {"mean": mean, "se": se, "z": z, "wins": bool(se == se and z > 2)}


def selection_report(selection: Mapping, records: Sequence[Mapping], reference: str, metrics: Sequence[str]) -> dict:
  """The selected setting's test scenarios beside the `reference` baseline of the same run, paired by seed.

  Returns:
    {"selected", "reference", "scenarios": {scenario: {metric: {"method", "reference", "improvement"}}}} with the
    method's and reference's per-seed values and `paired(...)` as the improvement.
  """
  chosen = selection["selected"]
  results = next(r["results"] for r in records if r["label"] == chosen["label"])
  if reference not in results.get("baselines", {}):
    raise ValueError(
      f"reference {reference!r} is not a baseline of the run; it has {list(results.get('baselines', {}))}"
    )
  method_sets, ref_sets = trained_methods(results)[chosen["method"]], results["baselines"][reference]
  out = {}
  for scenario, per in ref_sets.items():
    out[scenario] = {}
    for m in metrics:
      if m not in per:
        raise ValueError(f"metric {m!r} is not reported; the run has {sorted(per)}")
      a, b = method_sets[scenario][m]["per_seed"], per[m]["per_seed"]
      out[scenario][m] = {"method": a, "reference": b, "improvement": paired(a, b, lower_is_better(m))}
  return {"selected": chosen, "reference": reference, "scenarios": out}


def evidence_rows(records: Sequence[Mapping], reference: str, metrics: Sequence[str]) -> list[dict]:
  """Every (setting, trained method) on every test scenario, paired by seed with `reference`: the ablation's
  evidence of where each capability helps. Never used to select (`select_on_valid` reads valid only)."""
  rows = []
  for r in records:
    res = r["results"]
    ref = res["baselines"][reference]
    for method, sets in trained_methods(res).items():
      for scenario, per in ref.items():
        imp = {m: paired(sets[scenario][m]["per_seed"], per[m]["per_seed"], lower_is_better(m)) for m in metrics}
        rows.append({"label": r["label"], "method": method, "scenario": scenario, "improvement": imp})
  return rows


def selection_markdown(selection: Mapping, report_: Mapping, header: str, evidence: Sequence[Mapping] = ()) -> str:
  """Two tables: every tried (setting, method) on valid; the selected one on test beside the reference."""
  sel = selection["selected"]
  lines = [
    header,
    f"## Every tried setting on valid/{selection['metric']} ({selection['mode']}; mean ± std over seeds)",
  ]
  lines += ["", f"| setting | method | valid/{selection['metric']} | selected |", "|---|---|---:|---|"]
  for row in selection["rows"]:
    mark = "**selected**" if (row["label"], row["method"]) == (sel["label"], sel["method"]) else ""
    lines.append(f"| {row['label']} | {row['method']} | {row['mean']:.4f} ± {np.std(row['per_seed']):.4f} | {mark} |")
  ref = report_["reference"]
  lines += [
    "",
    f"## Selected: `{sel['method']}{SEP}{sel['label']}` on the test scenarios, beside `{ref}` (paired by seed)",
    "",
    "Improvement = the reference's error minus the method's (MAE, RMSE) or the method's score minus the "
    "reference's (nDCG); SE = std of the per-seed differences (ddof=1) / sqrt(seeds); a win needs > 2 SE.",
    "",
    f"| scenario | metric | {sel['method']} | {ref} | improvement ± SE | z | wins |",
    "|---|---|---:|---:|---:|---:|---|",
  ]
  for scenario, per in report_["scenarios"].items():
    for m, v in per.items():
      imp = v["improvement"]
      lines.append(
        f"| {scenario} | {m} | {np.mean(v['method']):.4f} ± {np.std(v['method']):.4f} | "
        f"{np.mean(v['reference']):.4f} ± {np.std(v['reference']):.4f} | {imp['mean']:+.4f} ± {imp['se']:.4f} | "
        f"{imp['z']:+.1f} | {'**yes**' if imp['wins'] else 'no'} |"
      )
  if evidence:
    metrics = list(evidence[0]["improvement"])
    lines += [
      "",
      f"## Evidence only (not used to select): every tried setting on test, improvement over `{ref}` ± SE (z)",
      "",
      "| setting | method | scenario | " + " | ".join(metrics) + " |",
      "|---|---|---|" + "---:|" * len(metrics),
    ]
    for row in evidence:
      cells = [f"{v['mean']:+.4f} ± {v['se']:.4f} ({v['z']:+.1f})" for v in row["improvement"].values()]
      lines.append(f"| {row['label']} | {row['method']} | {row['scenario']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_selection(
  spec: str,
  sweep: str,
  out: dict,
  reference: str,
  metrics: Sequence[str],
  out_dir: str,
  command: str,
  methods: Sequence[str] | None = None,
) -> tuple[str, str]:
  """Selects on valid (the config's select_metric; among `methods` when given) and writes
  ablate_<config>_<sweep>_selection[_<methods>].{md,json}."""
  config = runner.load_config(spec)
  set_name, _, metric = config.select_metric.partition("/")
  selection = select_on_valid(out["runs"], metric, config.select_mode, methods)
  rep = selection_report(selection, out["runs"], reference, metrics)
  first = out["runs"][0]["results"]
  suffix = "_" + "+".join(methods) if methods else ""
  stem = os.path.join(out_dir, f"ablate_{runner.config_name(spec)}_{sweep}_selection{suffix}")
  header = "\n".join(
    [
      f"# Selection on the validation set: sweep `{sweep}` of {runner.config_name(spec)} ({first['dataset']})",
      "",
      f"`{command}`",
      "",
      f"- commit: {runner.commit()}; seeds: {first['seeds']}; machine: {runner.machine()}",
      f"- selected on {set_name}/{metric} ({config.select_mode}) only; test scenarios were not read to choose.",
      "",
    ]
  )
  evidence = evidence_rows(out["runs"], reference, metrics)
  with open(f"{stem}.md", "w") as f:
    f.write(selection_markdown(selection, rep, header, evidence))
  with open(f"{stem}.json", "w") as f:
    json.dump({"selection": selection, "report": rep, "evidence": evidence}, f, indent=1)
  return f"{stem}.md", f"{stem}.json"


def compare_rows(records: Sequence[Mapping], references: Sequence[str], metrics: Sequence[str]) -> list[dict]:
  """Every (setting, method) but the references, on every test scenario, paired by seed with each reference.

  Args:
    records: the runs of a sweep (label and results each).
    references: baselines of the runs to pair with (each must be in every run).
    metrics: test metrics; a missing one raises ValueError.
  Returns:
    [{"label", "method", "scenario", "values": {metric: per seed}, "vs": {reference: {metric: paired(...)}},
      "beats_all": bool (> 2 SE over every reference on metrics[0])}], runs in sweep order, methods in table order.
  """
  rows = []
  for r in records:
    res = r["results"]
    missing = [ref for ref in references if ref not in res.get("baselines", {})]
    if missing:
      raise ValueError(
        f"run {r['label']!r}: references {missing} are not baselines of it; it has {list(res['baselines'])}"
      )
    trained = trained_methods(res)
    methods = {**trained, **{b: v for b, v in res["baselines"].items() if b not in references}}
    for method, sets in methods.items():
      for scenario in res["baselines"][references[0]]:
        for m in metrics:
          if m not in sets[scenario] and method in trained:
            raise ValueError(f"metric {m!r} is not reported; run {r['label']!r} has {sorted(sets[scenario])}")
        # a ranking baseline ('popularity') reports no MAE/RMSE: its row leaves those cells empty
        present = [m for m in metrics if m in sets[scenario]]
        values = {m: list(sets[scenario][m]["per_seed"]) for m in present}
        vs = {
          ref: {
            m: paired(values[m], res["baselines"][ref][scenario][m]["per_seed"], lower_is_better(m)) for m in present
          }
          for ref in references
        }
        beats = metrics[0] in present and all(vs[ref][metrics[0]]["wins"] for ref in references)
        rows.append(
          {"label": r["label"], "method": method, "scenario": scenario, "values": values, "vs": vs, "beats_all": beats}
        )
  return rows


def compare_markdown(rows: Sequence[Mapping], references: Sequence[str], metrics: Sequence[str], header: str) -> str:
  """One table per reference (improvement ± SE (z) per metric), then the verdict per (setting, scenario)."""
  lines = [header]
  for ref in references:
    lines += [
      "",
      f"## Improvement over `{ref}` (paired by seed; ± SE, (z); error metrics: reference minus method)",
      "",
      "| setting | method | scenario | "
      + " | ".join(f"{m} (method)" for m in metrics[:1])
      + " | "
      + " | ".join(metrics)
      + " |",
      "|---|---|---|---:|" + "---:|" * len(metrics),
    ]
    for row in rows:
      v = row["values"].get(metrics[0])
      cells = [
        f"{row['vs'][ref][m]['mean']:+.4f} ± {row['vs'][ref][m]['se']:.4f} ({row['vs'][ref][m]['z']:+.1f})"
        if m in row["vs"][ref]
        else "—"
        for m in metrics
      ]
      own = f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v is not None else "—"
      lines.append(f"| {row['label']} | {row['method']} | {row['scenario']} | {own} | " + " | ".join(cells) + " |")
  lines += ["", f"## Verdict: methods beating every reference ({', '.join(references)}) by > 2 SE on {metrics[0]}", ""]
  for key in dict.fromkeys((row["label"], row["scenario"]) for row in rows):
    winners = [row["method"] for row in rows if (row["label"], row["scenario"]) == key and row["beats_all"]]
    lines.append(f"- {key[0]}, {key[1]}: " + (", ".join(f"`{w}`" for w in winners) if winners else "**none does**"))
  return "\n".join(lines) + "\n"


def write_compare(
  spec: str, sweep: str, out: dict, references: Sequence[str], metrics: Sequence[str], out_dir: str, command: str
) -> tuple[str, str]:
  """Writes ablate_<config>_<sweep>_compare.{md,json} (`compare_rows`); returns the paths."""
  rows = compare_rows(out["runs"], references, metrics)
  first = out["runs"][0]["results"]
  stem = os.path.join(out_dir, f"ablate_{runner.config_name(spec)}_{sweep}_compare")
  header = "\n".join(
    [
      f"# Methods vs references: sweep `{sweep}` of {runner.config_name(spec)} ({first['dataset']}, protocol "
      f"{first['protocol']} v{first['protocol_version']})",
      "",
      f"`{command}`",
      "",
      f"- commit: {runner.commit()}; seeds: {first['seeds']}; machine: {runner.machine()}",
      "- trained methods are selected on valid inside each run (config select_metric); no test value chose anything.",
      "- SE = std of the per-seed differences (ddof=1) / sqrt(seeds); a win needs > 2 SE.",
    ]
  )
  with open(f"{stem}.md", "w") as f:
    f.write(compare_markdown(rows, references, metrics, header))
  with open(f"{stem}.json", "w") as f:
    json.dump({"references": list(references), "metrics": list(metrics), "rows": rows}, f, indent=1)
  return f"{stem}.md", f"{stem}.json"


def split_specs(text: str) -> list[str]:
  """--config 'a,b:x,y' -> config specs ['a', 'b:x,y']: a comma starts a new spec only where a config file of that
  name follows, so a config's own comma-separated arg ('cross_domain_ml100k:beta02,cap200') stays whole."""
  specs: list[str] = []
  for piece in (p for p in text.split(",") if p):
    name = piece.partition(":")[0]
    if specs and ":" in specs[-1] and not os.path.exists(runner.config_path(name)):
      specs[-1] += f",{piece}"
    else:
      specs.append(piece)
  return specs


def _baselines(flag: str) -> bool | list[str]:
  """--baselines: 'all' -> True, 'none' or '' -> False, 'a,b' -> ['a', 'b']."""
  if flag == "all":
    return True
  return [b for b in flag.split(",") if b] if flag not in ("none", "") else False


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config spec: name or name:arg (configs/<name>.py)")
  parser.add_argument("--sweep", default=None, help="sweep name (see --list) or 'all'")
  parser.add_argument("--list", action="store_true", help="print the config's sweeps and exit")
  parser.add_argument(
    "--baselines", default="all", help="reference baselines in the table: 'all', 'none' or comma-separated names"
  )
  parser.add_argument("--select", action="store_true", help="select on valid and write the _selection tables")
  parser.add_argument("--reference", default="item_user_offset", help="baseline the selected setting is paired with")
  parser.add_argument(
    "--select_methods", default="", help="select among these trained methods only (comma-separated; default all)"
  )
  parser.add_argument(
    "--select_metrics",
    default="",
    help="test metrics of the selection table (default: the config's select_metric, then its protocol's ranking "
    "metrics, e.g. mae,ndcg@5,auc on genre_split)",
  )
  parser.add_argument(
    "--late_baselines",
    default="",
    help="baselines to score on the finished runs' own splits where a run lacks them (experiments/late_baselines.py)",
  )
  parser.add_argument("--compare", default="", help="baselines to pair every method with (writes the _compare tables)")
  parser.add_argument(
    "--compare_metrics", default="", help="metrics of the _compare tables (default: --select_metrics)"
  )
  runner.add_run_args(parser, "RUNS/ablate/<config>/<run>")
  args = runner.parse_run_args(parser, argv)
  specs = split_specs(args.config)
  if len(specs) > 1:  # several benchmarks: one command, each config with its own sweep of this name
    given = list(argv if argv is not None else sys.argv[1:])
    rest = [a for i, a in enumerate(given) if not a.startswith("--config") and (i == 0 or given[i - 1] != "--config")]
    return max(main([f"--config={spec}", *rest]) for spec in specs)
  module, _ = runner.config_module(args.config)
  sweeps = named_sweeps(module, args.sweep)
  if args.list or args.sweep is None:
    for name, overrides in sweeps.items():
      print(f"{name}: {', '.join(labels(overrides))}")
    if not args.list:
      parser.error("--sweep is required: one of the names above, or 'all'")
    return 0
  chosen = select(sweeps, args.sweep)
  base = ({"seeds": args.seeds} if args.seeds is not None else {}) | runner.parse_sets(args.sets)
  runner.enable_compilation_cache(args.compilation_cache)
  command = "python -m experiments.ablate " + " ".join(argv if argv is not None else sys.argv[1:])
  select_metric = runner.load_config(args.config).select_metric
  for name, overrides in chosen.items():
    start = time.time()
    late = [b for b in args.late_baselines.split(",") if b]
    out = ablate(args.config, name, overrides, base, args.runs, baselines=_baselines(args.baselines), late=late)
    paths = write(args.config, name, out, base, time.time() - start, args.out, command)
    selected = [m for m in args.select_metrics.split(",") if m] or default_metrics(select_metric, out["runs"])
    if args.select:
      methods = [m for m in args.select_methods.split(",") if m] or None
      paths += write_selection(args.config, name, out, args.reference, selected, args.out, command, methods)
    if args.compare:
      refs = [r for r in args.compare.split(",") if r]
      metrics = [m for m in args.compare_metrics.split(",") if m] or selected
      paths += write_compare(args.config, name, out, refs, metrics, args.out, command)
    for path in paths:
      print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
