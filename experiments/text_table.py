"""With item text vs without: the MAML family, the transfer baselines and the reference baselines on cold items.

    python -m experiments.text_table --seeds=5                      # -> experiments/results/text_<configs>.{md,csv}
    python -m experiments.text_table --configs=melu_ml100k --seeds=2 --set num_steps=20 --out=/tmp/t
    # on a busy machine, one process per (side, learner), then tabulate what finished:
    python -m experiments.text_table --configs=melu_ml100k --seeds=5 --per_learner --only=True --only_learner=melu
    python -m experiments.text_table --collect

Each config runs twice, `dataset.text_features=False` and `=True` (a MiniLM embedding of the item title as a
dense item feature, projected 384 -> d by every model; the encoder frozen), with the same seeds, splits and
every other setting; its learner is compared with `LEARNERS`, all with the config's inner loop (FOMAML with
MeLU's adapt set, as in the configs). Runs go to RUNS/text/<config>/text=<bool>/ (reused when finished).
The table has, per scenario and method, each metric without text, with text, and the per-seed paired
difference (with - without; each seed is one split evaluated both ways). The reference baselines use no
features, so text cannot change them: they are listed once as the bar to beat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence

from experiments import runner
from transfer_meta import report

CONFIGS = ("melu_ml100k", "item_cold_ml100k")
SCENARIOS = {"melu_ml100k": ("new_item", "new_user_new_item"), "item_cold_ml100k": ("new_item",)}
METRICS = {"melu_ml100k": ("mae", "ndcg@3"), "item_cold_ml100k": ("mae", "auc")}
# Besides the config's own learner (MAML-MeLU): the rest of the MAML family and `none` (same network, no
# adaptation); `--learners` adds the transfer baselines (finetune, head_only) where there is time for them.
LEARNERS = ("fomaml", "maml", "anil", "meta_sgd", "reptile", "none")
NO_INNER = ("none",)  # learners without an inner loop take no inner kwargs
MELU_ADAPT = r"decision_|output"


def overrides(config, text: bool, learners: Sequence[str] = LEARNERS) -> dict:
  """The run's overrides: text on/off and the comparison learners with the config's inner loop."""
  inner = {k: config.learner[k] for k in ("inner_steps", "inner_lr")}
  kwargs = {name: dict(inner) for name in learners if name not in NO_INNER}
  if "fomaml" in kwargs:
    kwargs["fomaml"]["adapt_regex"] = MELU_ADAPT
  return {"dataset.text_features": text, "compare_learners": tuple(learners), "compare_kwargs": kwargs}


def learner_overrides(config, text: bool, learner: str) -> dict:
  """`--per_learner` runs: one learner alone (the config's own, or a comparison with the config's inner loop);
  only the config's own learner's run also evaluates the reference baselines."""
  if learner == config.learner_name:
    kwargs = config.learner.to_dict()
  else:
    kwargs = overrides(config, text, (learner,))["compare_kwargs"].get(learner, {})
  out = {"dataset.text_features": text, "learner_name": learner, "learner": kwargs}
  out |= {"compare_learners": (), "compare_kwargs": {}}
  return out if learner == config.learner_name else out | {"baselines": ()}


def collect(workdir: str) -> tuple[dict, dict | None, list[str]]:
  """Finished runs of one side, without running anything: a combined run's results.json, else the per-learner
  runs under it that have finished.

  Returns:
    ({method: {scenario: {metric: [per seed]}}}, the results.json holding the baselines (None if none
    finished), the finished runs' directories).
  """
  paths = [os.path.join(workdir, "results.json")]
  if not os.path.isfile(paths[0]):
    subdirs = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
    paths = [os.path.join(workdir, d, "results.json") for d in subdirs]
  values, main, found = {}, None, []
  for path in paths:
    if os.path.isfile(path):
      with open(path) as f:
        results = json.load(f)
      values |= runner.method_values(results)
      main = results if results.get("baselines") else main
      found.append(os.path.dirname(path))
  return values, main, found


def paired_rows(
  off: Mapping, on: Mapping, scenarios: Sequence[str], metrics: Sequence[str], baselines: Sequence[str]
) -> list[report.Row]:
  """Rows `scenario, method` with cells '<metric>', '<metric> +text', 'Δ <metric>' from two `method_values`.

  Args:
    off, on: {method: {scenario: {metric: [per seed]}}} without and with text (same seeds).
    scenarios, metrics: what to tabulate.
    baselines: reference methods: one cell per metric they report (they read no features).
  Returns:
    Rows in scenario, then method order.
  """
  rows = []
  order = [m for m in off if m not in baselines] + [m for m in off if m in baselines]
  for scenario in scenarios:
    for method in order:
      a = off[method].get(scenario)
      if a is None:
        continue
      cells = {}
      for m in metrics:
        if method in baselines and m not in a:
          continue  # a ranking baseline ('popularity') reports no MAE/RMSE: its cell is left empty
        cells[m] = report.stat(a[m])
        if method in baselines:
          continue
        b = on[method][scenario][m]
        if len(b) != len(a[m]):
          raise ValueError(f"{method}/{scenario}/{m}: {len(a[m])} seeds without text, {len(b)} with")
        cells[f"{m} +text"] = report.stat(b)
        cells[f"Δ {m}"] = report.stat([y - x for x, y in zip(a[m], b)])
      rows.append(report.Row(scenario, method, cells))
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from " + ", ".join(CONFIGS))
  parser.add_argument("--learners", default=",".join(LEARNERS), help="comparison learners (comma-separated)")
  parser.add_argument(
    "--only", choices=("", "False", "True"), default="", help="run only text_features=False or =True (no table)"
  )
  parser.add_argument(
    "--per_learner",
    action="store_true",
    help="one run per learner (RUNS/text/<config>/text=<bool>/<learner>): separate processes can share the work",
  )
  parser.add_argument("--only_learner", default="", help="with --per_learner: run just this learner (no table)")
  parser.add_argument(
    "--collect",
    action="store_true",
    help="run nothing: tabulate the finished runs (combined or per learner) and the methods both sides have",
  )
  runner.add_run_args(parser, "RUNS/text/<config>/text=<bool>")
  args = runner.parse_run_args(parser, argv)
  runner.enable_compilation_cache(args.compilation_cache)
  tables, notes, walls = {}, [], []
  for spec in args.configs.split(","):
    name = spec.partition(":")[0]  # 'melu_ml100k:smoke' runs the smoke variant
    if name not in CONFIGS:
      parser.error(f"--configs: {spec!r} is not one of {CONFIGS} (optionally with ':smoke')")
    base = runner.load_config(spec)
    sets = ({"seeds": args.seeds} if args.seeds is not None else {}) | runner.parse_sets(args.sets)
    if args.collect:
      values, mains, found = {}, {}, {}
      for text in (False, True):
        workdir = os.path.join(args.runs, "text", runner.config_name(spec), f"text={text}")
        values[text], mains[text], found[text] = collect(workdir)
        secs = []
        for d in found[text]:
          wall_path = os.path.join(d, runner.WALL_FILE)
          if os.path.isfile(wall_path):
            with open(wall_path) as f:
              secs.append(json.load(f)["wall_seconds"])
        walls.append(f"{name} text={text}: {len(found[text])} run(s), {sum(secs) / 60:.1f} min of process wall time")
      res = mains[False] or mains[True]  # the baselines read no features: either side's are the same
      if res is None:  # no run with the baselines here (e.g. only new learners rerun): tabulate the methods
        if not found[False] or not found[True]:
          print(f"{spec}: no finished runs on both sides yet; skipped")
          continue
        with open(os.path.join(found[False][0], "results.json")) as f:
          res = json.load(f) | {"baselines": {}}
      baselines = list(res["baselines"])
      for t in (False, True):
        values[t] |= {b: runner.method_values(res)[b] for b in baselines}
      rank = {m: i for i, m in enumerate((base.learner_name, *LEARNERS, "finetune", "head_only", *baselines))}
      both = sorted((m for m in values[False] if m in values[True]), key=lambda m: rank.get(m, len(rank)))
      only = sorted(set(values[False]) ^ set(values[True]))
      if only:
        notes.append(f"{name}: left out, finished on one side only: {', '.join(only)}.")
      values = {t: {m: values[t][m] for m in both} for t in (False, True)}
      title = f"{name}: {res['protocol']} v{res['protocol_version']}, seeds {res['seeds']}"
      tables[title] = paired_rows(values[False], values[True], SCENARIOS[name], METRICS[name], baselines)
      continue
    values = {}
    for text in (False, True):
      if args.only and str(text) != args.only:
        continue
      workdir = os.path.join(args.runs, "text", runner.config_name(spec), f"text={text}")
      learners = args.learners.split(",")
      if not args.per_learner:
        config = runner.apply_overrides(base, sets | overrides(base, text, learners))
        info = runner.run(config, workdir)
        values[text] = runner.method_values(info.results)
      else:
        values[text] = {}
        for learner in (base.learner_name, *learners):
          if args.only_learner and learner != args.only_learner:
            continue
          config = runner.apply_overrides(base, sets | learner_overrides(base, text, learner))
          one = runner.run(config, os.path.join(workdir, learner))
          values[text] |= runner.method_values(one.results)
          if learner == base.learner_name:
            info = one
        if args.only_learner:
          continue
      walls.append(f"{name} text={text}: {runner.describe_wall(info)}")
      baselines = list(info.results.get("baselines", {}))
      res = info.results
    if args.only or args.only_learner:
      continue
    title = f"{name}: {res['protocol']} v{res['protocol_version']}, seeds {res['seeds']}"
    tables[title] = paired_rows(values[False], values[True], SCENARIOS[name], METRICS[name], baselines)
  if args.only or args.only_learner:
    print(f"ran {args.configs} text={args.only or 'both'} {args.only_learner}; rerun without --only* for the table")
    return 0
  header = "\n".join(
    [
      "# Item text features (MiniLM title embedding) vs none, ML-100K",
      "",
      f"`python -m experiments.text_table {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"),
      "",
      f"- commit: {runner.commit()}",
      f"- machine: {runner.machine()}",
      "- methods: those finished on both sides (--collect)"
      if args.collect
      else f"- learners besides MAML-MeLU: {args.learners} (inner loop of the config)",
      f"- wall time: {'; '.join(walls)}",
      f"- finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
      "",
    ]
  )
  notes += [
    "mean ± std over seeds (population std); Δ = with text - without, paired per seed (same split and data order).",
    "MAE: lower is better (Δ < 0 means text helps); ndcg@3 and auc: higher is better.",
    "reference baselines (random .. item_user_offset) use no item features: text cannot change them.",
  ]
  stem = "text_" + "_".join(runner.config_name(s) for s in args.configs.split(","))
  md, csv = report.write_tables(tables, os.path.join(args.out, stem), header=header, notes=notes)
  print(open(md).read())
  print(f"wrote {md} and {csv}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
