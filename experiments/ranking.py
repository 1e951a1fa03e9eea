"""Query-only vs full-catalogue vs sampled-negative ranking, side by side, with the reference baselines, breakdowns
by support size and entry popularity, and a plot of the metric vs support size.

    python -m experiments.ranking --configs=melu_ml100k,recbole_metarec_ml100k --seeds=5
    python -m experiments.ranking --configs=smoke_synthetic:tiny --seeds=1 --out=/tmp/results   # seconds

Each config runs (`runner.run`, into RUNS/ranking/<name>/; a finished run of the same config is reused) with
`eval_ranking=("query", "catalogue", "sampled")`. Per config it writes experiments/results/ranking_<name>.{md,csv}:
  1. per scenario, every method's query-only ranking metrics (the protocol's own) beside the catalogue and sampled
     ones and the beyond-accuracy metrics, plus which method is best under each protocol;
  2. the support-size breakdown (every protocol, a column per bin, task counts as a row);
  3. the popularity breakdown of catalogue recall@k (relevant entries per bin as a row);
and ranking_<name>_support.png, the catalogue metric (--metric) vs support size per method (new_user scenario when
the protocol has one, else its first).
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import runner  # noqa: E402
from transfer_meta import metrics as metrics_lib  # noqa: E402
from transfer_meta import report  # noqa: E402

PROTOCOLS = ("query", "catalogue", "sampled")
BEYOND = ("coverage", "gini", "novelty", "ild")


def query_columns(metric_names) -> list[str]:
  """The protocol's own ranking metrics shown beside the catalogue ones (no ':index' twins, no error metrics)."""
  specs = [metrics_lib.parse_metric(n) for n in metric_names if "/" not in n]  # not counts, breakdowns
  return [s.name for s in specs if s.base not in metrics_lib.POINTWISE and not s.index]


def side_by_side(values: dict, scenarios, query_metrics, rank_metrics) -> dict:
  """{method: {scenario: {'<protocol> <metric>': per seed}}}: the three protocols of each scenario in one row."""
  out = {}
  for method, per in values.items():
    for scenario in scenarios:
      row = {f"query {m}": per[scenario][m] for m in query_metrics if m in per.get(scenario, {})}
      for protocol in PROTOCOLS[1:]:
        for m, v in per.get(f"{scenario}/{protocol}", {}).items():
          if "/" in m:
            continue
          beyond = m.split("@")[0] in BEYOND
          if beyond or m in rank_metrics:
            row[m if beyond else f"{protocol} {m}"] = v
      out.setdefault(method, {})[scenario] = row
  return out


def breakdown(values: dict, key: str, metric: str, prefix: str, count: str) -> dict:
  """{method: {key: {bin: per seed}}} for one metric of one scenario/protocol, and the bin counts as a method."""
  out, counts = {}, {}
  for method, per in values.items():
    cells = per.get(key, {})
    bins = [k.split("/")[0] for k in cells if k.startswith(prefix) and k.endswith(f"/{metric}")]
    out[method] = {key: {b: cells[f"{b}/{metric}"] for b in bins}}
    counts = {b: cells[f"{b}/{count}"] for b in bins} or counts
  out[f"({count})"] = {key: counts}
  return out


def best(rows, column: str) -> str:
  """The method with the highest mean in `column` (count rows excluded), and whether its lead over the runner-up
  is larger than both of their stds over seeds ('clear') or not ('within noise of <runner-up>')."""
  cand = sorted(
    ((r.cells[column].mean, r.cells[column].std, r.method) for r in rows if column in r.cells and "(" not in r.method),
    reverse=True,
  )
  cand = [c for c in cand if np.isfinite(c[0])]
  if not cand:
    return "-"
  if len(cand) == 1:
    return cand[0][2]
  (m1, s1, a) = cand[0]
  tied = sorted(c[2] for c in cand if c[0] == m1)  # identical scores (item_mean = item_user_offset; saturated hr@5)
  if len(tied) > 2:
    a = f"{len(tied)} methods tied at {m1:.3f} ({', '.join(tied)})"
  others = [c for c in cand[1:] if c[0] != m1]
  if not others:
    return f"{a} (all tied)"
  (m2, s2, b) = others[0]
  return f"{a} (clear)" if m1 - m2 > max(s1, s2) else f"{a} (within noise of {b})"


def plot_support(values: dict, key: str, metric: str, out: str) -> str:
  """The metric's mean ± std over seeds per support-size bin, a line per method."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, per in values.items():
    cells = per.get(key, {})
    bins = [k.split("/")[0] for k in cells if k.startswith("K=") and k.endswith(f"/{metric}")]
    if not bins:
      continue
    mean = [np.nanmean(cells[f"{b}/{metric}"]) for b in bins]
    std = [np.nanstd(cells[f"{b}/{metric}"]) for b in bins]
    ax.errorbar(range(len(bins)), mean, yerr=std, label=method, marker="o", capsize=3)
    ax.set_xticks(range(len(bins)), [b.removeprefix("K=") for b in bins])
  ax.set_xlabel("support size K (ratings the task has)")
  ax.set_ylabel(f"{key} {metric}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def run_config(spec: str, args, overrides: dict) -> tuple[str, str, str]:
  config = runner.apply_overrides(runner.load_config(spec), overrides)
  name = runner.config_name(spec)
  info = runner.run(config, os.path.join(args.runs, "ranking", name))
  results = info.results
  values = runner.method_values(results)
  scenarios = [s for s in results["metrics"] if s != "valid" and "/" not in s]
  rank_metrics = list(config.ranking.metrics)
  qcols = query_columns(next(iter(values.values()))[scenarios[0]])
  tables, notes = {}, []
  metric = args.metric
  k = config.ranking.beyond_k
  headline = ([c for c in qcols if c.startswith("ndcg")] or qcols)[-1]  # ndcg@3 (melu), ndcg_bin@5, auc
  summary_cols = [f"query {headline}", f"catalogue {metric}", "catalogue auc", f"sampled {metric}", f"coverage@{k}"]
  full = report.summarize(
    {m: v for m, v in side_by_side(values, scenarios, qcols, rank_metrics).items()}  # every scenario
  )
  tables["summary"] = [
    report.Row(r.scenario, r.method, {c: r.cells[c] for c in summary_cols if c in r.cells}) for r in full
  ]
  for scenario in scenarios:
    rows = report.summarize(
      {m: {scenario: v[scenario]} for m, v in side_by_side(values, [scenario], qcols, rank_metrics).items()}
    )
    tables[f"{scenario}: query-only vs catalogue vs sampled"] = rows
    picks = [
      f"{c}: {best(rows, c)}" for c in [f"query {q}" for q in qcols] + [f"catalogue {metric}", f"sampled {metric}"]
    ]
    notes.append(f"{scenario}, best method by " + "; ".join(picks))
  for scenario in scenarios:
    for protocol in PROTOCOLS:
      key = scenario if protocol == "query" else f"{scenario}/{protocol}"
      m = metric if protocol != "query" else headline
      tables[f"{key} {m} by support size K"] = report.summarize(breakdown(values, key, m, "K=", "tasks"))
    key = f"{scenario}/catalogue"
    k = config.ranking.beyond_k
    tables[f"{key} recall@{k} by training rows of the relevant entry"] = report.summarize(
      breakdown(values, key, f"recall@{k}", "pop=", "entries")
    )
  shown = "new_user" if "new_user" in scenarios else scenarios[0]  # the cold-start scenario when there is one
  plot = plot_support(values, f"{shown}/catalogue", metric, os.path.join(args.out, f"ranking_{name}_support.png"))
  header = (
    f"# Ranking protocols: {name} ({results['dataset']}, "
    f"protocol {results['protocol']} v{results['protocol_version']})\n\n"
    f"`python -m experiments.ranking --configs={spec} --seeds={len(results['seeds'])}"
    + "".join(f" --set '{k}={v!r}'" for k, v in args_sets(args).items())
    + "`\n\n"
    f"- commit: {runner.commit()}; seeds {results['seeds']}; wall time (train + evaluate, all learners): "
    f"{runner.describe_wall(info)}\n- machine: {runner.machine()}\n"
    f"- relevance for catalogue/sampled: from DIR/ranking_manifest.json; catalogue = every entry the task's entity "
    f"never rated + its query; sampled = each relevant query entry vs {config.ranking.negatives} never-rated entries\n"
  )
  notes += [
    "mean ± std over seeds (population std). Breakdown rows in parentheses are counts (tasks or relevant entries).",
    "Breakdown cells are NaN where a bin holds no task with a relevant entry.",
    f"Beyond-accuracy metrics over each task's top {config.ranking.beyond_k} of the catalogue; ties broken by a "
    "seeded random order.",
  ]
  md, csv_path = report.write_tables(tables, os.path.join(args.out, f"ranking_{name}"), header=header, notes=notes)
  return md, csv_path, plot


def args_sets(args) -> dict:
  return runner.parse_sets(args.sets)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="melu_ml100k,recbole_metarec_ml100k", help="comma-separated config specs")
  parser.add_argument("--metric", default="recall@10", help="the catalogue/sampled metric of the notes and the plot")
  runner.add_run_args(parser, "RUNS/ranking/<config>")
  args = runner.parse_run_args(parser, argv)
  runner.enable_compilation_cache(args.compilation_cache)
  overrides = {"eval_ranking": PROTOCOLS, "progress": False, **args_sets(args)}
  if args.seeds is not None:
    overrides["seeds"] = args.seeds
  for spec in [c for c in args.configs.split(",") if c]:
    for path in run_config(spec, args, overrides):
      print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
