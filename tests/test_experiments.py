"""experiments/: reproduce and ablate run the tiny smoke config (2 meta-steps) from the command line into a
temporary directory and write tables whose numbers are checked against the runs' results.json; a rerun reuses
finished runs; overrides and sweeps expand as documented (typos fail); plots write real PNGs."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import subprocess
import sys
import types

import matplotlib.image
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `experiments` is a top-level package of the repository, not installed

from experiments import ablate, plots, runner  # noqa: E402

SPEC = "smoke_synthetic:tiny"
NAME = "smoke_synthetic-tiny"
K_LABELS = ["support_cap=1", "support_cap=5", "support_cap=all"]  # smoke_synthetic's support_cap sweep: 1, 5, 0
METHODS = ["maml", "none", "global_mean", "item_user_offset"]  # tiny: learner, comparison, baselines
SCENARIOS = ["warm", "new_user", "new_item", "new_user_new_item"]


def _cli(module: str, *args: str) -> str:
  """Runs `python -m experiments.<module> args` in the repository; returns its stdout."""
  proc = subprocess.run(
    [sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def produced(tmp_path_factory, jax_cache):
  """reproduce then ablate (support_cap sweep) on the tiny smoke config, 2 seeds x 2 meta-steps, sharing the
  suite's XLA cache so the sweep's runs reuse the programs compiled for the reproduce run (and other tests')."""
  root = tmp_path_factory.mktemp("experiments")
  runs, out, cache = str(root / "runs"), str(root / "results"), jax_cache
  common = ["--set", "num_steps=2", f"--runs={runs}", f"--out={out}", f"--compilation_cache={cache}"]
  _cli("reproduce", f"--configs={SPEC}", "--seeds=2", *common)
  _cli("ablate", f"--config={SPEC}", "--sweep=support_cap", *common)
  return types.SimpleNamespace(runs=runs, out=out, common=common)


def _csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _per_seed(results: dict, method: str) -> dict:
  """{scenario: {metric: per_seed}} of a method in results.json."""
  block = (
    results["metrics"] if method == results["learner"] else {**results["comparisons"], **results["baselines"]}[method]
  )
  return {s: {m: v["per_seed"] for m, v in per.items()} for s, per in block.items()}


def _check_rows(rows: list[dict], expected: dict) -> None:
  """Each CSV row's mean/std equals numpy's over the run's per-seed values, which are finite."""
  assert len(rows) == sum(len(per) for scen in expected.values() for per in scen.values())
  for r in rows:
    values = expected[r["method"]][r["scenario"]][r["metric"]]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), r
    assert float(r["mean"]) == pytest.approx(np.mean(values), rel=1e-12)
    assert float(r["std"]) == pytest.approx(np.std(values), rel=1e-9, abs=1e-15)
    assert int(r["n_seeds"]) == 2


def test_reproduce_writes_the_table_of_the_run(produced):
  results = _results(os.path.join(produced.runs, "reproduce", NAME))
  assert results["seeds"] == [0, 1] and results["train"]["steps"] == 2
  rows = _csv(os.path.join(produced.out, f"{NAME}.csv"))
  assert list(dict.fromkeys(r["method"] for r in rows)) == METHODS
  assert list(dict.fromkeys(r["scenario"] for r in rows)) == ["valid", *SCENARIOS]
  _check_rows(rows, {m: _per_seed(results, m) for m in METHODS})

  with open(os.path.join(produced.out, f"{NAME}.md")) as f:
    md = f.read()
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
  for line in (
    f"# {NAME}: maml (melu) on synthetic",
    "- seeds: [0, 1]",
    "`seeds=2`, `num_steps=2`",
    "- wall time",
    "- machine:",
    f"- commit: {head.strip() or 'unknown'}",
  ):
    assert line in md, line
  cell = results["metrics"]["new_user"]["mae"]
  assert f"| new_user | maml | {cell['mean']:.3f} ± {cell['std']:.3f} |" in md


def test_ablate_writes_a_row_per_method_and_override(produced):
  stem = os.path.join(produced.out, f"ablate_{NAME}_support_cap")
  rows = _csv(f"{stem}.csv")
  methods = [f"{m} @ {k}" for m in METHODS for k in K_LABELS]
  assert list(dict.fromkeys(r["method"] for r in rows)) == methods
  expected = {}
  for k in K_LABELS:
    results = _results(os.path.join(produced.runs, "ablate", NAME, k))
    expected.update({f"{m} @ {k}": _per_seed(results, m) for m in METHODS})
  _check_rows(rows, expected)
  with open(f"{stem}.md") as f:
    md = f.read()
  assert all(f"## {s}" in md for s in ["valid", *SCENARIOS]) and "| new_user | maml @ support_cap=5 |" in md

  with open(f"{stem}.json") as f:
    index = json.load(f)
  assert [r["overrides"] for r in index["runs"]] == [{"support_cap": 1}, {"support_cap": 5}, {"support_cap": 0}]
  # The cap reached the splits: every task set of the K=1 run has support size 1.
  with open(os.path.join(produced.runs, "ablate", NAME, "support_cap=1", "split_manifest.json")) as f:
    manifest = json.load(f)
  assert {s["support_max"] for m in manifest for s in m["sets"].values()} == {1}
  # support_cap=0 is the config's default: that run is the reproduce run again, number for number.
  again = _per_seed(_results(os.path.join(produced.runs, "ablate", NAME, "support_cap=all")), "maml")
  first = _per_seed(_results(os.path.join(produced.runs, "reproduce", NAME)), "maml")
  np.testing.assert_allclose(again["new_user"]["mae"], first["new_user"]["mae"], rtol=1e-6)


def test_ablate_rerun_reuses_finished_runs(produced, tmp_path):
  stem = os.path.join(produced.out, f"ablate_{NAME}_support_cap")
  with open(f"{stem}.json") as f:
    first = {r["label"]: r for r in json.load(f)["runs"]}
  assert not any(r["reused"] for r in first.values()) and all(r["wall_seconds"] > 0 for r in first.values())
  path = os.path.join(produced.runs, "ablate", NAME, "support_cap=5", "results.json")
  before = os.stat(path).st_mtime_ns
  args = [a for a in produced.common if not a.startswith("--out=")]
  _cli("ablate", f"--config={SPEC}", "--sweep=support_cap", f"--out={tmp_path}", "--baselines=global_mean", *args)
  assert os.stat(path).st_mtime_ns == before
  with open(tmp_path / f"ablate_{NAME}_support_cap.md") as f:
    md = f.read()
  # A reused run reports the wall time measured when it was made.
  walls = "; ".join(f"{k}: {first[k]['wall_seconds']:.1f} s (reused run)" for k in K_LABELS)
  assert walls in md
  rows = _csv(str(tmp_path / f"ablate_{NAME}_support_cap.csv"))
  assert list(dict.fromkeys(r["method"].split(" @ ")[0] for r in rows)) == ["maml", "none", "global_mean"]
  with pytest.raises(ValueError, match=r"baselines \['nope'\] are not in the run"):
    runner.method_values(first["support_cap=5"]["results"], ["nope"])


def test_a_run_of_another_config_is_refused_not_reused(produced):
  config = runner.apply_overrides(runner.load_config(SPEC), {"num_steps": 3})
  with pytest.raises(ValueError, match=r"different config \(keys \['num_steps'\]\)"):
    runner.run(config, os.path.join(produced.runs, "reproduce", NAME))


def test_plot_ablation_and_curves(produced, tmp_path):
  csv_path = os.path.join(produced.out, f"ablate_{NAME}_support_cap.csv")
  key, xs, series = plots.read_ablation(csv_path, "new_user", "mae")
  assert (key, xs, list(series)) == ("support_cap", ["1", "5", "all"], METHODS)
  row = next(
    r
    for r in _csv(csv_path)
    if r["method"] == "none @ support_cap=5" and r["scenario"] == "new_user" and r["metric"] == "mae"
  )
  assert series["none"]["5"] == (float(row["mean"]), float(row["std"]))

  for path in (
    plots.plot_ablation(csv_path, "new_user/mae", str(tmp_path / "k.png"), ["maml", "none"]),
    plots.plot_curves(
      [os.path.join(produced.runs, "ablate", NAME)], ["train/outer_loss", "valid/mae"], str(tmp_path / "curves.png")
    ),
  ):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 200 and float(image.std()) > 0.01  # drawn, not blank

  with pytest.raises(ValueError, match="no rows for new_user/auc"):
    plots.plot_ablation(csv_path, "new_user/auc", str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="not in"):
    plots.plot_ablation(csv_path, "new_user/mae", str(tmp_path / "x.png"), ["fomaml"])
  with pytest.raises(ValueError, match="no run logged 'train/nope'"):
    plots.plot_curves([os.path.join(produced.runs, "reproduce", NAME)], ["train/nope"], str(tmp_path / "x.png"))


def test_run_dirs_sort_a_sweep_by_value(tmp_path):
  for name in ("k=10", "k=all", "k=3", "k=1", "notes"):
    (tmp_path / name).mkdir()
    if name != "notes":
      (tmp_path / name / "metrics.jsonl").write_text("")
  assert [os.path.basename(d) for d in plots.run_dirs([str(tmp_path)])] == ["k=1", "k=3", "k=10", "k=all"]
  with pytest.raises(ValueError, match="no metrics.jsonl"):
    plots.run_dirs([str(tmp_path / "notes")])


def test_curves_read_metrics_jsonl(tmp_path):
  lines = [
    {"learner": "a", "step": 1, "train/outer_loss": 2.0},
    {"learner": "a", "step": 2, "train/outer_loss": 1.5, "valid/mae": 0.9},
    {"learner": "b", "step": 2, "train/outer_loss": 3.0},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  assert plots.read_curves(str(tmp_path)) == {
    "a": {"train/outer_loss": ([1, 2], [2.0, 1.5]), "valid/mae": ([2], [0.9])},
    "b": {"train/outer_loss": ([2], [3.0])},
  }


def test_overrides_set_dotted_keys_and_refuse_typos():
  config = runner.load_config("melu_ml100k")
  out = runner.apply_overrides(
    config,
    {"learner.inner_steps": 5, "support_cap": 3, "model": {}, "compare_learners": ("none",), "compare_kwargs": {}},
  )
  assert (out.learner.inner_steps, out.support_cap, out.model.to_dict(), tuple(out.compare_learners)) == (
    5,
    3,
    {},
    ("none",),
  )
  assert config.learner.inner_steps == 2 and config.model.emb_dim == 32  # the original is untouched
  assert out.is_locked and out.model.is_locked
  for bad, match in (
    ({"learner.inner_stepz": 1}, "no field 'inner_stepz'"),
    ({"modle.emb_dim": 1}, "'modle' is not"),
    ({"seeds.x": 1}, "'seeds' is not a sub-config"),
    ({"support_cap": "x"}, "support_cap"),
  ):
    with pytest.raises(ValueError, match=match):
      runner.apply_overrides(config, bad)


def test_parse_sets():
  assert runner.parse_sets(["num_steps=5", "learner.inner_lr=0.1", "model_name=mf", "buckets=(8, 48)", "x=True"]) == {
    "num_steps": 5,
    "learner.inner_lr": 0.1,
    "model_name": "mf",
    "buckets": (8, 48),
    "x": True,
  }
  with pytest.raises(ValueError, match="want key=value"):
    runner.parse_sets(["num_steps"])


def test_sweeps_are_grouped_named_and_labelled():
  flat = [
    {"learner.inner_steps": 0},
    {"support_cap": 1},
    {"learner.inner_steps": 1},
    {"support_cap": 0},
    {"compare_kwargs.fomaml.inner_steps": 3},
    {"model_name": "mf", "model": {}},
    {"model_name": "two_tower", "model": {}},
  ]
  groups = ablate.group_sweep(flat)
  assert list(groups) == ["learner.inner_steps", "support_cap", "compare_kwargs.fomaml.inner_steps", "model_name"]
  assert groups["support_cap"] == [{"support_cap": 1}, {"support_cap": 0}]
  assert ablate.labels(groups["support_cap"]) == ["support_cap=1", "support_cap=all"]
  assert ablate.labels(groups["model_name"]) == ["model_name=mf", "model_name=two_tower"]  # 'model' never varies
  assert ablate.labels([{"learner.first_order": True}]) == ["first_order=True"]
  assert ablate.labels([{"learner.inner_lr": 0.05}, {"learner.inner_lr": 1e-3}]) == ["inner_lr=0.05", "inner_lr=0.001"]
  with pytest.raises(ValueError, match="duplicate runs"):
    ablate.labels([{"support_cap": 1}, {"support_cap": 1}])
  assert ablate.run_dir("model_name=a b, x=(1)") == "model_name=a_b,x=_1_"
  assert ablate.select(groups, "learner.inner_steps") == {
    "learner.inner_steps": [{"learner.inner_steps": 0}, {"learner.inner_steps": 1}]
  }
  assert list(ablate.select(groups, "all")) == list(groups)
  with pytest.raises(ValueError, match=r"unknown sweep 'nope'; valid sweeps: \['learner.inner_steps'"):
    ablate.select(groups, "nope")


def test_named_sweeps_accepts_lists_dicts_and_a_name_argument():
  as_list = types.SimpleNamespace(sweep=lambda: [{"a.b": 1}, {"a.b": 2}, {"c": 0}])
  as_dict = types.SimpleNamespace(sweep=lambda: {"mine": [{"c": 1}]})
  by_name = types.SimpleNamespace(sweep=lambda name="all": {"k": [{"c": 1}], "all": [{"c": 2}]}[name])
  assert ablate.named_sweeps(as_list) == {"b": [{"a.b": 1}, {"a.b": 2}], "c": [{"c": 0}]}
  assert ablate.named_sweeps(as_dict) == {"mine": [{"c": 1}]}
  assert ablate.named_sweeps(by_name, "k") == {"k": [{"c": 1}]}
  with pytest.raises(ValueError, match="defines no sweep"):
    ablate.named_sweeps(types.SimpleNamespace(__file__="x.py"))


@pytest.mark.parametrize(
  "spec",
  sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not os.path.basename(p).startswith("_")
  ),
)
def test_every_sweep_of_every_config_applies(spec):
  module, arg = runner.config_module(spec)
  config = module.get_config(arg)
  for overrides in ablate.named_sweeps(module).values():
    ablate.labels(overrides)
    for o in overrides:
      applied = runner.apply_overrides(config, o)  # raises on a key the config lacks
      for key, value in o.items():
        node = applied
        for part in key.split("."):
          node = node[part]
        want = value.to_dict() if hasattr(value, "to_dict") else value
        got = node.to_dict() if hasattr(node, "to_dict") else node
        assert got == want or tuple(got) == tuple(want), (spec, key, got, want)


def test_ablate_cli_refuses_an_unknown_sweep_before_running(tmp_path):
  with pytest.raises(ValueError, match="unknown sweep 'nope'"):
    ablate.main([f"--config={SPEC}", "--sweep=nope", f"--runs={tmp_path}", f"--out={tmp_path}"])
  assert not os.listdir(tmp_path)
  with pytest.raises(ValueError, match="no file"):
    runner.load_config("no_such_config")
