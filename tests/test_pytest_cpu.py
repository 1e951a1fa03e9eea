"""The suite-cost plugin's summary (experiments/pytest_cpu.py): per-file sums against a hand count."""

from __future__ import annotations

import json

from experiments import pytest_cpu

ROWS = [
  ["tests/test_a.py::test_x", 1.0, 0.5, 2.0],
  ["tests/test_b.py::test_y[1]", 4.0, 0.0, 4.5],
  ["tests/test_a.py::test_z", 0.25, 2.0, 3.0],
]


def test_per_file_sums_self_and_children_most_expensive_first():
  assert pytest_cpu.per_file(ROWS) == [("tests/test_b.py", 4.0, 0.0, 4.5, 1), ("tests/test_a.py", 3.75, 2.5, 5.0, 2)]


def test_summary_tables_and_partial_runs_are_said(tmp_path):
  path = tmp_path / "cpu.json"
  path.write_text(json.dumps({"rows": ROWS, "finished": False}))
  text = pytest_cpu.summary(str(path), top=2)
  assert text.startswith("3 tests, 7.8 CPU-s in tests (NOT finished (partial))")
  assert "| tests/test_a.py | 3.8 | 2.5 | 2 |" in text and "| tests/test_b.py | 4.0 | 0.0 | 1 |" in text
  tests = [ln for ln in text.splitlines() if ln.startswith("| tests/test_") and "::" in ln]
  assert tests == ["| tests/test_b.py::test_y[1] | 4.0 | 0.0 |", "| tests/test_a.py::test_z | 2.2 | 2.0 |"]
