"""Results tables: mean ± std over seeds, as Markdown (for people) and CSV (for tools).

One format for every table (reference baselines, learners, ablations): a row per (scenario, method), a column
per metric, Markdown cells "0.912 ± 0.004". The std is the population standard deviation over seeds
(numpy's default, ddof=0; 0 for one seed), as in `results.json` (`evaluate.summarize`). Non-finite per-seed
values (an AUC undefined on every task of a seed) are left out of the mean and counted in `n`.

    rows = summarize({"global_mean": {"warm": {"mae": [0.91, 0.92]}}})
    print(to_markdown(rows))
    write_table(rows, "experiments/results/baselines")   # baselines.md + baselines.csv

The CSV is long-format (one line per scenario, method and metric: table, scenario, method, metric, mean, std,
n_seeds, per_seed), so tables with different metric columns share one file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

MISSING = "-"  # Markdown cell of a metric a row does not have


@dataclasses.dataclass(frozen=True)
class Stat:
  mean: float
  std: float
  per_seed: tuple[float, ...]  # every value given, in seed order

  @property
  def n(self) -> int:
    """Seeds with a finite value (those the mean is over)."""
    return int(np.isfinite(self.per_seed).sum())


@dataclasses.dataclass(frozen=True)
class Row:
  scenario: str
  method: str
  cells: Mapping[str, Stat]  # metric -> Stat, in column order


def stat(values: Sequence[float]) -> Stat:
  """Mean and population std of the finite values (NaN when none is finite)."""
  per_seed = tuple(float(v) for v in values)
  finite = np.asarray([v for v in per_seed if math.isfinite(v)], np.float64)
  if finite.size == 0:
    return Stat(float("nan"), float("nan"), per_seed)
  return Stat(float(finite.mean()), float(finite.std()), per_seed)


def summarize(values_per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]) -> list[Row]:
  """Per-seed values -> table rows.

  Args:
    values_per_seed: {method: {scenario: {metric: [value per seed]}}}.
  Returns:
    Rows grouped by scenario (scenarios, then methods, in first-seen order), metrics in first-seen order.
  """
  scenarios = list(dict.fromkeys(s for per_method in values_per_seed.values() for s in per_method))
  rows = []
  for scenario in scenarios:
    for method, per_scenario in values_per_seed.items():
      if scenario in per_scenario:
        rows.append(Row(scenario, method, {m: stat(v) for m, v in per_scenario[scenario].items()}))
  return rows


def rows_from_results(method: str, metrics: Mapping[str, Mapping[str, Mapping]]) -> list[Row]:
  """Rows of one run's `results.json["metrics"]` ({scenario: {metric: {"per_seed": [...], ...}}})."""
  return summarize(
    {method: {s: {m: v["per_seed"] for m, v in per_metric.items()} for s, per_metric in metrics.items()}}
  )


def columns(rows: Sequence[Row]) -> list[str]:
  """Metric names over all rows, in first-seen order."""
  return list(dict.fromkeys(m for row in rows for m in row.cells))


def format_stat(s: Stat, digits: int = 3) -> str:
  """'0.912 ± 0.004' (`digits` decimals); '0.912' when std is NaN (no spread); 'nan' when no seed had a finite value."""
  if not math.isfinite(s.mean):
    return "nan"
  if math.isnan(s.std):  # a value without a spread (a published figure): the value alone
    return f"{s.mean:.{digits}f}"
  return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def to_markdown(rows: Sequence[Row], metrics: Sequence[str] | None = None, digits: int = 3) -> str:
  """A Markdown table: columns scenario, method, then `metrics` (default: all, first-seen order)."""
  metrics = columns(rows) if metrics is None else list(metrics)
  lines = [
    "| " + " | ".join(["scenario", "method", *metrics]) + " |",
    "|" + "|".join(["---"] * 2 + ["---:"] * len(metrics)) + "|",
  ]
  for row in rows:
    cells = [format_stat(row.cells[m], digits) if m in row.cells else MISSING for m in metrics]
    lines.append("| " + " | ".join([row.scenario, row.method, *cells]) + " |")
  return "\n".join(lines) + "\n"


def to_csv(tables: Mapping[str, Sequence[Row]]) -> str:
  """Long-format CSV of titled tables (see the module docstring); per_seed is ';'-joined."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["table", "scenario", "method", "metric", "mean", "std", "n_seeds", "per_seed"])
  for title, rows in tables.items():
    for row in rows:
      for metric, s in row.cells.items():
        writer.writerow(
          [
            title,
            row.scenario,
            row.method,
            metric,
            repr(s.mean),
            repr(s.std),
            s.n,
            ";".join(repr(v) for v in s.per_seed),
          ]
        )
  return buf.getvalue()


def write_tables(
  tables: Mapping[str, Sequence[Row]], path_stem: str, header: str = "", notes: Sequence[str] = (), digits: int = 3
) -> tuple[str, str]:
  """Writes `<path_stem>.md` (a '## title' section per table, then `notes` as a list) and `<path_stem>.csv`.

  Args:
    tables: {title: rows}; an empty title writes the table with no heading.
    path_stem: output path without extension (its directory is created).
    header: Markdown put before the tables (e.g. a title line and the command that made them).
    notes: lines listed after the tables.
  Returns:
    (markdown path, csv path).
  """
  parts = [header.rstrip() + "\n"] if header else []
  for title, rows in tables.items():
    parts.append((f"## {title}\n\n" if title else "") + to_markdown(rows, digits=digits))
  if notes:
    parts.append("".join(f"- {n}\n" for n in notes))
  os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
  md_path, csv_path = f"{path_stem}.md", f"{path_stem}.csv"
  with open(md_path, "w") as f:
    f.write("\n".join(parts))
  with open(csv_path, "w") as f:
    f.write(to_csv(tables))
  return md_path, csv_path


def write_table(rows: Sequence[Row], path_stem: str, **kwargs) -> tuple[str, str]:
  """`write_tables` with one untitled table."""
  return write_tables({"": rows}, path_stem, **kwargs)
