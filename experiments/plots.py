"""Plots (PNG, matplotlib Agg): a metric across an ablation's runs per method, and learning curves of runs.

    python -m experiments.plots --ablation=experiments/results/ablate_melu_ml100k_support_cap.csv \
        --metric=new_user/mae [--methods=melu,none] [--out=PATH.png]
    python -m experiments.plots --runs=runs/ablate/melu_ml100k --curves=train/outer_loss,valid/mae [--out=PATH.png]

Ablation plot: x = the sweep's override values in sweep order (evenly spaced: K = 1, 3, 5, 10, 20, all), y = the
metric's mean over seeds with ± std error bars, a line per method (`ablate` rows are 'method @ key=value').
Learning curves: one panel per metric, a line per (run, learner) from each run's metrics.jsonl; a --runs
directory without metrics.jsonl stands for every run directory directly under it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.ablate import SEP  # noqa: E402
from transfer_meta.plots import STYLES, plot_curves, read_curves, run_dirs  # noqa: E402, F401  (moved to the library)
from transfer_meta.plots import save_figure as _save  # noqa: E402


def read_ablation(path: str, scenario: str, metric: str) -> tuple[str, list[str], dict]:
  """One metric of an ablation table (the long-format CSV of `ablate`).

  Returns:
    (the override key, the x labels in sweep order, {method: {x label: (mean, std)}}).
  Raises:
    ValueError when the table has no row for `scenario`/`metric` (naming the ones it has).
  """
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  picked = [r for r in rows if r["scenario"] == scenario and r["metric"] == metric]
  if not picked:
    have = sorted({f"{r['scenario']}/{r['metric']}" for r in rows})
    raise ValueError(f"{path}: no rows for {scenario}/{metric}; it has {have}")
  key, xs, series = "", [], {}
  for r in picked:
    method, sep, label = r["method"].rpartition(SEP)
    if not sep:
      raise ValueError(f"{path}: method {r['method']!r} is not 'method{SEP}key=value' (is this an ablate table?)")
    key, _, x = label.partition("=") if "=" in label else ("", "", label)
    if x not in xs:
      xs.append(x)
    series.setdefault(method, {})[x] = (float(r["mean"]), float(r["std"]))
  return key, xs, series


def plot_ablation(path: str, metric: str, out: str, methods: Sequence[str] | None = None) -> str:
  """PNG of `metric` ('scenario/name') against the sweep's values, a line per method with std error bars.

  Args:
    path: ablation CSV; metric: 'new_user/mae'; out: PNG path.
    methods: the methods to draw (default all), in this order.
  Returns:
    `out`.
  """
  scenario, _, name = metric.partition("/")
  if not name:
    raise ValueError(f"--metric={metric!r}: want 'scenario/metric', e.g. new_user/mae")
  key, xs, series = read_ablation(path, scenario, name)
  if methods:
    missing = sorted(set(methods) - set(series))
    if missing:
      raise ValueError(f"methods {missing} not in {path}; it has {list(series)}")
    series = {m: series[m] for m in methods}
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, (method, points) in enumerate(series.items()):
    pos = [j for j, x in enumerate(xs) if x in points]
    mean = [points[xs[j]][0] for j in pos]
    std = [points[xs[j]][1] for j in pos]
    offset = (i - (len(series) - 1) / 2) * 0.03  # keeps overlapping error bars apart
    ax.errorbar([p + offset for p in pos], mean, yerr=std, marker="o", capsize=3, label=method)
  ax.set_xticks(range(len(xs)), xs)
  ax.set_xlabel(key or "run")
  ax.set_ylabel(metric)
  ax.set_title(f"{os.path.basename(path)[:-4]}: {metric} (mean ± std over seeds)", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ablation", help="ablation CSV (experiments/results/ablate_*.csv)")
  parser.add_argument("--metric", default="new_user/mae", help="scenario/metric for --ablation")
  parser.add_argument("--methods", default="", help="comma-separated methods to draw (default: all)")
  parser.add_argument("--runs", nargs="+", help="run directories (or parents of run directories) for curves")
  parser.add_argument("--curves", default="train/outer_loss,valid/mae", help="comma-separated logged metrics")
  parser.add_argument("--out", default=None, help="PNG path (default: beside the CSV / in the first run dir)")
  args = parser.parse_args(argv)
  if bool(args.ablation) == bool(args.runs):
    parser.error("give exactly one of --ablation and --runs")
  if args.ablation:
    out = args.out or f"{args.ablation[:-4]}_{args.metric.replace('/', '_').replace('@', 'at')}.png"
    path = plot_ablation(args.ablation, args.metric, out, [m for m in args.methods.split(",") if m])
  else:
    out = args.out or os.path.join(args.runs[0], "curves.png")
    path = plot_curves(args.runs, [m for m in args.curves.split(",") if m], out)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
