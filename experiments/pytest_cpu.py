"""A pytest plugin that records each test's CPU seconds: what the suite costs, test by test.

    TEST_CPU_OUT=/tmp/cpu.json /usr/bin/time -v python -m pytest -q tests -p experiments.pytest_cpu

Per test: user + system CPU of the pytest process and of its waited-for children (subprocess runs) between the
start and the end of the test's protocol (setup, call, teardown), as `getrusage` deltas, plus wall seconds. Fixture
setup is charged to the first test that needs it. The JSON (`{"rows": [[nodeid, self_s, children_s, wall_s], ...],
"total_self", "total_children"}`) is rewritten after every test, so a run stopped early still leaves its rows.
CPU seconds hardly depend on other jobs on the machine, wall seconds do.

Where the pytest process's own time goes among jax's program phases: `jax.monitoring` reports the wall seconds of each
trace to a jaxpr, each lowering to MLIR and each backend compile (a persistent-cache read included) with the
function's name. The plugin adds them up per test (`phases`: {nodeid: {phase: [count, seconds]}}) and per function
name over the run (`functions`: {name: {phase: [count, seconds]}}), so a program traced again and again (a closure
rebuilt per test, a function jitted afresh) shows up by name. Subprocesses' phases are not seen (their CPU is).
"""

from __future__ import annotations

import json
import os
import resource
import time

_ROWS: list = []
_START: dict = {}
# jax.monitoring's event names for the three phases of building a program (jax/_src/dispatch.py).
PHASES = {
  "/jax/core/compile/jaxpr_trace_duration": "trace",
  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
  "/jax/core/compile/backend_compile_duration": "compile",
}


def function_name(fun_name: str) -> str:
  """One name for a function's three phases: jax names the lowering and compile of `f` 'jit(f)'."""
  return fun_name[4:-1] if fun_name.startswith("jit(") and fun_name.endswith(")") else fun_name


class PhaseRecorder:
  """Adds up jax's phase durations per test and per function name.

  `phases`: {nodeid: {phase: [count, seconds]}} (events outside a test under '(between tests)'); `functions`:
  {name: {phase: [count, seconds]}}; `current`: the running test's nodeid, or None.
  """

  def __init__(self):
    self.phases: dict = {}
    self.functions: dict = {}
    self.current: str | None = None

  def on_duration(self, event: str, seconds: float, fun_name: str = "?", **kwargs) -> None:
    """A `jax.monitoring` duration listener: charges a trace / lowering / compile to the running test and to its
    function's name; other events are ignored."""
    phase = PHASES.get(event)
    if phase is None:
      return
    for table, key in ((self.phases, self.current or "(between tests)"), (self.functions, function_name(fun_name))):
      entry = table.setdefault(key, {}).setdefault(phase, [0, 0.0])
      entry[0] += 1
      entry[1] += seconds


_RECORDER = PhaseRecorder()


def pytest_configure(config) -> None:
  from jax import monitoring

  monitoring.register_event_duration_secs_listener(_RECORDER.on_duration)


def _cpu() -> tuple[float, float]:
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _dump(final: bool) -> None:
  me, kids = _cpu()
  out = {"rows": _ROWS, "total_self": me, "total_children": kids, "finished": final}
  out.update(phases=_RECORDER.phases, functions=_RECORDER.functions)
  with open(os.environ.get("TEST_CPU_OUT", "test_cpu.json"), "w") as f:
    json.dump(out, f)


def pytest_runtest_protocol(item, nextitem):
  _START[item.nodeid] = (_cpu(), time.time())
  _RECORDER.current = item.nodeid


def pytest_runtest_logfinish(nodeid, location):
  (me0, kids0), t0 = _START.pop(nodeid)
  _RECORDER.current = None
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


def phases_per_file(phases: dict) -> dict[str, dict[str, list]]:
  """The plugin's per-test `phases` summed per test file: {file: {phase: [count, seconds]}}."""
  out: dict = {}
  for nodeid, table in phases.items():
    for phase, (count, seconds) in table.items():
      entry = out.setdefault(nodeid.split("::", 1)[0], {}).setdefault(phase, [0, 0.0])
      entry[0] += count
      entry[1] += seconds
  return out


def _phase_cells(table: dict) -> str:
  return " | ".join(f"{table.get(p, [0, 0.0])[1]:.1f} ({table.get(p, [0, 0.0])[0]})" for p in PHASES.values())


def summary(path: str, top: int = 25) -> str:
  """Markdown tables of a recorded run: CPU-seconds per file (with jax's trace / lower / compile wall seconds and
  counts when recorded), the `top` most expensive tests, and the `top` function names with the most trace + lower
  time."""
  with open(path) as f:
    d = json.load(f)
  rows = d["rows"]
  total = sum(r[1] + r[2] for r in rows)
  state = "finished" if d.get("finished") else "NOT finished (partial)"
  lines = [f"{len(rows)} tests, {total:.1f} CPU-s in tests ({state})", ""]
  files = per_file(rows)
  if "phases" in d:
    by_file = phases_per_file(d["phases"])
    sums = {p: [sum(t.get(p, [0, 0])[i] for t in by_file.values()) for i in (0, 1)] for p in PHASES.values()}
    lines += [f"jax phases in the pytest process, wall s (count): {_phase_cells(sums)} (trace | lower | compile)", ""]
    lines += ["| file | CPU-s | in subprocesses | tests | trace s (n) | lower s (n) | compile s (n) |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {f} | {c:.1f} | {k:.1f} | {n} | {_phase_cells(by_file.get(f, {}))} |" for f, c, k, _, n in files]
  else:
    lines += ["| file | CPU-s | in subprocesses | tests |", "|---|---:|---:|---:|"]
    lines += [f"| {f} | {c:.1f} | {k:.1f} | {n} |" for f, c, k, _, n in files]
  lines += ["", "| test | CPU-s | in subprocesses |", "|---|---:|---:|"]
  for nodeid, me, kids, _ in sorted(rows, key=lambda r: -(r[1] + r[2]))[:top]:
    lines.append(f"| {nodeid} | {me + kids:.1f} | {kids:.1f} |")
  if d.get("functions"):
    cost = lambda t: t.get("trace", [0, 0.0])[1] + t.get("lower", [0, 0.0])[1]  # noqa: E731
    lines += ["", "| function | trace s (n) | lower s (n) | compile s (n) |", "|---|---:|---:|---:|"]
    for name, table in sorted(d["functions"].items(), key=lambda kv: -cost(kv[1]))[:top]:
      lines.append(f"| {name} | {_phase_cells(table)} |")
  return "\n".join(lines)


if __name__ == "__main__":  # python -m experiments.pytest_cpu FILE.json [--top=N]
  import argparse

  parser = argparse.ArgumentParser(description="CPU-seconds per test file and per test of a recorded run.")
  parser.add_argument("path", help="the JSON written by the plugin (TEST_CPU_OUT)")
  parser.add_argument("--top", type=int, default=25, help="how many of the most expensive tests to list")
  args = parser.parse_args()
  print(summary(args.path, args.top))
