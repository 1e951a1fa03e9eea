"""A pytest plugin that records each test's CPU seconds: what the suite costs, test by test.

    TEST_CPU_OUT=/tmp/cpu.json /usr/bin/time -v python -m pytest -q tests -p experiments.pytest_cpu

Per test: user + system CPU of the pytest process and of its waited-for children (subprocess runs) between the
start and the end of the test's protocol (setup, call, teardown), as `getrusage` deltas, plus wall seconds. Fixture
setup is charged to the first test that needs it. The JSON (`{"rows": [[nodeid, self_s, children_s, wall_s], ...],
"total_self", "total_children"}`) is rewritten after every test, so a run stopped early still leaves its rows.
CPU seconds hardly depend on other jobs on the machine, wall seconds do.
"""

from __future__ import annotations

import json
import os
import resource
import time

_ROWS: list = []
_START: dict = {}


def _cpu() -> tuple[float, float]:
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _dump(final: bool) -> None:
  me, kids = _cpu()
  out = {"rows": _ROWS, "total_self": me, "total_children": kids, "finished": final}
  with open(os.environ.get("TEST_CPU_OUT", "test_cpu.json"), "w") as f:
    json.dump(out, f)


def pytest_runtest_protocol(item, nextitem):
  _START[item.nodeid] = (_cpu(), time.time())


def pytest_runtest_logfinish(nodeid, location):
  (me0, kids0), t0 = _START.pop(nodeid)
  me1, kids1 = _cpu()
  _ROWS.append([nodeid, me1 - me0, kids1 - kids0, time.time() - t0])
  _dump(final=False)


def pytest_sessionfinish(session, exitstatus):
  _dump(final=True)


def per_file(rows: list) -> list[tuple[str, float, float, float, int]]:
  """Per test file, most expensive first: (file, self_s + children_s, children_s, wall_s, tests).

  Args:
    rows: the plugin's `rows`, [[nodeid, self_s, children_s, wall_s], ...].
  """
  out: dict = {}
  for nodeid, me, kids, wall in rows:
    f = out.setdefault(nodeid.split("::", 1)[0], [0.0, 0.0, 0.0, 0])
    f[0], f[1], f[2], f[3] = f[0] + me + kids, f[1] + kids, f[2] + wall, f[3] + 1
  return sorted(((k, *v) for k, v in out.items()), key=lambda r: -r[1])


def summary(path: str, top: int = 25) -> str:
  """Markdown tables of a recorded run: CPU-seconds per file, then the `top` most expensive tests."""
  with open(path) as f:
    d = json.load(f)
  rows = d["rows"]
  total = sum(r[1] + r[2] for r in rows)
  state = "finished" if d.get("finished") else "NOT finished (partial)"
  lines = [f"{len(rows)} tests, {total:.1f} CPU-s in tests ({state})", "", "| file | CPU-s | in subprocesses | tests |"]
  lines += ["|---|---:|---:|---:|"] + [f"| {f} | {c:.1f} | {k:.1f} | {n} |" for f, c, k, _, n in per_file(rows)]
  lines += ["", "| test | CPU-s | in subprocesses |", "|---|---:|---:|"]
  for nodeid, me, kids, _ in sorted(rows, key=lambda r: -(r[1] + r[2]))[:top]:
    lines.append(f"| {nodeid} | {me + kids:.1f} | {kids:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":  # python -m experiments.pytest_cpu FILE.json [--top=N]
  import argparse

  parser = argparse.ArgumentParser(description="CPU-seconds per test file and per test of a recorded run.")
  parser.add_argument("path", help="the JSON written by the plugin (TEST_CPU_OUT)")
  parser.add_argument("--top", type=int, default=25, help="how many of the most expensive tests to list")
  args = parser.parse_args()
  print(summary(args.path, args.top))
