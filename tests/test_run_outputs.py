"""What a run leaves for people: train.log, learning curves per learner and seed, per-scenario bars beside the
baselines; and metrics.jsonl's per-seed values agree with its means."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from transfer_meta import plots


@pytest.fixture(scope="module")
def run(smoke_tiny_runs):
  """conftest's smoke_tiny_runs run 0: configs/smoke_synthetic.py:tiny, 4 steps, `min_tasks=10000` (a floor no set
  reaches: its warning must reach train.log), second-order MAML beside `none`."""
  workdir, results, _ = smoke_tiny_runs(0)
  return workdir, results


def test_log_file_holds_the_run_and_its_warnings(run):
  workdir, _ = run
  text = open(os.path.join(workdir, "train.log")).read()
  assert "ratings" in text and "plots:" in text  # the data summary and the plots written
  assert "min_tasks=10000" in text and "WARNING" in text  # Python warnings are captured too


def test_metrics_jsonl_per_seed_values_average_to_the_logged_means(run):
  workdir, results = run
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert records and all("per_seed" in r for r in records)
  for r in records:
    for key, values in r["per_seed"].items():
      assert len(values) == len(results["seeds"])
      np.testing.assert_allclose(np.mean(values), r[key], rtol=1e-6)


def test_plots_are_written_and_read_back(run):
  workdir, results = run
  for name in ("curves.png", "scenarios_mae.png", "scenarios_rmse.png"):
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
  curves = plots.read_seed_curves(workdir)
  assert set(curves) == {"maml", "none"}
  steps, rows = curves["maml"]["train/outer_loss"]
  assert steps == [1, 2, 3, 4] and np.asarray(rows).shape == (4, len(results["seeds"]))
  with pytest.raises(ValueError, match="no learner logged 'train/nope' per seed"):
    plots.plot_seed_curves(workdir, ["train/nope"], os.path.join(workdir, "x.png"))
  with pytest.raises(ValueError, match="reports 'auc' on no scenario"):
    plots.plot_scenarios(results, "auc", os.path.join(workdir, "x.png"))
  # Ranking views (scenario names with '/') carry no MAE: the MAE plot leaves them out.
  views = {**results, "metrics": {**results["metrics"], "new_user/catalogue": {"recall@10": {"mean": 0.1, "std": 0}}}}
  assert plots.plot_scenarios(views, "mae", os.path.join(workdir, "v.png")).endswith("v.png")
  # A ranker baseline (no MAE anywhere) is left out of the MAE plot; one missing MAE on some scenario is an error.
  ranker = {s: {k: v for k, v in per.items() if k != "mae"} for s, per in results["metrics"].items()}
  with_ranker = {**results, "baselines": {**results.get("baselines", {}), "ranker": ranker}}
  assert plots.plot_scenarios(with_ranker, "mae", os.path.join(workdir, "r.png")).endswith("r.png")
  scenarios = [s for s in results["metrics"] if s != "valid"]
  assert len(scenarios) > 1, scenarios  # the smoke protocol has several scenarios: "half" below is partial
  partial = {**ranker, scenarios[0]: results["metrics"][scenarios[0]]}
  with_partial = {**results, "baselines": {**results.get("baselines", {}), "half": partial}}
  with pytest.raises(ValueError, match=r"\['half'\] do not report 'mae'"):
    plots.plot_scenarios(with_partial, "mae", os.path.join(workdir, "x.png"))


def test_a_fresh_rerun_is_bit_identical_on_cpu(run, smoke_tiny_runs):
  """README "Reproducibility": a second-order run repeated into a fresh workdir gives the same bits (run 1 of
  smoke_tiny_runs is the same config as run 0, trained again into its own workdir; test_serving serves it), and a
  run on reused programs equals one on freshly built ones."""
  workdir, results = run
  again_dir, again, _ = smoke_tiny_runs(1)
  assert again_dir != workdir
  # Run 0 built its programs afresh, run 1 reused them (`programs`): maml's and none's meta-step and eval step.
  assert smoke_tiny_runs.reused == {0: 0, 1: 4}, smoke_tiny_runs.reused
  assert again["metrics"] == results["metrics"] and again["comparisons"] == results["comparisons"]
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == open(os.path.join(again_dir, "metrics.jsonl")).read()
