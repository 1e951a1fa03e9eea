"""The cross-domain methods table of experiments/README.md from `experiments.ablate` outputs (no training).

    python -m experiments.cross_domain_summary experiments/results/ablate_cross_domain_ml100k_methods.json

Reads one or more ablate_<config>_<sweep>.json files of `configs/cross_domain_ml100k.py` sweeps (one run per
method) and prints one Markdown row per method on the cold users' target ratings: valid MAE (what selected it),
test MAE and nDCG@5 (mean ± population std over seeds), and the MAE difference method − reference, paired by seed,
± SE (std of the differences, ddof=1, / sqrt(seeds)), for the target-only, source-only and cross-domain references;
'**' marks a win by more than 2 SE. Then the reference rows, and each run's wall and stage seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from experiments import ablate

REFERENCES = ("item_user_offset", "source_item_user_offset", "item_mean_source_offset")
OTHER_BASELINES = ("item_mean", "global_mean")
SCENARIO = "cold_target"


def collect(records: Sequence[Mapping]) -> tuple[dict, dict, list[str]]:
  """({method: sets} of every run's strategy plus the first run's `none` learner, the first run's baselines, the
  runs' wall/stage-seconds lines)."""
  if not records:
    raise ValueError("no runs to tabulate")
  methods, walls = {}, []
  for run in records:
    res = run["results"]
    if "strategy" not in res:
      raise ValueError(f"run {run['label']!r} trained no strategy: not a cross-domain methods sweep")
    name = res["strategy"]["name"]
    methods[name] = res["comparisons"][name]
    methods.setdefault(res["learner"], res["metrics"])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in res["train"].get("stage_seconds", {}).items())
    walls.append(f"{name}: {run['wall']}; stages {stages}")
  return methods, records[0]["results"]["baselines"], walls


def _per_seed(sets: Mapping, scenario: str, metric: str) -> np.ndarray:
  return np.asarray(sets[scenario][metric]["per_seed"], np.float64)


def table(methods: Mapping, baselines: Mapping, rank_metric: str = "ndcg@5") -> list[str]:
  """Markdown lines: a row per method (sorted by test MAE), then the reference baselines."""
  missing = [r for r in (*REFERENCES, *OTHER_BASELINES) if r not in baselines]
  if missing:
    raise ValueError(f"baselines {missing} are not in the runs; they have {sorted(baselines)}")
  head = f"| method | valid MAE | MAE | {rank_metric} | " + " | ".join(f"Δ MAE vs {r}" for r in REFERENCES) + " |"
  lines = [head, "|---|---:|---:|---:|" + "---:|" * len(REFERENCES)]
  fmt = lambda x: f"{x.mean():.3f} ± {x.std():.3f}"  # noqa: E731
  for name, sets in sorted(methods.items(), key=lambda kv: _per_seed(kv[1], SCENARIO, "mae").mean()):
    mae = _per_seed(sets, SCENARIO, "mae")
    cells = []
    for ref in REFERENCES:
      d = ablate.paired(mae, _per_seed(baselines[ref], SCENARIO, "mae"), lower_better=True)
      cells.append(f"{0.0 - d['mean']:+.4f} ± {d['se']:.4f}{' **' if d['wins'] else ''}")
    valid = fmt(_per_seed(sets, "valid", "mae"))
    lines.append(
      f"| {name} | {valid} | {fmt(mae)} | {fmt(_per_seed(sets, SCENARIO, rank_metric))} | " + " | ".join(cells) + " |"
    )
  for ref in (*REFERENCES, *OTHER_BASELINES):
    mae, rank = _per_seed(baselines[ref], SCENARIO, "mae"), _per_seed(baselines[ref], SCENARIO, rank_metric)
    lines.append(f"| {ref} | | {fmt(mae)} | {fmt(rank)} |" + " |" * len(REFERENCES))
  return lines


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="+", help="ablate_<config>_<sweep>.json files (one run per method)")
  args = parser.parse_args(argv)
  records = []
  for path in args.paths:
    with open(path) as f:
      records += json.load(f)["runs"]
  methods, baselines, walls = collect(records)
  print("\n".join(table(methods, baselines)))
  print()
  print("\n".join(f"- {w}" for w in walls))
  return 0


if __name__ == "__main__":
  sys.exit(main())
