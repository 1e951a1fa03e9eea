"""Reference baselines (no learning) on MovieLens-100K under every protocol: the floor every learner must beat.

    python -m experiments.baselines --seeds=5      # or: make baselines

For each protocol (default parameters) and seed 0..N-1 it builds the split, prints each scenario's size, scores
every baseline of `transfer_meta.baselines` with the protocol's metrics, and writes the table (mean ± std over
seeds) to experiments/results/baselines_ml100k.{md,csv}.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import transfer_meta as tm
from transfer_meta import baselines, report
from transfer_meta.data.protocols import make_protocol

PROTOCOLS = ("melu", "recbole_metarec", "item_cold")


def run(dataset: str, protocols, seeds: int, lam: float, params: dict | None = None) -> tuple[dict, dict, dict]:
  """Returns ({protocol: rows}, {protocol: {scenario: size line}}, {protocol: split of seed 0}); `params` go to
  every protocol (`--param`)."""
  data = tm.load_dataset(dataset)
  print(data.summary())
  tables, sizes, first = {}, {}, {}
  for protocol in protocols:
    values: dict = {}  # method -> scenario -> metric -> [per seed]
    stats: dict = {}  # scenario -> [stats per seed]
    for seed in range(seeds):
      split = make_protocol(protocol, data, seed=seed, **(params or {}))
      first.setdefault(protocol, split)
      for scenario in split.scenarios:
        stats.setdefault(scenario, []).append(split.tasks[scenario].stats())
      for method, per_scenario in baselines.evaluate_baselines(data, split, seed=seed, lam=lam).items():
        for scenario, metrics in per_scenario.items():
          for metric, value in metrics.items():
            values.setdefault(method, {}).setdefault(scenario, {}).setdefault(metric, []).append(value)
    sizes[protocol] = {s: _size_line(st, values, s) for s, st in stats.items()}
    # Counts such as 'auc/tasks' go to the size lines, not the metric columns.
    table_values = {
      m: {s: {k: v for k, v in per.items() if "/" not in k} for s, per in ps.items()} for m, ps in values.items()
    }
    tables[protocol] = report.summarize(table_values)
  return tables, sizes, first


def _size_line(stats: list[dict], values: dict, scenario: str) -> str:
  mean = lambda key: float(np.mean([s[key] for s in stats]))  # noqa: E731
  line = (
    f"{mean('tasks'):.1f} tasks, support mean {mean('support_mean'):.1f} (min {min(s['support_min'] for s in stats)}), "
    f"query mean {mean('query_mean'):.1f} (min {min(s['query_min'] for s in stats)})"
  )
  counts = {k: v for k, v in next(iter(values.values()))[scenario].items() if k.endswith("/tasks")}
  for key, per_seed in counts.items():
    line += f"; {key.split('/')[0]} defined on {np.mean(per_seed):.1f} tasks"
  return line


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (each a different split)")
  parser.add_argument("--dataset", default="ml-100k")
  parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated protocol names")
  parser.add_argument("--lam", type=float, default=5.0, help="shrinkage of the item/user means")
  parser.add_argument("--out", default="experiments/results/baselines_ml100k", help="output path stem")
  parser.add_argument(
    "--param", action="append", default=[], metavar="KEY=VALUE", help="a protocol parameter (repeatable): beta=0.2"
  )
  args = parser.parse_args(argv)
  from experiments.runner import parse_sets  # noqa: PLC0415

  params = parse_sets(args.param)
  if args.seeds < 1:
    parser.error(f"--seeds={args.seeds} must be >= 1")
  start = time.time()
  protocols = [p for p in args.protocols.split(",") if p]
  tables, sizes, first = run(args.dataset, protocols, args.seeds, args.lam, params)
  seconds = time.time() - start
  for protocol in protocols:
    split = first[protocol]
    print(
      f"\n== {protocol} v{split.version} (task_kind {split.task_kind}, relevance "
      f"{split.params.get('relevance')}), mean over {args.seeds} seeds"
    )
    for scenario, line in sizes[protocol].items():
      print(f"  {scenario}: {line}")
    print(report.to_markdown(tables[protocol]))
  header = (
    f"# Reference baselines on {args.dataset}\n\n"
    f"`python -m experiments.baselines {' '.join(argv if argv is not None else sys.argv[1:])}` (lam={args.lam:g}); "
    f"mean ± std over seeds 0..{args.seeds - 1}, each seed a different split; protocol parameters "
    f"{params or 'at their defaults'}.\n"
  )
  sections = {f"{p} v{first[p].version}": tables[p] for p in protocols}
  notes = [f"{p}/{s}: {line}" for p in protocols for s, line in sizes[p].items()]
  notes += [
    "std: population standard deviation over seeds (ddof=0), as in results.json.",
    "Score ties (constant, global_mean; item_mean on new items) are scored as the exact expectation over random "
    "tie-breaking; ':index' metrics break every tie by query position, as RecBole-MetaRec's torch.topk does.",
    f"item_cold is item-as-task: item_mean there is the query user's mean ({baselines.ROLES['item']}).",
  ]
  md_path, csv_path = report.write_tables(sections, args.out, header=header, notes=notes)
  print(f"wrote {md_path} and {csv_path}; wall time {seconds:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
