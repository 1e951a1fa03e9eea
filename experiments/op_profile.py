"""Where a compiled step's time goes, op by op: exclusive time per kind of HLO op from a `jax.profiler` trace.

    python -m experiments.bench_throughput --cases=fo1:256:32:g4 --reps=3 --loop_max=0 --op_profile=12

`bench_throughput --op_profile=K` traces one extra repetition of a case's steps (after the timed ones, so the
tracer's overhead never reaches the tasks/s) and prints the K kinds of op that took the most time. Used on its own:

    rows, traced_s = op_profile.profile(run_steps, steps=n, top=12)   # run_steps: n steps, blocked until ready
    print(op_profile.format_rows(rows))

Only events the XLA runtime tags with the op they ran (`args.hlo_op`: one per thunk, on the thread that ran it)
count; host-side events (dispatch, Python) do not. Exclusive time is an op's duration minus that of the ops nested
inside it on the same thread (a `while` holds its body's ops), so the kinds add up to the time spent in ops. A kind is
the op's name without its trailing `.N` (`broadcast.12` -> `broadcast`; XLA:CPU's YNNPACK matmul fusions are
`ynn_fusion`). Ops that run concurrently on the intra-op pool each count in full, so the total can exceed wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

_SUFFIX = re.compile(r"(\.\d+)+$")


def _top(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"{value} must be >= 0 (0: no profile)")
  return value


def add_flag(parser: argparse.ArgumentParser, what: str) -> None:
  """Adds `--op_profile=K` (an int >= 0, default 0: off) to a benchmark's parser; `what` says what is traced once
  more after the timed runs (e.g. 'one more repetition')."""
  parser.add_argument(
    "--op_profile",
    type=_top,
    default=0,
    help=f"> 0: trace {what} and print the K op kinds with the most time (experiments/op_profile.py)",
  )


def kind(op_name: str) -> str:
  """`op_name` without its trailing `.N` numbering: 'loop_add_fusion.3' -> 'loop_add_fusion'."""
  return _SUFFIX.sub("", op_name)


@contextlib.contextmanager
def traced(directory: str) -> Iterator[None]:
  """`jax.profiler.trace` into `directory`, with the Perfetto JSON that `load_events` reads."""
  import jax

  with jax.profiler.trace(directory, create_perfetto_trace=True):
    yield


def load_events(directory: str) -> list[dict]:
  """The complete ('X') events of the newest Perfetto trace (`*.trace.json.gz`) under `directory`."""
  paths = sorted(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {directory!r}: was it written by `traced`?")
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X"]


def exclusive_times(events: Iterable[Mapping]) -> dict[str, float]:
  """Microseconds per op kind, exclusive of the ops nested inside each op on the same thread.

  Args:
    events: trace events with 'ts' and 'dur' (µs), 'tid', 'name' and, for ops, `args['hlo_op']`.
  Returns:
    {kind: exclusive µs}, largest first. Events without `hlo_op` are ignored.
  """
  ops = [e for e in events if "hlo_op" in e.get("args", {})]
  own: dict[int, float] = {}
  by_thread: dict[object, list[tuple[int, Mapping]]] = {}
  for i, e in enumerate(ops):
    if not e["dur"] >= 0:
      raise ValueError(f"op event {e['name']!r} has duration {e['dur']!r}")
    own[i] = float(e["dur"])
    by_thread.setdefault(e["tid"], []).append((i, e))
  for evs in by_thread.values():
    evs.sort(key=lambda ie: (ie[1]["ts"], -ie[1]["dur"]))  # a parent before the children that start with it
    stack: list[tuple[int, float]] = []  # (event index, end time) of the ops still open
    for i, e in evs:
      while stack and stack[-1][1] <= e["ts"]:
        stack.pop()
      if stack:
        own[stack[-1][0]] -= float(e["dur"])
      stack.append((i, e["ts"] + e["dur"]))
  totals: dict[str, float] = {}
  for i, e in enumerate(ops):
    k = kind(e["args"]["hlo_op"])
    totals[k] = totals.get(k, 0.0) + own[i]
  return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def summarize(times: Mapping[str, float], steps: int, top: int = 12) -> list[dict]:
  """Rows {kind, ms_per_step, share} of the `top` kinds, then one 'other' row for the rest (if any).

  Args:
    times: `exclusive_times`' µs per kind over `steps` traced steps.
    steps: how many steps the trace holds (> 0).
    top: kinds listed by name (> 0).
  """
  if steps <= 0 or top <= 0:
    raise ValueError(f"steps={steps} and top={top} must be > 0")
  total = sum(times.values())
  if not total > 0:
    raise ValueError("the trace holds no op time: no event carried an `hlo_op` (was the step run inside `traced`?)")
  items = sorted(times.items(), key=lambda kv: -kv[1])
  rows = [{"kind": k, "ms_per_step": v / steps / 1e3, "share": v / total} for k, v in items[:top]]
  rest = sum(v for _, v in items[top:])
  if rest:
    rows.append({"kind": "other", "ms_per_step": rest / steps / 1e3, "share": rest / total})
  return rows


def profile(run: Callable[[], object], steps: int, top: int = 12) -> tuple[list[dict], float]:
  """Runs `run` (`steps` steps, finished when it returns) once under the tracer, in a temporary directory.

  Returns:
    (`summarize` rows of the `top` kinds, wall seconds per step under the tracer).
  """
  with tempfile.TemporaryDirectory() as directory:
    with traced(directory):
      t0 = time.perf_counter()
      run()
      seconds = (time.perf_counter() - t0) / steps
    return summarize(exclusive_times(load_events(directory)), steps, top), seconds


def format_rows(rows: Iterable[Mapping]) -> str:
  """The rows as aligned text lines: kind, ms per step, share of op time."""
  return "\n".join(f"  {r['kind']:>28}  {r['ms_per_step']:8.3f} ms/step  {r['share']:6.1%}" for r in rows)
