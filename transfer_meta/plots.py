"""Plots of a run (PNG, matplotlib Agg), written into its workdir by `train_and_evaluate` and reused by
`experiments/plots.py`:

  curves.png        learning curves, a panel per logged metric (train/outer_loss, valid/<selection metric>),
                    a line per learner and seed (metrics.jsonl's per-seed values)
  scenarios_<m>.png per-scenario bars of metric <m> (mean over seeds, ± std error bars): the learner and its
                    comparisons beside the reference baselines (results.json)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

STYLES = ("-", "--", ":", "-.")  # line style per learner when colours mark runs


def _pyplot():
  """matplotlib.pyplot on the Agg backend, imported at the first plot: `import transfer_meta` (every CLI call,
  `--help` and `--dry_run` included) does not pay its ~0.4 CPU-s import."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def run_dirs(paths: Sequence[str]) -> list[str]:
  """Run directories: each path holding metrics.jsonl, or else every sub-directory of it that does, in natural
  order ('support_cap=3' before 'support_cap=10'; 'all' after the numbers)."""
  out = []
  for path in paths:
    if os.path.isfile(os.path.join(path, "metrics.jsonl")):
      out.append(path)
      continue
    subs = sorted(
      (os.path.join(path, d) for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))), key=_natural
    )
    found = [d for d in subs if os.path.isfile(os.path.join(d, "metrics.jsonl"))]
    if not found:
      raise ValueError(f"{path}: no metrics.jsonl in it or in its sub-directories")
    out.extend(found)
  return out


def _natural(path: str) -> list:
  """Sort key comparing digit runs as numbers, so a numeric sweep sorts by value."""
  parts = re.split(r"(\d+(?:\.\d+)?)", os.path.basename(path))
  return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def _records(run_dir: str):
  """The records of a run's metrics.jsonl, in file (step) order."""
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    yield from (json.loads(line) for line in f if line.strip())


def read_curves(run_dir: str) -> dict:
  """{learner: {metric: ([steps], [values])}} from a run's metrics.jsonl (records in step order)."""
  curves: dict = {}
  for rec in _records(run_dir):
    per = curves.setdefault(rec.get("learner", "?"), {})
    for k, v in rec.items():
      if k not in ("learner", "step") and isinstance(v, int | float):
        steps, values = per.setdefault(k, ([], []))
        steps.append(rec["step"])
        values.append(v)
  return curves


def plot_curves(paths: Sequence[str], metrics: Sequence[str], out: str) -> str:
  """PNG with a panel per metric ('train/outer_loss', 'valid/mae'), a line per (run, learner): with several runs
  a run is a colour (along the sweep's order) and a learner a line style.

  Raises:
    ValueError when no run logged one of `metrics`.
  """
  dirs = run_dirs(paths)
  data = {d: read_curves(d) for d in dirs}
  learners = list(dict.fromkeys(name for curves in data.values() for name in curves))
  plt = _pyplot()
  colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(dirs))) if len(dirs) > 1 else None
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    drawn = 0
    for r, (d, curves) in enumerate(data.items()):
      for learner, per in curves.items():
        if metric in per:
          label = learner if len(dirs) == 1 else f"{os.path.basename(os.path.normpath(d))} {learner}"
          style = (
            {"color": colours[r], "linestyle": STYLES[learners.index(learner) % len(STYLES)]} if len(dirs) > 1 else {}
          )
          ax.plot(*per[metric], marker="." if len(per[metric][0]) < 30 else None, label=label, **style)
          drawn += 1
    if not drawn:
      have = sorted({k for curves in data.values() for per in curves.values() for k in per})
      raise ValueError(f"no run logged {metric!r}; logged: {have}")
    ax.set_xlabel("meta-step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(", ".join(os.path.normpath(p) for p in paths), fontsize=9)
  return save_figure(fig, out)


def save_figure(fig, out: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  _pyplot().close(fig)
  return out


def read_seed_curves(run_dir: str) -> dict:
  """{learner: {metric: ([steps], [[value per seed]])}} from metrics.jsonl's "per_seed" entries."""
  curves: dict = {}
  for rec in _records(run_dir):
    per = curves.setdefault(rec.get("learner", "?"), {})
    for k, values in rec.get("per_seed", {}).items():
      steps, rows = per.setdefault(k, ([], []))
      steps.append(rec["step"])
      rows.append(list(values))
  return curves


def plot_seed_curves(run_dir: str, metrics: Sequence[str], out: str, seeds: Sequence[int] | None = None) -> str:
  """PNG with a panel per metric and a line per (learner, seed): colour = learner, line style = seed.

  Raises:
    ValueError when no learner logged one of `metrics` per seed.
  """
  curves = read_seed_curves(run_dir)
  learners = list(curves)
  plt = _pyplot()
  colours = plt.cm.tab10(np.arange(max(len(learners), 1)) % 10)
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    drawn = 0
    for li, (learner, per) in enumerate(curves.items()):
      if metric not in per:
        continue
      steps, rows = per[metric]
      values = np.asarray(rows, float)  # [logged steps, seeds]
      for n in range(values.shape[1]):
        seed = seeds[n] if seeds is not None else n
        style = STYLES[n % len(STYLES)]
        ax.plot(steps, values[:, n], color=colours[li], linestyle=style, label=f"{learner} seed {seed}")
        drawn += 1
    if not drawn:
      have = sorted({k for per in curves.values() for k in per})
      raise ValueError(f"no learner logged {metric!r} per seed; logged: {have}")
    ax.set_xlabel("meta-step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{os.path.normpath(run_dir)}: learning curves per learner and seed", fontsize=9)
  return save_figure(fig, out)


def plot_scenarios(results: dict, metric: str, out: str) -> str:
  """PNG of `metric` per scenario: a bar per method (learner, comparisons, baselines), ± std error bars.

  Args:
    results: a results.json dict (`train_and_evaluate`'s return value).
    metric: a metric the learner reports ('mae'), plotted on the scenarios where it does (ranking views such as
      'new_user/catalogue' have none); every method must report it there, except a reference baseline that
      reports it on none of them (a ranker such as popularity, for MAE/RMSE), which is left out of the plot.
    out: PNG path.
  Returns:
    `out`.
  """
  # Scenarios where the learner reports `metric` (ranking views such as 'new_user/catalogue' carry no MAE).
  scenarios = [s for s, per in results["metrics"].items() if s != "valid" and metric in per]
  if not scenarios:
    have = sorted({k for s, per in results["metrics"].items() if s != "valid" for k in per})
    raise ValueError(f"learner {results['learner']!r} reports {metric!r} on no scenario; it reports {have}")
  baselines = {
    b: per for b, per in results.get("baselines", {}).items() if any(metric in per.get(s, {}) for s in scenarios)
  }
  methods = {results["learner"]: results["metrics"], **results.get("comparisons", {}), **baselines}
  missing = [m for m, per in methods.items() if any(metric not in per.get(s, {}) for s in scenarios)]
  if missing:
    raise ValueError(f"methods {missing} do not report {metric!r} on every scenario {scenarios}")
  width = 0.8 / len(methods)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(scenarios) * len(methods) ** 0.5), 4.2))
  x = np.arange(len(scenarios))
  for i, (method, per) in enumerate(methods.items()):
    mean = [per[s][metric]["mean"] for s in scenarios]
    std = [per[s][metric]["std"] for s in scenarios]
    hatch = None if method in (results["learner"], *results.get("comparisons", {})) else "//"
    ax.bar(x + (i - (len(methods) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=method, hatch=hatch)
  ax.set_xticks(x, scenarios)
  ax.set_ylabel(metric)
  n = len(results.get("seeds", [])) or "?"
  ax.set_title(f"{results.get('dataset')} / {results.get('protocol')}: {metric}, mean ± std over {n} seeds", fontsize=9)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, ncol=2)
  return save_figure(fig, out)


def write_run_plots(workdir: str, results: dict, select_metric: str) -> list[str]:
  """curves.png and scenarios_<metric>.png for each scenario metric of a finished run; returns the paths."""
  metric = select_metric.split("/", 1)[1]
  curve_metrics = [m for m in ("train/outer_loss", select_metric)]
  seeds = results.get("seeds")
  paths = [plot_seed_curves(workdir, curve_metrics, os.path.join(workdir, "curves.png"), seeds)]
  scenario_metrics = dict.fromkeys(k for per in results["metrics"].values() for k in per if "/" not in k)
  for m in sorted(scenario_metrics, key=lambda k: (k != metric, k)):
    paths.append(
      plot_scenarios(results, m, os.path.join(workdir, f"scenarios_{re.sub(r'[^0-9A-Za-z_.-]', '_', m)}.png"))
    )
  return paths
