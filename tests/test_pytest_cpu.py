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


TRACE, LOWER, COMPILE = pytest_cpu.PHASES


def test_phase_durations_are_charged_to_the_running_test_and_the_function():
  rec = pytest_cpu.PhaseRecorder()
  rec.on_duration(TRACE, 0.5, fun_name="meta_step")  # before any test: collection, module-level jits
  rec.current = "tests/test_a.py::test_x"
  rec.on_duration(TRACE, 1.0, fun_name="meta_step")
  rec.on_duration(LOWER, 0.25, fun_name="jit(meta_step)")
  rec.on_duration(COMPILE, 2.0, fun_name="jit(meta_step)")
  rec.on_duration("/jax/compilation_cache/cache_retrieval_time_sec", 9.0, fun_name="jit(meta_step)")  # not a phase
  rec.current = "tests/test_b.py::test_y"
  rec.on_duration(TRACE, 0.125, fun_name="jit(f)x")  # not jax's 'jit(...)' form: kept as it is
  assert rec.phases == {
    "(between tests)": {"trace": [1, 0.5]},
    "tests/test_a.py::test_x": {"trace": [1, 1.0], "lower": [1, 0.25], "compile": [1, 2.0]},
    "tests/test_b.py::test_y": {"trace": [1, 0.125]},
  }
  assert rec.functions == {
    "meta_step": {"trace": [2, 1.5], "lower": [1, 0.25], "compile": [1, 2.0]},
    "jit(f)x": {"trace": [1, 0.125]},
  }


def test_summary_shows_phases_per_file_and_the_costliest_functions(tmp_path):
  phases = {
    "tests/test_a.py::test_x": {"trace": [2, 1.5], "lower": [1, 0.25]},
    "tests/test_a.py::test_z": {"trace": [1, 0.5], "compile": [3, 3.0]},
  }
  functions = {"cheap": {"trace": [1, 0.1]}, "costly": {"trace": [4, 2.0], "lower": [4, 1.0], "compile": [4, 0.5]}}
  assert pytest_cpu.phases_per_file(phases) == {
    "tests/test_a.py": {"trace": [3, 2.0], "lower": [1, 0.25], "compile": [3, 3.0]}
  }
  path = tmp_path / "cpu.json"
  path.write_text(json.dumps({"rows": ROWS, "finished": True, "phases": phases, "functions": functions}))
  lines = pytest_cpu.summary(str(path), top=5).splitlines()
  assert (
    "jax phases in the pytest process, wall s (count): 2.0 (3) | 0.2 (1) | 3.0 (3) (trace | lower | compile)" in lines
  )
  assert "| tests/test_a.py | 3.8 | 2.5 | 2 | 2.0 (3) | 0.2 (1) | 3.0 (3) |" in lines
  assert "| tests/test_b.py | 4.0 | 0.0 | 1 | 0.0 (0) | 0.0 (0) | 0.0 (0) |" in lines
  functions_at = lines.index("| function | trace s (n) | lower s (n) | compile s (n) |")
  assert lines[functions_at + 2 :] == [
    "| costly | 2.0 (4) | 1.0 (4) | 0.5 (4) |",
    "| cheap | 0.1 (1) | 0.0 (0) | 0.0 (0) |",
  ]
