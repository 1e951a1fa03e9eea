"""Result tables: exact Markdown and CSV text, mean ± population std over seeds."""

import csv
import math

import pytest

from transfer_meta import report

VALUES = {
  "global_mean": {"warm": {"mae": [0.9, 1.0], "ndcg@3": [0.5, 0.7]}, "new_user": {"mae": [1.1, 1.3]}},
  "item_mean": {"warm": {"mae": [0.8, 0.8], "ndcg@3": [0.6, 0.6]}, "new_item": {"mae": [1.5, float("nan")]}},
}


def test_stat_is_mean_and_population_std_of_finite_values():
  s = report.stat([1.0, 2.0, 4.0])
  assert s.mean == pytest.approx(7 / 3)
  assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
  assert s.n == 3 and s.per_seed == (1.0, 2.0, 4.0)
  s = report.stat([0.5, float("nan")])
  assert s.mean == 0.5 and s.std == 0.0 and s.n == 1
  assert math.isnan(report.stat([float("nan")]).mean)


def test_summarize_orders_rows_by_scenario_then_method():
  rows = report.summarize(VALUES)
  assert [(r.scenario, r.method) for r in rows] == [
    ("warm", "global_mean"),
    ("warm", "item_mean"),
    ("new_user", "global_mean"),
    ("new_item", "item_mean"),
  ]
  assert report.columns(rows) == ["mae", "ndcg@3"]
  assert rows[0].cells["ndcg@3"].mean == pytest.approx(0.6)


def test_markdown_exact():
  md = report.to_markdown(report.summarize(VALUES))
  assert md == (
    "| scenario | method | mae | ndcg@3 |\n"
    "|---|---|---:|---:|\n"
    "| warm | global_mean | 0.950 ± 0.050 | 0.600 ± 0.100 |\n"
    "| warm | item_mean | 0.800 ± 0.000 | 0.600 ± 0.000 |\n"
    "| new_user | global_mean | 1.200 ± 0.100 | - |\n"
    "| new_item | item_mean | 1.500 ± 0.000 | - |\n"
  )
  assert report.to_markdown(report.summarize(VALUES)[:1], metrics=["ndcg@3"], digits=2) == (
    "| scenario | method | ndcg@3 |\n|---|---|---:|\n| warm | global_mean | 0.60 ± 0.10 |\n"
  )
  assert report.format_stat(report.stat([float("nan")])) == "nan"


def test_write_tables(tmp_path):
  rows = report.summarize({"constant": {"test": {"hr@5": [0.25, 0.75]}}})
  md_path, csv_path = report.write_tables(
    {"recbole_metarec": rows, "melu": report.summarize(VALUES)[:1]},
    str(tmp_path / "sub" / "t"),
    header="# Baselines",
    notes=["lam = 5"],
  )
  assert md_path.endswith("t.md") and csv_path.endswith("t.csv")
  md = open(md_path).read()
  assert md == (
    "# Baselines\n\n"
    "## recbole_metarec\n\n"
    "| scenario | method | hr@5 |\n|---|---|---:|\n| test | constant | 0.500 ± 0.250 |\n\n"
    "## melu\n\n"
    "| scenario | method | mae | ndcg@3 |\n|---|---|---:|---:|\n"
    "| warm | global_mean | 0.950 ± 0.050 | 0.600 ± 0.100 |\n\n"
    "- lam = 5\n"
  )
  lines = list(csv.reader(open(csv_path)))
  assert lines[0] == ["table", "scenario", "method", "metric", "mean", "std", "n_seeds", "per_seed"]
  assert lines[1] == ["recbole_metarec", "test", "constant", "hr@5", "0.5", "0.25", "2", "0.25;0.75"]
  assert lines[2][:4] == ["melu", "warm", "global_mean", "mae"] and float(lines[2][4]) == pytest.approx(0.95)
  assert len(lines) == 4


def test_write_table_and_rows_from_results(tmp_path):
  results = {"warm": {"mae": {"mean": 0.9, "std": 0.1, "per_seed": [0.8, 1.0]}}}
  rows = report.rows_from_results("maml", results)
  report.write_table(rows, str(tmp_path / "one"))
  assert open(tmp_path / "one.md").read() == (
    "| scenario | method | mae |\n|---|---|---:|\n| warm | maml | 0.900 ± 0.100 |\n"
  )
