"""Paired comparisons of some rows of a strategies table against every other row: which methods a row beats.

    python -m experiments.row_pairs --table=experiments/results/strategies_peers_ml100k_click.json \
        --rows=metaemb,mwuf --metric=auc

Reads the table's .json (every row's results.json, as `experiments.strategies` writes it), rebuilds the per-seed
values the table shows (`strategies.table_values`) and prints, per chosen row and every other method of the
scenario (trained rows and reference baselines), the mean per-seed improvement, its SE and z (`ablate.paired`;
a win is z > 2, the tables' own rule).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from experiments import ablate
from experiments import strategies as table


def row_pairs(saved: dict, rows: Sequence[str], metric: str, scenario: str = "test") -> list[dict]:
  """[{row, other, mean, se, z, wins}] for each of `rows` against every other method with `metric` in `scenario`.

  Args:
    saved: a strategies table's .json ({"runs": [{"strategy": row, "results": results.json}]}).
    rows: the rows to compare (unknown ones raise ValueError listing the table's methods).
    metric: a metric column (error metrics such as 'mae' count lower as better).
    scenario: the evaluation set ('test', 'cold', 'warm_a', ...).
  """
  values = table.table_values([(r["strategy"], r["results"]) for r in saved["runs"]])
  have = [m for m in values if metric in values[m].get(scenario, {})]
  unknown = [r for r in rows if r not in have]
  if unknown:
    raise ValueError(f"rows {unknown} have no {scenario}/{metric} in the table; its methods with it: {have}")
  lower = ablate.lower_is_better(metric)
  out = []
  for row in rows:
    for other in have:
      if other != row:
        p = ablate.paired(values[row][scenario][metric], values[other][scenario][metric], lower)
        out.append({"row": row, "other": other, **p})
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--table", required=True, help="a strategies table's .json")
  parser.add_argument("--rows", required=True, help="comma-separated rows to compare")
  parser.add_argument("--metric", required=True)
  parser.add_argument("--scenario", default="test")
  args = parser.parse_args(argv)
  with open(args.table) as f:
    saved = json.load(f)
  rows = [r for r in args.rows.split(",") if r]
  print(f"{args.table}: {args.scenario}/{args.metric}, paired over seeds (improvement of row over other)")
  for p in row_pairs(saved, rows, args.metric, args.scenario):
    verdict = "WIN" if p["wins"] else ("loss" if p["z"] < -2 else "-")
    print(f"{p['row']:>16} vs {p['other']:<18} {p['mean']:+.4f}  SE {p['se']:.4f}  z {p['z']:+6.2f}  {verdict}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
