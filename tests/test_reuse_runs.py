"""experiments/reuse_runs.py: a strategies table's .json rebuilds the workdirs of exactly the rows whose recorded
run agrees with today's grid (so `experiments.strategies` reuses them and reruns the rest), never overwriting."""

from __future__ import annotations

import json
import os

import pytest

from experiments import reuse_runs, runner
from experiments import strategies as table

SPEC = "item_warmup_ml100k"  # its smoke grid: MetaEmb (+ the warmup learner) and MWUF, on synthetic data
METAEMB_KWARGS = dict(
  alpha=0.1, batch_size=64, dim=8, global_bias=3.5, hidden=8, loss="mse", meta_steps=4, pretrain_steps=6,
  warmup_lr=0.1, warmup_steps=1,
)  # fmt: skip
MWUF_KWARGS = dict(
  batch_size=256, dim=32, global_bias=3.5, loss="mse", meta_steps=20, pretrain_steps=20, warmup_lr=0.1, warmup_steps=1
)


def stages(pretrain: tuple[int, int], meta: tuple[int, int], meta_regex: str) -> list[dict]:
  """The two stages as results.json records them (steps, batch size: interactions, then tasks of 8 per step)."""
  base = "^(?!.*(_generator/|_meta_scale/|_meta_shift/))"
  return [
    {"name": "pretrain", "stream": "interactions", "steps": pretrain[0], "batch_size": pretrain[1], "trainable": base},
    {"name": "meta", "stream": "tasks", "steps": meta[0], "batch_size": meta[1], "trainable": meta_regex},
  ]


def recorded(learner: str, strategy: str, kwargs: dict, steps: int, stage_list: list[dict], mae: float) -> dict:
  """A finished smoke run's results.json, written by hand from the smoke config (1 seed, synthetic, valid/mae)."""
  return {
    "dataset": "synthetic",
    "protocol": "item_warmup",
    "protocol_version": "1.0",
    "learner": learner,
    "model": "mf",
    "seeds": [0],
    "metrics": {"cold": {"mae": {"mean": mae, "std": 0.0, "per_seed": [mae]}}},
    "train": {"steps": steps, "learners": {learner: {"seconds": 1.0, "tasks_per_second": 8.0 * steps}}},
    "comparisons": {strategy: {"cold": {"mae": {"mean": mae, "std": 0.0, "per_seed": [mae]}}}},
    "baselines": {},
    "selection": {"metric": "valid/mae", "mode": "min"},
    "strategy": {"name": strategy, "kwargs": kwargs, "stages": stage_list},
  }


def write_table(tmp_path, mwuf_kwargs: dict, mwuf_meta_steps: int = 20) -> str:
  runs = [
    {
      "strategy": "metaemb",
      "wall": "12.5 s",
      "results": recorded("warmup", "metaemb", METAEMB_KWARGS, 4, stages((6, 64), (4, 8), "_generator/"), 0.9),
    },
    {
      "strategy": "mwuf",
      "wall": "reused run",
      "results": recorded(
        "none", "mwuf", mwuf_kwargs, 1, stages((20, 256), (mwuf_meta_steps, 8), "_meta_scale/|_meta_shift/"), 0.8
      ),
    },
  ]
  path = os.path.join(tmp_path, "table.json")
  with open(path, "w") as f:
    json.dump({"config": SPEC, "protocol": "rating", "runs": runs}, f)
  return path


def test_restores_agreeing_rows_so_the_table_reuses_them(tmp_path):
  runs = str(tmp_path / "runs")
  assert reuse_runs.restore(write_table(tmp_path, MWUF_KWARGS), runs, {}, smoke=True) == {"metaemb": [], "mwuf": []}
  cells = {row: cell for _, row, cell in table.grid(SPEC, ["rating"], {}, smoke=True)}
  for row, mae in (("metaemb", 0.9), ("mwuf", 0.8)):
    workdir = os.path.join(runs, "strategies", f"{SPEC}-smoke", "rating", row)
    results = runner._finished(cells[row], workdir)  # what experiments.strategies reads to reuse a run
    assert results["metrics"]["cold"]["mae"]["per_seed"] == [mae]
  info = runner.run(cells["metaemb"], os.path.join(runs, "strategies", f"{SPEC}-smoke", "rating", "metaemb"))
  assert info.reused and info.wall_seconds == 12.5 and runner.describe_wall(info) == "12.5 s (reused run)"
  # A second restore never overwrites.
  again = reuse_runs.restore(write_table(tmp_path, MWUF_KWARGS), runs, {}, smoke=True)
  assert all(len(why) == 1 and why[0].endswith("exists (never overwritten)") for why in again.values())


def test_rows_whose_run_differs_from_todays_grid_are_left_to_rerun(tmp_path):
  runs = str(tmp_path / "runs")
  changed = dict(MWUF_KWARGS, global_bias=0.0)  # e.g. a row whose config was fixed since the table was written
  got = reuse_runs.restore(write_table(tmp_path, changed, mwuf_meta_steps=5), runs, {}, smoke=True)
  assert got["metaemb"] == []
  assert len(got["mwuf"]) == 2
  assert got["mwuf"][0].startswith("strategy: recorded ['mwuf', {") and "'global_bias': 0.0" in got["mwuf"][0]
  assert got["mwuf"][1].startswith("stages: recorded [('pretrain', 'interactions', 20, 256), ('meta', 'tasks', 5, 8)]")
  assert not os.path.exists(os.path.join(runs, "strategies", f"{SPEC}-smoke", "rating", "mwuf"))
  # The table's --set must be passed again: with another seed count every row differs.
  other = reuse_runs.restore(write_table(tmp_path, MWUF_KWARGS), str(tmp_path / "r2"), {"seeds": 2}, smoke=True)
  assert other["metaemb"] == ["seeds: recorded [0], now [0, 1]"]


@pytest.mark.parametrize(
  ("field", "value", "line"),
  [
    ("learner", "none", "learner: recorded 'none', now 'warmup'"),
    ("dataset", "ml-100k", "dataset: recorded 'ml-100k', now 'synthetic'"),
    ("selection", {"metric": "valid/auc", "mode": "max"}, "selection: recorded ['valid/auc', 'max'], now"),
    ("comparisons", {"metaemb": {}, "none": {}}, "comparisons: recorded ['metaemb', 'none'], now ['metaemb']"),
  ],
)
def test_each_recorded_field_is_compared(field, value, line):
  cell = next(c for _, row, c in table.grid(SPEC, ["rating"], {}, smoke=True) if row == "metaemb")
  stage_list = stages((6, 64), (4, 8), "_generator/")
  results = recorded("warmup", "metaemb", METAEMB_KWARGS, 4, stage_list, 0.9)
  assert reuse_runs.mismatches(results, cell, stage_list) == []
  (got,) = reuse_runs.mismatches(results | {field: value}, cell, stage_list)
  assert got.startswith(line)


def test_wall_parsing():
  assert reuse_runs._wall("853.1 s") == 853.1 and reuse_runs._wall("1626.2 s (reused run)") == 1626.2
  assert reuse_runs._wall("reused run") is None


def test_row_pairs_compares_a_row_with_every_other_method():
  from experiments import row_pairs

  def results(learner, per_seed, comparisons=None):
    cell = lambda v: {"test": {"mae": {"per_seed": v}}}  # noqa: E731
    return {
      "learner": learner,
      "metrics": cell(per_seed),
      "comparisons": {k: cell(v) for k, v in (comparisons or {}).items()},
      "baselines": {"item_mean": cell([1.0, 1.1, 0.9])},
      "train": {"learners": {}},
    }

  saved = {
    "runs": [
      {"strategy": "first", "results": results("warmup", [0.8, 0.9, 0.7], {"none": [0.9, 1.0, 0.8]})},
      {"strategy": "mwuf", "results": results("none", [0.0, 0.0, 0.0], {"mwuf": [0.85, 0.90, 0.95]})},
    ]
  }
  got = {p["other"]: p for p in row_pairs.row_pairs(saved, ["warmup"], "mae")}
  assert list(got) == ["none", "mwuf", "item_mean"]  # the later run's `none` is dropped; the row is 'mwuf'
  # mae: lower is better, so the improvement is other - row: none +0.1 each seed (a win: zero spread), mwuf
  # (+0.05, 0, +0.25) and item mean +0.2 each seed.
  assert got["none"]["mean"] == pytest.approx(0.1) and got["none"]["wins"]
  assert got["mwuf"]["mean"] == pytest.approx(0.1) and got["mwuf"]["se"] == pytest.approx(0.0763763, rel=1e-5)
  assert not got["mwuf"]["wins"] and got["item_mean"]["wins"]
  with pytest.raises(ValueError, match="rows \\['nope'\\] have no test/mae"):
    row_pairs.row_pairs(saved, ["nope"], "mae")
