"""experiments/op_profile.py: exclusive op time per kind, against a hand-made trace and on a real one."""

from __future__ import annotations

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import op_profile


def op(name, ts, dur, tid=1):
  return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid, "args": {"hlo_op": name}}


# Thread 1: a while op holding two matmul fusions and a tanh; thread 2: a copy running at the same time. Host events
# (no `hlo_op`) overlap everything and must not count.
EVENTS = [
  {"ph": "X", "name": "PjitFunction(step)", "ts": -5.0, "dur": 200.0, "tid": 1, "args": {}},
  op("while.5", 0.0, 100.0),
  op("ynn_fusion", 10.0, 30.0),
  {"ph": "X", "name": "end: ynn_fusion", "ts": 41.0, "dur": 1.0, "tid": 1, "args": {}},
  op("wrapped_tanh", 45.0, 10.0),
  op("ynn_fusion.1", 60.0, 30.0),
  op("copy.6", 20.0, 50.0, tid=2),
]


def test_kind_strips_the_numbering_only():
  assert [op_profile.kind(n) for n in ("broadcast.12", "loop_add_fusion.3.1", "ynn_fusion", "while.5")] == [
    "broadcast",
    "loop_add_fusion",
    "ynn_fusion",
    "while",
  ]


def test_exclusive_times_of_a_hand_made_trace():
  times = op_profile.exclusive_times(EVENTS)
  assert times == {"ynn_fusion": 60.0, "copy": 50.0, "while": 30.0, "wrapped_tanh": 10.0}  # while: 100 - 30 - 10 - 30
  assert list(times) == ["ynn_fusion", "copy", "while", "wrapped_tanh"]  # largest first
  rows = op_profile.summarize(times, steps=2, top=2)
  assert [r["kind"] for r in rows] == ["ynn_fusion", "copy", "other"]
  np.testing.assert_allclose([r["ms_per_step"] for r in rows], [0.030, 0.025, 0.020])
  np.testing.assert_allclose([r["share"] for r in rows], [60 / 150, 50 / 150, 40 / 150])
  assert "ynn_fusion" in op_profile.format_rows(rows)
  assert [r["kind"] for r in op_profile.summarize(times, steps=1, top=4)] == list(times)  # nothing left: no 'other'


def test_bad_traces_are_named():
  with pytest.raises(ValueError, match="duration"):
    op_profile.exclusive_times([op("dot.1", 0.0, -1.0)])
  with pytest.raises(ValueError, match="no op time"):
    op_profile.summarize(op_profile.exclusive_times(EVENTS[:1]), steps=1)
  with pytest.raises(ValueError, match="must be > 0"):
    op_profile.summarize({"dot": 1.0}, steps=0)


def test_load_events_reads_the_newest_trace(tmp_path):
  with pytest.raises(FileNotFoundError, match="trace.json.gz"):
    op_profile.load_events(str(tmp_path))
  (tmp_path / "run").mkdir()
  with gzip.open(tmp_path / "run" / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": [*EVENTS, {"ph": "M", "name": "thread_name", "tid": 1}]}, f)
  assert op_profile.load_events(str(tmp_path)) == EVENTS  # metadata ('M') events dropped


def test_a_real_trace_of_a_scan(tmp_path):
  f = jax.jit(lambda w, x: jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)[0].sum())
  w, x = jnp.full((32, 32), 0.01), jnp.ones((8, 32))
  f(w, x).block_until_ready()
  with op_profile.traced(str(tmp_path)):
    for _ in range(2):
      f(w, x).block_until_ready()
  events = op_profile.load_events(str(tmp_path))
  times = op_profile.exclusive_times(events)
  assert "while" in times, times  # the scan's loop, its body's ops nested inside it
  assert min(times.values()) >= -1e-3, times  # exclusive: never below zero (µs rounding aside)
  ops = [e for e in events if "hlo_op" in e.get("args", {})]
  inside = lambda e, p: (
    p is not e and p["tid"] == e["tid"] and p["ts"] <= e["ts"] and e["ts"] + e["dur"] <= p["ts"] + p["dur"]
  )
  top = [e for e in ops if not any(inside(e, p) for p in ops)]  # by brute force: ops inside no other op
  assert len(top) < len(ops)  # the loop's body ops are nested
  np.testing.assert_allclose(sum(times.values()), sum(e["dur"] for e in top), rtol=1e-6)  # exclusive adds up
  rows = op_profile.summarize(times, steps=2)
  np.testing.assert_allclose(sum(r["share"] for r in rows), 1.0)


def test_profile_runs_once_under_the_tracer():
  f = jax.jit(lambda w, x: jnp.tanh(x @ w).sum())
  w, x = jnp.full((32, 32), 0.01), jnp.ones((8, 32))
  f(w, x).block_until_ready()
  calls = []
  rows, seconds = op_profile.profile(lambda: calls.append(f(w, x).block_until_ready()), steps=1, top=3)
  assert len(calls) == 1 and seconds > 0
  np.testing.assert_allclose(sum(r["share"] for r in rows), 1.0)
