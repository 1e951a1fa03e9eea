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

from forkrun import TRAINING_PRELOAD, ForkServer  # noqa: E402

from experiments import ablate, plots, runner  # noqa: E402
from transfer_meta import results as results_lib  # noqa: E402

SPEC = "smoke_synthetic:tiny"
NAME = "smoke_synthetic-tiny"
K_LABELS = ["support_cap=1", "support_cap=5", "support_cap=all"]  # smoke_synthetic's support_cap sweep: 1, 5, 0
METHODS = ["maml", "none", "global_mean", "item_user_offset"]  # tiny: learner, comparison, baselines
SCENARIOS = ["warm", "new_user", "new_item", "new_user_new_item"]
SETS = {"num_steps": 2, "plots": False}  # the produced runs' `--set` overrides (`produced`)


# The command lines run in forks of one interpreter that has imported jax and the library (tests/forkrun.py; a fresh
# `python -m` spends ~1.5 CPU-s on those imports before its work).
SERVER = ForkServer(ROOT, preload=TRAINING_PRELOAD)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _cli(module: str, *args: str) -> str:
  """Runs `python -m experiments.<module> args` in the repository; returns its stdout."""
  proc = SERVER.run([f"experiments.{module}", *args], ROOT, timeout=300)
  assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def produced(tmp_path_factory, jax_cache):
  """reproduce then ablate (support_cap sweep) on the tiny smoke config, 2 seeds x 2 meta-steps, sharing the
  suite's XLA cache so the sweep's runs reuse the programs compiled for the reproduce run (and other tests')."""
  root = tmp_path_factory.mktemp("experiments")
  runs, out, cache = str(root / "runs"), str(root / "results"), jax_cache
  # plots=False: no run's PNGs are read here (its plot tests draw from the runs' CSV and metrics.jsonl; the per-run
  # PNGs are test_run_outputs'), and each of the four runs would spend ~1-4 CPU-s drawing five.
  common = [*(a for k, v in SETS.items() for a in ("--set", f"{k}={v}")), f"--runs={runs}", f"--out={out}"]
  common.append(f"--compilation_cache={cache}")
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
  assert not glob.glob(os.path.join(produced.runs, "**", "*.png"), recursive=True)  # `--set plots=False` reached them
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


def test_ablate_late_baselines_score_a_reference_the_finished_runs_lack(produced, tmp_path):
  """--late_baselines=item_mean (not among tiny's baselines): every reused run's table gets item_mean rows equal to
  what the trainer reports for it on that run's splits (build_experiment + run_baselines, nothing trained)."""
  from transfer_meta import results as results_lib  # noqa: PLC0415
  from transfer_meta import train  # noqa: PLC0415

  args = [a for a in produced.common if not a.startswith("--out=")]
  _cli("ablate", f"--config={SPEC}", "--sweep=support_cap", "--late_baselines=item_mean", f"--out={tmp_path}", *args)
  with open(tmp_path / f"ablate_{NAME}_support_cap.json") as f:
    runs = {r["label"]: r for r in json.load(f)["runs"]}
  assert all(r["reused"] and r["late_baselines"] == ["item_mean"] for r in runs.values())
  csv_rows = _csv(str(tmp_path / f"ablate_{NAME}_support_cap.csv"))
  rows = {r["method"]: r for r in csv_rows if r["scenario"] == "new_user" and r["metric"] == "mae"}
  for k, override in zip(K_LABELS, ({"support_cap": 1}, {"support_cap": 5}, {"support_cap": 0})):
    assert "item_mean" not in _results(os.path.join(produced.runs, "ablate", NAME, k))["baselines"]  # not written
    config = runner.apply_overrides(runner.load_config(SPEC), {"num_steps": 2, **override, "baselines": ("item_mean",)})
    want = results_lib.run_baselines(train.build_experiment(config))["item_mean"]
    mae = [seed["new_user"]["mae"] for seed in want]
    assert runs[k]["results"]["baselines"]["item_mean"]["new_user"]["mae"]["per_seed"] == pytest.approx(mae, rel=1e-6)
    assert float(rows[f"item_mean @ {k}"]["mean"]) == pytest.approx(np.mean(mae), abs=1e-6)


def test_ablate_select_chooses_on_valid_only_and_pairs_by_seed(produced, tmp_path):
  args = [a for a in produced.common if not a.startswith("--out=")]
  _cli("ablate", f"--config={SPEC}", "--sweep=support_cap", "--select", f"--out={tmp_path}", *args)
  with open(tmp_path / f"ablate_{NAME}_support_cap_selection.json") as f:
    out = json.load(f)
  # Independently: the (run, trained method) with the lowest mean valid MAE (the tiny config's select_metric).
  tried = {}
  for k in K_LABELS:
    results = _results(os.path.join(produced.runs, "ablate", NAME, k))
    for m in ("maml", "none"):
      tried[(k, m)] = _per_seed(results, m)["valid"]["mae"]
  best = min(tried, key=lambda km: np.mean(tried[km]))
  sel = out["selection"]
  assert (sel["selected"]["label"], sel["selected"]["method"]) == best
  assert [(r["label"], r["method"]) for r in sel["rows"]] == list(tried)  # every tried setting is listed
  results = _results(os.path.join(produced.runs, "ablate", NAME, best[0]))
  ours, ref = _per_seed(results, best[1]), _per_seed(results, "item_user_offset")
  for scenario in SCENARIOS:
    for metric, sign in (("mae", -1.0), ("ndcg@3", 1.0)):
      d = sign * (np.asarray(ours[scenario][metric]) - np.asarray(ref[scenario][metric]))
      imp = out["report"]["scenarios"][scenario][metric]["improvement"]
      assert imp["mean"] == pytest.approx(d.mean(), abs=1e-12)
      assert imp["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(d.size), abs=1e-12)
      assert imp["wins"] == bool(imp["mean"] > 2 * imp["se"])
  with open(tmp_path / f"ablate_{NAME}_support_cap_selection.md") as f:
    md = f.read()
  assert "**selected**" in md and f"`{best[1]} @ {best[0]}`" in md and "| new_user | ndcg@3 |" in md
  # The evidence table pairs every tried setting on test, the same way (and is not what selected).
  assert len(out["evidence"]) == len(tried) * len(SCENARIOS)
  row = next(
    e for e in out["evidence"] if (e["label"], e["method"], e["scenario"]) == ("support_cap=1", "none", "warm")
  )
  ours = _per_seed(_results(os.path.join(produced.runs, "ablate", NAME, "support_cap=1")), "none")["warm"]["mae"]
  ref = _per_seed(_results(os.path.join(produced.runs, "ablate", NAME, "support_cap=1")), "item_user_offset")
  assert row["improvement"]["mae"]["mean"] == pytest.approx(np.mean(np.subtract(ref["warm"]["mae"], ours)), abs=1e-12)


def test_paired_improvement_by_hand():
  # Error metric: improvement = reference - method per seed = [0.02, 0.03, 0.01]: mean 0.02, SE 0.01/sqrt(3).
  imp = ablate.paired([0.70, 0.70, 0.70], [0.72, 0.73, 0.71], lower_better=True)
  assert imp["mean"] == pytest.approx(0.02) and imp["se"] == pytest.approx(0.01 / np.sqrt(3))
  assert imp["z"] == pytest.approx(0.02 / (0.01 / np.sqrt(3))) and imp["wins"]
  tie = ablate.paired([0.70, 0.74], [0.72, 0.71], lower_better=True)  # +0.02 and -0.03: no win
  assert tie["mean"] == pytest.approx(-0.005) and not tie["wins"]
  assert ablate.paired([0.6, 0.7], [0.5, 0.5], lower_better=False)["mean"] == pytest.approx(0.15)
  assert ablate.lower_is_better("mae") and not ablate.lower_is_better("ndcg@3")
  with pytest.raises(ValueError, match="one length"):
    ablate.paired([0.1], [0.1, 0.2], lower_better=True)


def test_a_run_of_another_config_is_refused_not_reused(produced):
  config = runner.apply_overrides(runner.load_config(SPEC), {**SETS, "num_steps": 3})
  with pytest.raises(ValueError, match=r"different config \(keys \['num_steps'\]\)"):
    runner.run(config, os.path.join(produced.runs, "reproduce", NAME))


def test_a_run_made_before_a_trainer_field_existed_is_reused_at_that_fields_default():
  """Runs recorded before `length_groups` existed match a config that leaves it at its default (0: off), and
  only then: the field at another value, a field the new config lacks or a changed value are differences."""
  new = runner.config_json(runner.load_config(SPEC))
  old = {k: v for k, v in new.items() if k not in ("length_groups", "length_group_step")}
  assert results_lib.config_diff(old, new) == []
  assert results_lib.config_diff(old, {**new, "length_groups": 2}) == ["length_groups"]
  assert results_lib.config_diff({**old, "retired_field": 1}, new) == ["retired_field"]
  assert results_lib.config_diff(old, {**new, "num_steps": new["num_steps"] + 1}) == ["num_steps"]
  assert results_lib.config_diff(old, {**new, "not_a_trainer_field": 0}) == ["not_a_trainer_field"]


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


# ---------------------------------------------------------------------------------------------------- paper tables

MELU_SCENARIOS = {
  "existing items, existing users": "warm",
  "existing items, new users": "new_user",
  "new items, existing users": "new_item",
  "new items, new users": "new_user_new_item",
}
PAPER_METHODS = ["PPR", "Wide & Deep", "MeLU-1", "MeLU-5"]


def test_paper_table_holds_melu_table2():
  from experiments import reproduce

  table = reproduce.paper_table("melu_table2")
  assert list(table) == list(MELU_SCENARIOS) and all(list(t) == PAPER_METHODS for t in table.values())
  # The quote of the paper (MeLU-5, new users) and two more cells read off the paper's Table 2.
  assert table["existing items, new users"]["MeLU-5"] == {"mae": 0.7854, "ndcg@1": 0.8803, "ndcg@3": 0.8812}
  assert table["existing items, existing users"]["PPR"]["mae"] == 0.1820
  assert table["new items, new users"]["Wide & Deep"] == {"mae": 1.3114, "ndcg@1": 0.7680, "ndcg@3": 0.7874}
  config = runner.config_module("melu_ml1m")[0]
  assert config.PAPER["scenarios"] == MELU_SCENARIOS and config.PAPER["table"] == "melu_table2"


def test_paper_table_refuses_a_bad_cell(tmp_path, monkeypatch):
  from experiments import reproduce

  (tmp_path / "t.md").write_text("| scenario | method | MAE |\n|---|---|---:|\n| a | X | 0.5 |\n| | Y | n/a |\n")
  monkeypatch.setattr(reproduce, "REFERENCES", str(tmp_path))
  with pytest.raises(ValueError, match=r"t\.md: table row 4 \['', 'Y', 'n/a'\]"):
    reproduce.paper_table("t")
  (tmp_path / "t.md").write_text("| scenario | method | MAE |\n|---|---|---:|\n| a | X | 0.5 |\n| | Y | 0.25 |\n")
  assert reproduce.paper_table("t") == {"a": {"X": {"mae": 0.5}, "Y": {"mae": 0.25}}}


def test_reproduce_writes_the_paper_table_beside_the_run(produced, tmp_path):
  """A config declaring PAPER (here smoke_synthetic plus MeLU's Table 2) gets <name>_paper.{md,csv}: the
  published rows as held, the run's learners under the paper's names, and its baselines, on the paper's metrics.
  The config's name and overrides equal the produced run's, so the run is reused, not trained again."""
  from experiments import reproduce

  path = tmp_path / "smoke_synthetic.py"
  path.write_text(
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('base', {os.path.join(ROOT, 'configs', 'smoke_synthetic.py')!r})\n"
    "base = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(base)\n"
    "get_config, sweep = base.get_config, base.sweep\n"
    f"PAPER = {{'table': 'melu_table2', 'scenarios': {MELU_SCENARIOS!r}, 'methods': {{'maml': 'MeLU-1'}}}}\n"
  )
  out = str(tmp_path / "out")
  paths = reproduce.reproduce(f"{path}:tiny", 2, SETS, produced.runs, out, "cmd")
  assert [os.path.basename(p) for p in paths] == [f"{NAME}.md", f"{NAME}.csv", f"{NAME}_paper.md", f"{NAME}_paper.csv"]
  results = _results(os.path.join(produced.runs, "reproduce", NAME))
  rows = _csv(os.path.join(out, f"{NAME}_paper.csv"))
  published = reproduce.paper_table("melu_table2")
  ours = {"MeLU-1 (ours)": "maml", "none (ours)": "none", "global_mean (baseline)": "global_mean"}
  ours["item_user_offset (baseline)"] = "item_user_offset"
  want_methods = [f"{m} (paper)" for m in PAPER_METHODS] + list(ours)
  assert list(dict.fromkeys(r["scenario"] for r in rows)) == SCENARIOS
  for scenario_label, scenario in MELU_SCENARIOS.items():
    mine = [r for r in rows if r["scenario"] == scenario]
    assert list(dict.fromkeys(r["method"] for r in mine)) == want_methods
    assert {r["metric"] for r in mine} == {"mae", "ndcg@1", "ndcg@3"}
    for r in mine:
      if r["method"].endswith("(paper)"):
        assert float(r["mean"]) == published[scenario_label][r["method"][: -len(" (paper)")]][r["metric"]]
        assert math.isnan(float(r["std"]))
      else:
        values = _per_seed(results, ours[r["method"]])[scenario][r["metric"]]
        assert float(r["mean"]) == pytest.approx(np.mean(values), rel=1e-12) and int(r["n_seeds"]) == 2
  with open(os.path.join(out, f"{NAME}_paper.md")) as f:
    md = f.read()
  assert "| new_user | MeLU-5 (paper) | 0.7854 | 0.8803 | 0.8812 |" in md
  cell = results["metrics"]["new_user"]["mae"]
  assert f"| new_user | MeLU-1 (ours) | {cell['mean']:.4f} ± {cell['std']:.4f} |" in md
  bad = {"table": "melu_table2", "scenarios": MELU_SCENARIOS, "methods": {"melu": "MeLU-5"}}
  with pytest.raises(ValueError, match=r"PAPER\['methods'\] names \['melu'\], not learners of the run"):
    reproduce.paper_rows(bad, results)
  with pytest.raises(ValueError, match=r"scenarios \['new items, new users'\] have no entry"):
    reproduce.paper_rows({**bad, "scenarios": dict(list(MELU_SCENARIOS.items())[:3])}, results)


def test_default_selection_metrics_follow_the_config_and_the_protocol():
  """No --select_metrics: the config's select metric, then the ranking metrics the runs report (genre_split's
  nDCG@5 and AUC, not the melu protocol's nDCG@3 that genre_split does not have)."""
  run = lambda metrics: {"results": {"metrics": {"valid": {}, "cold_target": dict.fromkeys(metrics, {})}}}
  genre = [run(["mae", "rmse", "ndcg@5", "auc", "auc/tasks"])]
  assert ablate.default_metrics("valid/mae", genre) == ["mae", "ndcg@5", "auc"]
  assert ablate.default_metrics("valid/ndcg@5", genre) == ["ndcg@5", "auc"]  # listed once
  melu = [run(["mae", "rmse", "ndcg@1", "ndcg@3"])]
  assert ablate.default_metrics("valid/mae", melu) == ["mae", "ndcg@1", "ndcg@3"]
  with pytest.raises(ValueError, match="'recall@5' is not reported"):
    ablate.default_metrics("valid/recall@5", melu)
  with pytest.raises(ValueError, match="no test scenario"):
    ablate.default_metrics("valid/mae", [{"results": {"metrics": {"valid": {}}}}])


def test_config_specs_split_on_commas_only_before_a_config_name():
  assert ablate.split_specs("melu_ml100k,item_cold_ml100k") == ["melu_ml100k", "item_cold_ml100k"]
  assert ablate.split_specs("cross_domain_ml100k:beta02,cap200,genre_split_ml100k:smoke") == [
    "cross_domain_ml100k:beta02,cap200",
    "genre_split_ml100k:smoke",
  ]
  assert ablate.split_specs("cross_domain_ml100k:beta05,ptupcdr,smoke") == ["cross_domain_ml100k:beta05,ptupcdr,smoke"]
  assert ablate.split_specs("no_such_config") == ["no_such_config"]  # left for config_module to refuse by name


def test_cross_domain_summary_rows_pair_each_method_with_each_reference_by_seed():
  from experiments import cross_domain_summary as cds

  sets = lambda valid, test: {  # noqa: E731
    "valid": {"mae": {"per_seed": valid}},
    "cold_target": {"mae": {"per_seed": test}, "ndcg@5": {"per_seed": [0.6, 0.7]}},
  }
  base = {r: sets([0, 0], [0.80, 0.84]) for r in (*cds.REFERENCES, *cds.OTHER_BASELINES)}
  base["source_item_user_offset"] = sets([0, 0], [0.90, 0.92])
  run = lambda name, test: {  # noqa: E731
    "label": name,
    "wall": "1.0 s",
    "results": {
      "strategy": {"name": name},
      "learner": "none",
      "metrics": sets([0.9, 0.9], [0.85, 0.85]),
      "comparisons": {name: sets([0.8, 0.82], test)},
      "baselines": base,
      "train": {"stage_seconds": {"fit": 2.0}},
    },
  }
  methods, baselines, walls = cds.collect([run("cmf", [0.78, 0.80]), run("emcdr", [0.79, 0.85])])
  assert list(methods) == ["cmf", "none", "emcdr"] and walls[0] == "cmf: 1.0 s; stages fit 2 s"
  lines = cds.table(methods, baselines)
  rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
  # cmf - item_user_offset per seed: -0.02, -0.04 -> mean -0.03, SE 0.01 (3 SE); - source-only: -0.12 twice
  assert "| 0.810 ± 0.010 | 0.790 ± 0.010 | 0.650 ± 0.050 | -0.0300 ± 0.0100 ** | -0.1200 ± 0.0000 ** |" in rows["cmf"]
  # emcdr: -0.01, +0.01 -> mean 0, SE 0.01: no win
  assert "| +0.0000 ± 0.0100 | " in rows["emcdr"] and rows["emcdr"].count("**") == 1
  assert lines[2].startswith("| cmf |") and rows["global_mean"].startswith("| global_mean | | 0.820 ± 0.020 |")
  with pytest.raises(ValueError, match="trained no strategy"):
    cds.collect([{"label": "x", "results": {}}])
  with pytest.raises(ValueError, match=r"baselines \['item_mean'\]"):
    cds.table(methods, {k: v for k, v in baselines.items() if k != "item_mean"})


def test_select_on_valid_among_chosen_methods_only():
  """`--select_methods`: one method's best setting on valid, even where another method's valid is better."""

  def run(label, learner_mae, strategy_mae):
    sets = lambda v: {"valid": {"mae": {"per_seed": [v, v]}}}  # noqa: E731
    return {"label": label, "results": {"learner": "warmup", "metrics": sets(learner_mae),
                                        "comparisons": {"metaemb": sets(strategy_mae)}}}  # fmt: skip

  records = [run("alpha=0", 0.80, 0.86), run("alpha=0.5", 0.81, 0.84)]
  assert ablate.select_on_valid(records, "mae", "min")["selected"] == {
    "label": "alpha=0", "method": "warmup", "mean": 0.80, "per_seed": [0.80, 0.80]
  }  # fmt: skip
  chosen = ablate.select_on_valid(records, "mae", "min", ["metaemb"])
  assert [(r["label"], r["method"]) for r in chosen["rows"]] == [("alpha=0", "metaemb"), ("alpha=0.5", "metaemb")]
  assert (chosen["selected"]["label"], chosen["selected"]["mean"]) == ("alpha=0.5", 0.84)
  with pytest.raises(ValueError, match=r"not trained in the sweep \['mwuf'\]; its methods: \['metaemb', 'warmup'\]"):
    ablate.select_on_valid(records, "mae", "min", ["mwuf"])
