"""Late baselines (experiments/late_baselines.py): a reference scored on finished runs' splits equals what the
trainer reports for it, a changed split is refused, and a run's own baseline values are never replaced."""

from __future__ import annotations

import numpy as np
import pytest

import transfer_meta as tm
from experiments import late_baselines, runner
from transfer_meta import evaluate, results, train

SEEDS = 2
NAMES = ["source_item_support_offset", "item_user_offset"]


@pytest.fixture(scope="module")
def setup():
  config = runner.apply_overrides(
    runner.load_config("genre_split_ml100k:tiny"), {"seeds": SEEDS, "baselines": ("global_mean", *NAMES)}
  )
  data = tm.load_dataset(config.dataset_name, **config.dataset.to_dict())
  exp = train.build_experiment(config, data)  # the trainer's own splits and baseline path; nothing is trained
  reported = {n: evaluate.summarize(v) for n, v in results.run_baselines(exp).items()}
  hashes = [st.split.manifest["hash"] for st in exp.seeds]
  return config, data, reported, hashes


def test_late_values_equal_the_trainers_baselines_on_every_seed(setup):
  config, data, reported, hashes = setup
  got = late_baselines.late_values(config, NAMES, hashes, data, "run")
  for name in NAMES:
    assert got[name].keys() == reported[name].keys() == {"cold_target"}
    for metric, value in reported[name]["cold_target"].items():
      np.testing.assert_allclose(got[name]["cold_target"][metric]["per_seed"], value["per_seed"], rtol=1e-6)
  ours = got["source_item_support_offset"]["cold_target"]["mae"]["per_seed"]
  assert len(set(hashes)) == SEEDS and ours != got["item_user_offset"]["cold_target"]["mae"]["per_seed"]


def test_late_values_refuse_other_splits_and_unknown_names(setup):
  config, data, _, hashes = setup
  with pytest.raises(ValueError, match="seed 1: the rebuilt split's manifest hash .* is not the run's"):
    late_baselines.late_values(config, NAMES, [hashes[0], "0" * 16], data, "run")
  with pytest.raises(ValueError, match="1 manifest hashes for seeds \\[0, 1\\]"):
    late_baselines.late_values(config, NAMES, hashes[:1], data, "run")
  with pytest.raises(ValueError, match="late baselines \\['median'\\] are not baselines; valid: \\['random'"):
    late_baselines.late_values(config, ["median"], hashes, data, "run")
  ranked = runner.apply_overrides(config, {"eval_ranking": ("query", "catalogue")})
  with pytest.raises(ValueError, match="ranks beyond the query"):
    late_baselines.late_values(ranked, NAMES, hashes, data, "run")


def test_add_late_baselines_fills_only_what_a_run_lacks(setup):
  config, data, reported, hashes = setup
  own = {"cold_target": {"mae": {"mean": 9.0, "std": 0.0, "per_seed": [9.0, 9.0]}}}
  records = [
    {"label": "a", "results": {"manifest_hashes": hashes, "baselines": {"item_user_offset": own}}},
    {"label": "b", "results": {"manifest_hashes": hashes, "baselines": dict(reported)}},
  ]
  cache = {late_baselines.data_key(config): data}
  late_baselines.add_late_baselines(records, [config, config], NAMES, cache)
  a, b = records
  assert a["late_baselines"] == ["source_item_support_offset"] and "late_baselines" not in b
  assert a["results"]["baselines"]["item_user_offset"] is own  # the run's own values are kept
  want = reported["source_item_support_offset"]["cold_target"]["mae"]["per_seed"]
  got = a["results"]["baselines"]["source_item_support_offset"]["cold_target"]["mae"]["per_seed"]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert b["results"]["baselines"] == reported
