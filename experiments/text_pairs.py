"""With item text vs without, from one `experiments.ablate` sweep whose runs come in pairs (issue 11).

    python -m experiments.text_pairs --ablate=experiments/results/ablate_cross_domain_ml1m_to_ml100k_methods.json
    # -> experiments/results/text_ablate_cross_domain_ml1m_to_ml100k_methods.{md,csv}

A run with `dataset.text_features=True` among its overrides is paired with the run whose overrides are the same
without that key (the sweep `methods` of `configs/cross_domain_ml1m_to_ml100k.py` holds such pairs); a text run
without its partner is an error. Per pair and method of both runs: each metric without text, with text, and the
per-seed paired difference (with - without; the seed fixes the split, the initialisation and the data order, so
each seed is one split evaluated both ways) as `experiments.text_table.paired_rows` writes it. The reference
baselines read no item feature: they are listed once (checked equal in both runs of every pair).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from experiments import runner
from experiments.text_table import paired_rows
from transfer_meta import report

TEXT_KEY = "dataset.text_features"


def _key(overrides: Mapping) -> str:
  return json.dumps({k: v for k, v in overrides.items() if k != TEXT_KEY}, sort_keys=True, default=str)


def text_pairs(records: Sequence[Mapping]) -> list[tuple[Mapping, Mapping]]:
  """(run without text, run with text) for every run of `records` (ablate's .json "runs") that sets
  `dataset.text_features=True`, in sweep order.

  Raises:
    ValueError: a text run has no partner with the same other overrides, or no run has text.
  """
  plain = {_key(r["overrides"]): r for r in records if not r["overrides"].get(TEXT_KEY, False)}
  pairs = []
  for r in records:
    if r["overrides"].get(TEXT_KEY, False):
      partner = plain.get(_key(r["overrides"]))
      if partner is None:
        raise ValueError(f"run {r['label']!r} has text but no run has the same overrides without it")
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
  tables = pair_tables(pairs, args.scenarios.split(","), args.metrics.split(","))
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
  print(open(md).read())
  print(f"wrote {md} and {csv}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
