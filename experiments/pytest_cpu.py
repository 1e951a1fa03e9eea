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
