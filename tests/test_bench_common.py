"""experiments/bench_common.py's one-process-per-case launcher (`run_cases_isolated`), on a trivial case module.

The probe module records, per case, the arguments it was started with and its process id, and fails on the case
'bad'; the launcher must start one fresh process per case, in order, pass on every argument except the
case-list flags (in both `--flag=value` and `--flag value` forms) and count the failed cases.
"""

from __future__ import annotations

import json
import os
import sys

from experiments import bench_common

PROBE = """
import json, os, sys
case = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--case=")]
with open(os.path.join(os.environ["PROBE_OUT"], case[-1] + ".json"), "w") as f:
  json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "cwd": os.getcwd()}, f)
sys.exit(3 if case[-1] == "bad" else 0)
"""


def test_run_cases_isolated_runs_each_case_in_its_own_process(tmp_path, monkeypatch):
  (tmp_path / "case_probe.py").write_text(PROBE)
  out = tmp_path / "out"
  out.mkdir()
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
  monkeypatch.setenv("PROBE_OUT", str(out))
  argv = ["--cases=a,bad,c", "--steps=3", "--variants", "fo1,so1", "--no_csv", "--case=stale", "--reps", "2"]

  failed = bench_common.run_cases_isolated("case_probe", ["a", "bad", "c"], drop=("--cases", "--variants"), argv=argv)

  assert failed == 1  # 'bad' exited 3; the case after it still ran
  seen = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
  assert sorted(seen) == ["a", "bad", "c"]
  for case, record in seen.items():
    assert record["argv"] == ["--steps=3", "--no_csv", "--reps", "2", f"--case={case}"]
    assert record["cwd"] == bench_common.ROOT
  pids = {r["pid"] for r in seen.values()}
  assert len(pids) == 3 and os.getpid() not in pids


def test_run_cases_isolated_reads_this_process_arguments_by_default(tmp_path, monkeypatch):
  (tmp_path / "case_probe.py").write_text(PROBE)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  monkeypatch.setenv("PROBE_OUT", str(tmp_path))
  monkeypatch.setattr(sys, "argv", ["bench", "--sizes=1m,25m", "--batch=8"])

  assert bench_common.run_cases_isolated("case_probe", ["1m"], drop=("--sizes",)) == 0
  assert json.loads((tmp_path / "1m.json").read_text())["argv"] == ["--batch=8", "--case=1m"]


def test_each_row_records_the_allocator_and_thread_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
  monkeypatch.setenv("PJRT_NPROC", "1")
  monkeypatch.delenv("NPROC", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  path = str(tmp_path / "bench.csv")
  row = bench_common.append_row("probe", "c", 1.0, "ms", {"x": 2.0}, {"steps": 3}, path=path)
  params = json.loads(row["params"])
  assert params == {"steps": 3, "environ": {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1", "PJRT_NPROC": "1"}}
  with open(path) as f:
    assert f.read().count("arena_max=1") == 1  # written to the file, once
  assert bench_common.run_environ({"XLA_FLAGS": "--a", "HOME": "/x"}) == {"XLA_FLAGS": "--a"}


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu vme

processor\t: 1
cpu family\t: 26
model\t\t: 2
model name\t: other
"""


def test_cpu_model_names_family_and_model_of_the_first_processor():
  assert bench_common.cpu_model(CPUINFO) == "AMD EPYC (family 25 model 17)"
  assert bench_common.cpu_model("model name\t: Some ARM core\n") == "Some ARM core"  # no family: the name alone
  assert bench_common.cpu_model().strip()  # this machine's, whatever it is


def test_bench_commit_names_a_tree_copied_without_git(monkeypatch):
  monkeypatch.setenv("BENCH_COMMIT", "abc123def456")
  assert bench_common.git_commit() == "abc123def456"
  monkeypatch.delenv("BENCH_COMMIT")
  assert bench_common.git_commit() != "abc123def456"
