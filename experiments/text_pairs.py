"""With item text vs without, from one `experiments.ablate` sweep whose runs come in pairs (issue 11).

    python -m experiments.text_pairs --ablate=experiments/results/ablate_cross_domain_ml1m_to_ml100k_methods.json
    # -> experiments/results/text_ablate_cross_domain_ml1m_to_ml100k_methods.{md,csv,json}

A run with `dataset.text_features=True` among its overrides is paired with the run whose overrides are the same
without that key (the sweep `methods` of `configs/cross_domain_ml1m_to_ml100k.py` holds such pairs); a text run
without its partner is an error. Per pair and method of both runs: each metric without text, with text, and the
per-seed paired difference (with - without; the seed fixes the split, the initialisation and the data order, so
each seed is one split evaluated both ways) as `experiments.text_table.paired_rows` writes it. The reference
baselines read no item feature: they are listed once (checked equal in both runs of every pair).

Whether text helps (`text_effects`, the .md's last section and the .json): per pair, trained method, scenario and
metric, the improvement from text paired by seed with `experiments.ablate.paired` (without - with for MAE/RMSE, with
- without for ranking metrics; SE = std of the per-seed differences, ddof=1, / sqrt(seeds)), and a verdict on the
first metric: 'helps' (improvement > 2 SE), 'hurts' (< -2 SE) or 'no difference' (within 2 SE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from experiments import ablate, runner
from experiments.text_table import paired_rows
from transfer_meta import report

TEXT_KEY = "dataset.text_features"


def _key(overrides: Mapping) -> str:
  return json.dumps({k: v for k, v in overrides.items() if k != TEXT_KEY}, sort_keys=True, default=str)


def text_pairs(records: Sequence[Mapping]) -> list[tuple[Mapping, Mapping]]:
  """(run without text, run with text) for every run of `records` (ablate's .json "runs") that sets
  `dataset.text_features=True`, in sweep order.

  Raises:
    ValueError: a text run has no partner with the same other overrides or with other seeds, or no run has text.
  """
  plain = {_key(r["overrides"]): r for r in records if not r["overrides"].get(TEXT_KEY, False)}
  pairs = []
  for r in records:
    if r["overrides"].get(TEXT_KEY, False):
      partner = plain.get(_key(r["overrides"]))
      if partner is None:
        raise ValueError(f"run {r['label']!r} has text but no run has the same overrides without it")
      seeds = (partner["results"].get("seeds"), r["results"].get("seeds"))
      if seeds[0] != seeds[1]:
        raise ValueError(f"run {r['label']!r} has seeds {seeds[1]}, its partner without text {seeds[0]}: not paired")
      pairs.append((partner, r))
  if not pairs:
    raise ValueError(f"no run sets {TEXT_KEY}=True: nothing to pair")
  return pairs


def pair_tables(
  pairs: Sequence[tuple[Mapping, Mapping]], scenarios: Sequence[str], metrics: Sequence[str]
) -> dict[str, list[report.Row]]:
  """{title: rows} with one table per pair (`paired_rows`); the baselines of both runs must agree exactly."""
  tables = {}
  for off_run, on_run in pairs:
    off, on = runner.method_values(off_run["results"]), runner.method_values(on_run["results"])
    baselines = list(off_run["results"].get("baselines", {}))
    for b in baselines:
      if off[b] != on.get(b):
        raise ValueError(f"baseline {b!r} differs with text in run {on_run['label']!r}: it reads no feature")
    trained = [m for m in off if m not in baselines]
    missing = [m for m in trained if m not in on]
    if missing:
      raise ValueError(f"run {on_run['label']!r} lacks methods {missing} of {off_run['label']!r}")
    tables[f"{off_run['label']} (with text: {TEXT_KEY}=True)"] = paired_rows(off, on, scenarios, metrics, baselines)
  return tables


def _trained(run: Mapping) -> dict:
  """{method: {scenario: {metric: [per seed]}}} of a run's learner and comparison learners (not its baselines)."""
  values = runner.method_values(run["results"])
  return {m: v for m, v in values.items() if m not in run["results"].get("baselines", {})}


def verdict(improvement: Mapping) -> str:
  """'helps' (z > 2), 'hurts' (z < -2) or 'no difference' for one `ablate.paired` improvement (NaN SE: one seed)."""
  if improvement["se"] != improvement["se"]:
    return "no difference"
  return "helps" if improvement["z"] > 2 else "hurts" if improvement["z"] < -2 else "no difference"


def text_effects(
  pairs: Sequence[tuple[Mapping, Mapping]], scenarios: Sequence[str], metrics: Sequence[str]
) -> list[dict]:
  """The improvement from text of every trained method of every pair, paired by seed.

  Args:
    pairs: `text_pairs(...)`; scenarios, metrics: what to tabulate (a missing one raises KeyError naming it).
  Returns:
    [{"label" (the run without text), "method", "scenario", "improvement": {metric: ablate.paired(with, without)},
      "verdict": `verdict` of metrics[0]}] in pair, method, scenario order. Improvement > 0: text is better.
  """
  rows = []
  for off_run, on_run in pairs:
    off, on = _trained(off_run), _trained(on_run)
    for method, per_scenario in off.items():
      for scenario in scenarios:
        if scenario not in per_scenario:
          raise KeyError(f"run {off_run['label']!r}, method {method!r} has no scenario {scenario!r}")
        imp = {}
        for m in metrics:
          if m not in per_scenario[scenario]:
            raise KeyError(f"run {off_run['label']!r}, {method}/{scenario} reports no {m!r}")
          with_text, without = on[method][scenario][m], per_scenario[scenario][m]
          imp[m] = ablate.paired(with_text, without, ablate.lower_is_better(m))
        rows.append(
          {
            "label": off_run["label"],
            "method": method,
            "scenario": scenario,
            "improvement": imp,
            "verdict": verdict(imp[metrics[0]]),
          }
        )
  return rows


def effects_markdown(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
  """The `text_effects` rows as a table: improvement from text ± SE (z) per metric, and the verdict."""
  lines = [
    f"## Does text help? Improvement from text, paired by seed: ± SE (z); verdict on {metrics[0]} at 2 SE",
    "",
    "MAE/RMSE: without − with; ranking metrics: with − without (positive: text is better); SE = std of the "
    "per-seed differences (ddof=1) / sqrt(seeds).",
    "",
    "| run (without text) | method | scenario | " + " | ".join(metrics) + " | verdict |",
    "|---|---|---|" + "---:|" * len(metrics) + "---|",
  ]
  for row in rows:
    cells = [f"{v['mean']:+.4f} ± {v['se']:.4f} ({v['z']:+.1f})" for v in row["improvement"].values()]
    lines.append(
      f"| {row['label']} | {row['method']} | {row['scenario']} | " + " | ".join(cells) + f" | {row['verdict']} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ablate", required=True, help="an ablate_<config>_<sweep>.json")
  parser.add_argument("--scenarios", default="cold_target", help="test scenarios (comma-separated)")
  parser.add_argument("--metrics", default="mae,rmse,ndcg@5,auc", help="metrics (comma-separated)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
  args = parser.parse_args(argv)
  with open(args.ablate) as f:
    sweep = json.load(f)
  pairs = text_pairs(sweep["runs"])
  scenarios, metrics = args.scenarios.split(","), args.metrics.split(",")
  tables = pair_tables(pairs, scenarios, metrics)
  first = pairs[0][0]["results"]
  command = "python -m experiments.text_pairs " + " ".join(sys.argv[1:] if argv is None else argv)
  header = "\n".join(
    [
      f"# Item text (MiniLM title embedding) vs none: {sweep['config']} sweep `{sweep['sweep']}` ({first['dataset']},"
      f" protocol {first['protocol']} v{first['protocol_version']}, seeds {first['seeds']})",
      "",
      f"`{command}`",
      "",
      f"- runs: {os.path.basename(args.ablate)} (its .md has the commit, machine and wall times)",
      "- mean ± std over seeds (population std); Δ = with text - without, paired per seed (same split and order).",
      "- MAE/RMSE: lower is better (Δ < 0: text helps); ndcg@5, auc: higher is better.",
      "- the reference baselines read no item feature: listed once, equal with and without text (checked).",
      "",
    ]
  )
  stem = os.path.join(args.out, "text_" + os.path.splitext(os.path.basename(args.ablate))[0])
  md, csv = report.write_tables(tables, stem, header=header)
  effects = text_effects(pairs, scenarios, metrics)
  with open(md, "a") as f:
    f.write("\n" + effects_markdown(effects, metrics))
  with open(f"{stem}.json", "w") as f:
    json.dump({"ablate": args.ablate, "metrics": metrics, "effects": effects}, f, indent=1)
  print(open(md).read())
  print(f"wrote {md}, {csv} and {stem}.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
