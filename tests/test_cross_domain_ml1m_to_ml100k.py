"""The ml1m_to_ml100k methods table (configs/cross_domain_ml1m_to_ml100k.py): its rows, the text pairs
(experiments/text_pairs.py) and item text on two-domain data. The refusal of EMCDR/PTUPCDR on user-disjoint
splits is tested in tests/test_cross_domain_methods.py; the config's smoke variant in tests/test_configs.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import transfer_meta as tm
from experiments import ablate, runner, text_pairs
from transfer_meta.data.domains import with_domains
from transfer_meta.data.interactions import UNKNOWN
from transfer_meta.strategies import CROSS_DOMAIN, NEEDS_SHARED_USERS
from transfer_meta.text import item_features, minilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cfg():
  return runner.config_module("cross_domain_ml1m_to_ml100k")[0]


def test_rows_cover_every_cross_domain_strategy_once(cfg):
  """Each cross-domain strategy is a row or refused with the reason; text rows are their partner plus text."""
  assert sorted([*cfg.APPLICABLE, *cfg.NOT_APPLICABLE]) == sorted(CROSS_DOMAIN)
  assert sorted(cfg.NOT_APPLICABLE) == sorted(NEEDS_SHARED_USERS)
  rows = cfg.sweep("methods")
  assert [r.get("strategy_name") or "learners" for r in rows if "dataset.text_features" not in r] == [
    n for n in cfg.ROWS if not n.endswith("_text")
  ]
  by_name = dict(zip(cfg.ROWS, rows))
  for name in cfg.ROWS:
    if name.endswith("_text"):
      assert by_name[name] == {**by_name[name.removesuffix("_text")], "dataset.text_features": True}
  with pytest.raises(ValueError, match="'emcdr' does not apply to ml1m_to_ml100k: it maps user vectors"):
    cfg.strategy_kwargs("emcdr")
  with pytest.raises(ValueError, match="unknown sweep 'cmf\\+nope'"):
    cfg.sweep("cmf+nope")


def test_a_subset_sweep_reuses_the_full_sweeps_run_directories(cfg):
  full = dict(zip(cfg.ROWS, ablate.labels(cfg.sweep("methods"))))
  part = ablate.labels(cfg.sweep("learners+cmf+meta_source_text"))
  assert part == [full["learners"], full["cmf"], full["meta_source_text"]]
  assert all(len(ablate.run_dir(label)) < 255 for label in full.values())  # one path component each


def test_smoke_rows_shrink_every_stage(cfg):
  smoke = {r.get("strategy_name") or "learners": r for r in cfg.sweep("methods_smoke")}
  assert smoke["learners"]["num_steps"] == 10
  assert smoke["cmf"]["strategy"]["steps"] == 10 and smoke["meta_source"]["strategy"]["source_steps"] == 10
  assert cfg.sweep("methods")[cfg.ROWS.index("cmf")]["strategy"]["steps"] == 1000


def _run(label, overrides, melu, base):
  return {
    "label": label,
    "overrides": overrides,
    "results": {
      "learner": "melu",
      "metrics": {"cold_target": {"mae": {"per_seed": melu}}},
      "baselines": {"item_mean": {"cold_target": {"mae": {"per_seed": base}}}},
    },
  }


def test_text_pairs_pair_runs_by_their_other_overrides_and_difference_per_seed():
  a = _run("a", {"strategy_name": ""}, [0.80, 0.90], [1.0, 1.1])
  b = _run("b", {"strategy_name": "cmf"}, [0.70, 0.75], [1.0, 1.1])
  a_text = _run("a+t", {"strategy_name": "", "dataset.text_features": True}, [0.78, 0.95], [1.0, 1.1])
  pairs = text_pairs.text_pairs([a, b, a_text])
  assert [(p[0]["label"], p[1]["label"]) for p in pairs] == [("a", "a+t")]
  (rows,) = text_pairs.pair_tables(pairs, ["cold_target"], ["mae"]).values()
  assert [r.method for r in rows] == ["melu", "item_mean"]
  delta = rows[0].cells["Δ mae"]
  np.testing.assert_allclose(delta.per_seed, [0.78 - 0.80, 0.95 - 0.90])
  np.testing.assert_allclose(delta.mean, np.mean([-0.02, 0.05]))
  assert set(rows[1].cells) == {"mae"}  # a baseline: one cell
  with pytest.raises(ValueError, match="no run has the same overrides without it"):
    text_pairs.text_pairs([b, a_text])
  with pytest.raises(ValueError, match="nothing to pair"):
    text_pairs.text_pairs([a, b])
  moved = _run("a+t", {"strategy_name": "", "dataset.text_features": True}, [0.78, 0.95], [1.0, 1.2])
  with pytest.raises(ValueError, match="baseline 'item_mean' differs with text"):
    text_pairs.pair_tables(text_pairs.text_pairs([a, moved]), ["cold_target"], ["mae"])


def test_text_effects_pair_by_seed_with_the_standard_error_of_the_differences():
  """MAE improvements without - with per seed: [0.02, 0.03, 0.01] -> mean 0.02, SE = sd(ddof=1)/sqrt(3) = 0.01/sqrt(3)
  (z = 2*sqrt(3) > 2: helps); nDCG (higher is better) with - without; a method worse with text on every seed hurts."""
  off = _run("a", {"strategy_name": ""}, [0.80, 0.90, 0.85], [1.0, 1.1, 1.0])
  on = _run("a+t", {"strategy_name": "", "dataset.text_features": True}, [0.78, 0.87, 0.84], [1.0, 1.1, 1.0])
  for run, ndcg in ((off, [0.60, 0.70, 0.65]), (on, [0.58, 0.70, 0.66])):
    run["results"]["metrics"]["cold_target"]["ndcg@5"] = {"per_seed": ndcg}
    run["results"]["seeds"] = [0, 1, 2]
  (row,) = text_pairs.text_effects(text_pairs.text_pairs([off, on]), ["cold_target"], ["mae", "ndcg@5"])
  assert (row["label"], row["method"], row["verdict"]) == ("a", "melu", "helps")  # the baseline is not a row
  mae, ndcg = row["improvement"]["mae"], row["improvement"]["ndcg@5"]
  np.testing.assert_allclose([mae["mean"], mae["se"], mae["z"]], [0.02, 0.01 / np.sqrt(3), 2 * np.sqrt(3)], rtol=1e-9)
  d = np.array([-0.02, 0.0, 0.01])  # with - without
  np.testing.assert_allclose([ndcg["mean"], ndcg["se"]], [d.mean(), d.std(ddof=1) / np.sqrt(3)], rtol=1e-9)
  worse = _run("a+t", {"strategy_name": "", "dataset.text_features": True}, [0.81, 0.92, 0.86], [1.0, 1.1, 1.0])
  worse["results"]["seeds"] = [0, 1, 2]
  (row,) = text_pairs.text_effects(text_pairs.text_pairs([off, worse]), ["cold_target"], ["mae"])
  assert row["verdict"] == "hurts" and row["improvement"]["mae"]["mean"] < 0
  assert "| a | melu | cold_target | -0.0133 ± 0.0033 (-4.0) | hurts |" in text_pairs.effects_markdown([row], ["mae"])
  worse["results"]["seeds"] = [3, 4, 5]
  with pytest.raises(ValueError, match="has seeds \\[3, 4, 5\\], its partner without text \\[0, 1, 2\\]"):
    text_pairs.text_pairs([off, worse])


def test_text_pairs_main_writes_the_paired_table_and_the_verdicts(tmp_path):
  off = _run("a", {"strategy_name": ""}, [0.80, 0.90], [1.0, 1.1])
  on = _run("a+t", {"strategy_name": "", "dataset.text_features": True}, [0.79, 0.91], [1.0, 1.1])
  for run in (off, on):
    run["results"] |= {"dataset": "toy", "protocol": "p", "protocol_version": "1", "seeds": [0, 1]}
    run["results"]["baselines"]["popularity"] = {"cold_target": {"auc": {"per_seed": [0.6, 0.7]}}}  # a ranker: no MAE
  path = tmp_path / "ablate_toy_methods.json"
  path.write_text(json.dumps({"config": "toy", "sweep": "methods", "runs": [off, on]}))
  assert text_pairs.main([f"--ablate={path}", f"--out={tmp_path}", "--metrics=mae"]) == 0
  md = (tmp_path / "text_ablate_toy_methods.md").read_text()
  assert "| cold_target | melu | 0.850 ± 0.050 | 0.850 ± 0.060 | 0.000 ± 0.010 |" in md  # Δ: population std
  assert "| a | melu | cold_target | +0.0000 ± 0.0100 (+0.0) | no difference |" in md  # SE: sd(ddof=1)/sqrt(2)
  assert "| cold_target | popularity | - | - | - |" in md  # its MAE cells empty, not an error
  (effect,) = json.loads((tmp_path / "text_ablate_toy_methods.json").read_text())["effects"]
  assert effect["verdict"] == "no difference" and effect["improvement"]["mae"]["se"] == pytest.approx(0.01)


@pytest.fixture(scope="module")
def real():
  return minilm.load_minilm()


def test_item_text_on_two_domain_data_is_one_row_per_shared_item(real, tmp_path):
  """Users 0-1 in domain 'a', 2-3 in 'b'; item 1 ('Heat') is rated in both: one item, one embedding row, and the
  domains survive the added feature."""
  items = tm.FeatureTable(
    n=3,
    categorical={"year": np.array([1, 2, 0], np.int32)},
    text={"title": np.array(["Toy Story", "Heat", ""], dtype=object)},
    vocab={"year": (UNKNOWN, "1995", "1996")},
  )
  data = tm.Interactions(
    name="two-domain",
    user=np.array([0, 0, 1, 2, 3, 3], np.int32),
    item=np.array([0, 1, 1, 1, 2, 1], np.int32),
    rating=np.array([4, 5, 3, 1, 2, 4], np.float32),
    timestamp=np.arange(6, dtype=np.int64),
    user_features=tm.FeatureTable(n=4),
    item_features=items,
    user_raw_ids=np.arange(4).astype(object),
    item_raw_ids=np.arange(3).astype(object),
  )
  data = with_domains(data, (data.user >= 2).astype(np.int8), ("a", "b"))
  out = item_features.with_text_features(data, cache_dir=tmp_path, encoder=real, progress=False)
  emb = out.item_features.dense[item_features.FEATURE]
  assert emb.shape == (3, 384) and out.domains == ("a", "b")
  np.testing.assert_array_equal(out.domain, data.domain)
  alone = minilm.embed_texts(real, ["Toy Story", "Heat", ""], batch_size=1, progress=False)
  np.testing.assert_allclose(emb, alone, atol=1e-5)


def test_compare_leaves_a_baselines_missing_metric_empty_but_not_a_trained_methods():
  entry = lambda v: {"cold_target": {"mae": {"per_seed": v}}}  # noqa: E731
  results = {
    "learner": "melu",
    "metrics": entry([0.70, 0.71, 0.69]),
    "baselines": {"ref": entry([0.80, 0.80, 0.80]), "popularity": {"cold_target": {"auc": {"per_seed": [0.5] * 3}}}},
  }
  rows = ablate.compare_rows([{"label": "x", "results": results}], ["ref"], ["mae"])
  assert [r["method"] for r in rows] == ["melu", "popularity"] and rows[0]["beats_all"]
  assert rows[1]["values"] == {} and not rows[1]["beats_all"]  # a ranker's error cells are left empty
  results["metrics"] = {"cold_target": {"auc": {"per_seed": [0.6] * 3}}}
  with pytest.raises(ValueError, match="metric 'mae' is not reported"):
    ablate.compare_rows([{"label": "x", "results": results}], ["ref"], ["mae"])
