"""The ml1m_to_ml100k methods table (configs/cross_domain_ml1m_to_ml100k.py): its rows, the text pairs
(experiments/text_pairs.py) and item text on two-domain data. The refusal of EMCDR/PTUPCDR on user-disjoint
splits is tested in tests/test_cross_domain_methods.py; the config's smoke variant in tests/test_configs.py."""

from __future__ import annotations

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
