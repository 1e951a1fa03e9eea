"""experiments/job_cost.py's helpers: the phase timer's accounting and the --groups parser."""

from __future__ import annotations

import time

import pytest

from experiments import job_cost


def _burn(seconds: float) -> int:
  """Spins on the CPU for `seconds` of this process's CPU time; returns the loop count."""
  end, n = time.process_time() + seconds, 0
  while time.process_time() < end:
    n += 1
  return n


def test_phase_timer_counts_calls_and_cpu_and_passes_results_and_errors_through():
  timer = job_cost.PhaseTimer()
  burn = timer.wrap(_burn, "burn")
  assert burn(0.1) > 0 and burn(0.1) > 0
  phase = timer.phases["burn"]
  assert phase.calls == 2
  assert 0.18 <= phase.user + phase.sys and phase.wall >= 0.18

  def fails():
    raise KeyError("x")

  with pytest.raises(KeyError):
    timer.wrap(fails, "fails")()
  assert timer.phases["fails"].calls == 1
  assert timer.lines()[0].startswith("burn")  # sorted by CPU, dearest first


def test_parse_groups():
  assert job_cost.parse_groups("0:16,3:50") == [(0, 16), (3, 50)]
  for bad in ("3", "a:1", "2:0", "-1:16"):
    with pytest.raises(ValueError, match="G:width_step"):
      job_cost.parse_groups(bad)
