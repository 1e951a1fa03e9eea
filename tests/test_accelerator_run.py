"""The prepared accelerator run (experiments/accelerator_run.py): stage arguments every benchmark accepts, the time
limit that kills a stage's whole process group, the gate that stops a run, and merging fetched rows."""

from __future__ import annotations

import importlib
import sys

import pytest

from experiments import accelerator_run


@pytest.mark.parametrize("quick", [False, True])
def test_every_benchmark_stage_parses_with_its_own_argument_parser(quick):
  plan = accelerator_run.stages(quick)
  assert [s[0] for s in plan] == ["env", "smoke", "throughput", "torch", "latency", "scale"]
  for name, argv, env, limit in plan:
    assert limit > 0 and all(isinstance(v, str) for v in env.values())
    if argv[1] == "-m":  # a benchmark module: its own parser accepts the stage's flags (an unknown flag exits 2)
      module = importlib.import_module(argv[2])
      args = module.parse_args(argv[3:])
      assert args is not None, name
  full = dict((s[0], s) for s in accelerator_run.stages(False))
  assert full["torch"][2]["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"  # the gradient check needs full f32
  assert "--torch_device=cuda" in full["torch"][1]
  # the whole plan fits one device call (at most 600 s) with room for the driver
  assert sum(s[3] for s in accelerator_run.stages(False)) <= 580


def test_run_stage_logs_output_and_kills_a_stage_past_its_limit(tmp_path):
  ok = accelerator_run.run_stage("ok", [sys.executable, "-c", "print('hello'); print('world')"], {}, 30, tmp_path)
  assert ok["rc"] == 0 and not ok["timed_out"]
  assert (tmp_path / "ok.log").read_text() == "hello\nworld\n"
  # the child starts a grandchild; both are killed with the process group at the limit
  code = "import subprocess, sys, time; print('started', flush=True); subprocess.Popen([sys.executable, '-c', "
  code += "'import time; time.sleep(60)']); time.sleep(60)"
  slow = accelerator_run.run_stage("slow", [sys.executable, "-c", code], {"X": "1"}, 2, tmp_path)
  assert slow["timed_out"] and slow["rc"] != 0 and 2 <= slow["seconds"] < 20
  assert (tmp_path / "slow.log").read_text() == "started\n"


def test_a_failed_gate_stops_the_run_and_rows_are_gathered(tmp_path, monkeypatch):
  csv = tmp_path / "bench.csv"
  csv.write_text("h1,h2\nold,1\n")
  monkeypatch.setattr(accelerator_run.bench_common, "CSV_PATH", str(csv))
  append = f"open({str(csv)!r}, 'a').write('new,2\\n')"
  plan = [
    ("env", [sys.executable, "-c", append], {}, 30),
    ("smoke", [sys.executable, "-c", "raise SystemExit(3)"], {}, 30),
    ("throughput", [sys.executable, "-c", append], {}, 30),
  ]
  monkeypatch.setattr(accelerator_run, "stages", lambda quick: plan)
  assert accelerator_run.main([f"--out={tmp_path / 'out'}"]) == 1
  out = tmp_path / "out"
  assert (out / "bench_rows.csv").read_text() == "h1,h2\nnew,2\n"  # env's row; throughput never ran
  assert not (out / "throughput.log").exists()
  summary = (out / "summary.json").read_text()
  assert '"stage": "smoke"' in summary and '"rc": 3' in summary
  with pytest.raises(SystemExit, match="unknown stages"):
    accelerator_run.main([f"--out={out}", "--stages=env,gpu"])


def test_merge_appends_fetched_rows_and_refuses_another_header(tmp_path):
  csv = tmp_path / "bench.csv"
  csv.write_text("a,b\n1,2")  # no final newline: the merge adds one
  rows = tmp_path / "rows.csv"
  rows.write_text("a,b\n3,4\n5,6\n")
  assert accelerator_run.merge(rows, csv) == 2
  assert csv.read_text() == "a,b\n1,2\n3,4\n5,6\n"
  rows.write_text("a,c\n7,8\n")
  with pytest.raises(SystemExit, match="differs"):
    accelerator_run.merge(rows, csv)
  assert csv.read_text() == "a,b\n1,2\n3,4\n5,6\n"  # nothing appended


def test_a_quick_run_keeps_its_rows_out_of_the_record(tmp_path, monkeypatch):
  record = tmp_path / "bench.csv"
  record.write_text("h1,h2\nold,1\n")
  monkeypatch.setattr(accelerator_run.bench_common, "CSV_PATH", str(record))
  monkeypatch.delenv("BENCH_CSV", raising=False)  # restored afterwards: main sets it for its stages
  child = "import os; open(os.environ['BENCH_CSV'], 'a').write('h1,h2\\nquick,2\\n')"
  monkeypatch.setattr(accelerator_run, "stages", lambda quick: [("env", [sys.executable, "-c", child], {}, 30)])
  assert accelerator_run.main([f"--out={tmp_path / 'out'}", "--quick"]) == 0
  assert (tmp_path / "out" / "bench_rows.csv").read_text() == "h1,h2\nquick,2\n"
  assert (tmp_path / "out" / "quick_bench.csv").exists()
  assert record.read_text() == "h1,h2\nold,1\n"  # the record untouched
