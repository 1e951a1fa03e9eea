"""What a run leaves for people: train.log, learning curves per learner and seed, per-scenario bars beside the
baselines; and metrics.jsonl's per-seed values agree with its means."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from transfer_meta import plots, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  spec = importlib.util.spec_from_file_location("smoke_cfg_out", os.path.join(ROOT, "configs", "smoke_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  with config.unlocked():
    config.num_steps, config.min_tasks = 4, 10_000  # a floor no set reaches: its warning must reach train.log
  return config  # second-order MAML beside `none`


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("outputs"))
  return workdir, train.train_and_evaluate(_config(), workdir)


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


def test_a_fresh_rerun_is_bit_identical_on_cpu(run, tmp_path):
  """README "Reproducibility": a second-order run repeated into a fresh workdir gives the same bits."""
  workdir, results = run
  again = train.train_and_evaluate(_config(), str(tmp_path))
  assert again["metrics"] == results["metrics"] and again["comparisons"] == results["comparisons"]
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == open(tmp_path / "metrics.jsonl").read()
