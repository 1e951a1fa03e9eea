"""The peers' table (configs/peers_ml100k.py through experiments/strategies.py): its grid of runs, learner rows,
throughput column, the peer's reference rows and the 'beats the baseline' notes."""

from __future__ import annotations

import inspect
import math

import ml_collections
import pytest

from experiments import runner
from experiments import strategies as table
from transfer_meta import report
from transfer_meta import results as results_lib
from transfer_meta.learners import LEARNERS
from transfer_meta.models import MODELS
from transfer_meta.strategies import STRATEGIES

NAMES = ["maml_family", "lwa", "nlba", "lwa+item_bias", "nlba+item_bias", "mamo", "tanp", "metaemb", "mwuf"]
AMORTISED = {"lwa", "nlba", "lwa+item_bias", "nlba+item_bias"}


def test_grid_has_both_settings_and_one_learner_row_per_amortised_model():
  cells = table.grid("peers_ml100k", ["rating", "click"], {"seeds": 2})
  assert [(p, n) for p, n, _ in cells] == [(p, n) for p in ("rating", "click") for n in NAMES]
  for protocol, name, c in cells:
    assert c.is_locked and c.seeds == 2 and c.protocol_name == "recbole_metarec" and c.protocol.setting == protocol
    loss = "mse" if protocol == "rating" else "bce"
    assert c.select_metric == ("valid/ndcg_bin@5" if protocol == "rating" else "valid/auc")
    if name == "maml_family":
      assert (c.model_name, c.learner_name, c.learner.loss) == ("melu", "melu", loss)
      assert set(c.compare_learners) == {"maml", "fomaml", "meta_sgd", "reptile", "none", "finetune", "head_only"}
      assert all(c.compare_kwargs[n].loss == loss for n in c.compare_learners if n in c.compare_kwargs)
    elif name in AMORTISED:
      assert (c.model_name, c.learner_name, c.learner.loss, tuple(c.compare_learners)) == (
        name.split("+")[0],
        "none",
        loss,
        (),
      )
      assert c.model.positive_threshold == (4.0 if protocol == "rating" else 0.5)
      assert c.model.get("item_bias", False) == name.endswith("+item_bias")
    elif name in ("mamo", "tanp"):  # a learner row: its own learner (TaNP also its model), no comparisons
      assert (c.learner_name, c.learner.loss, tuple(c.compare_learners)) == (name, loss, ())
      assert c.model_name == ("tanp" if name == "tanp" else "melu")
      if name == "tanp":
        assert c.model.get("global_bias", 3.5) == (3.5 if protocol == "rating" else 0.0)  # factory default 3.5
    else:  # MetaEmb / MWUF: a strategy row on the user side
      assert (c.strategy_name, c.strategy.loss, c.learner_name, tuple(c.compare_learners)) == (name, loss, "none", ())
  smoke = table.grid("peers_ml100k", ["click"], {}, smoke=True)
  assert all(c.num_steps == 20 and c.seeds == 2 for _, _, c in smoke)


def per_seed(*values) -> dict:
  return {"per_seed": list(values)}


def fake_run(learner: str, comparisons: dict, speed: dict, value: float) -> dict:
  test = lambda v: {"test": {"auc": per_seed(v, v + 0.01), "auc/tasks": per_seed(50, 51)}}  # noqa: E731
  return {
    "learner": learner,
    "metrics": test(value),
    "comparisons": {m: test(v) for m, v in comparisons.items()},
    "baselines": {
      "item_user_offset": test(0.70),
      "constant": {"test": {"auc": per_seed(0.5, 0.5)}},
      "random": {"test": {"auc": per_seed(0.49, 0.52)}},
    },
    "train": {"learners": {n: {"tasks_per_second": s} for n, s in speed.items()}},
  }


def test_learner_rows_throughput_references_and_verdicts():
  runs = [
    ("maml_family", fake_run("melu", {"none": 0.80}, {"melu": 100.0, "none": 400.0}, 0.60)),
    ("lwa", fake_run("none", {}, {"none": 900.0}, 0.75)),
  ]
  values = table.table_values(runs)
  assert list(values) == ["melu", "none", "lwa", "item_user_offset", "constant", "random"]
  assert values["lwa"]["test"] == {"auc": [0.75, 0.76]}  # the run's learner, renamed; counts are not columns
  assert values["none"]["test"]["auc"] == [0.80, 0.81]  # the first run's `none`, not lwa's
  speeds = table.throughput(runs)
  assert speeds == {"melu": 100.0, "none": 400.0, "lwa": 900.0}
  rows = table.with_throughput(report.summarize(values), speeds)
  cells = {r.method: r.cells for r in rows}
  assert cells["lwa"][table.THROUGHPUT].mean == 900.0 and math.isnan(cells["lwa"][table.THROUGHPUT].std)
  assert table.THROUGHPUT not in cells["constant"]
  notes = table.verdicts(values, list(speeds), ["auc"])
  # none (+0.10 every seed) and lwa (+0.05) beat item_user_offset; melu (-0.10) does not; the paired differences
  # have zero spread, so a constant improvement is a win (z = inf).
  assert notes[0] == "test/auc: beat item_user_offset by > 2 SE (paired over seeds): none, lwa."
  assert notes[1] == "test/auc: beat constant by > 2 SE (paired over seeds): melu, none, lwa."
  assert notes[2].startswith("test/auc: beat random by > 2 SE")


def test_a_tie_with_the_baseline_is_no_win():
  runs = [("maml_family", fake_run("melu", {}, {"melu": 1.0}, 0.70))]
  assert table.verdicts(table.table_values(runs), ["melu"], ["auc"])[0].endswith(": nothing.")


def test_reference_rows_are_the_peers_figures_as_given():
  module, _ = runner.config_module("peers_ml100k")
  rows = {r.method: r for r in table.reference_rows(module, "rating")}
  fomelu = rows["FOMeLU (peer's code, measured)"].cells["ndcg_bin@5:index"]
  assert (fomelu.mean, fomelu.std) == (0.500, 0.024)
  assert report.format_stat(rows["random (peer's code, measured)"].cells["ndcg_bin@5:index"]) == "0.500"
  assert report.format_stat(rows["TaNP (peer's code, measured: NaN from step 3)"].cells["ndcg_bin@5:index"]) == "nan"
  assert table.reference_rows(module, "click") == []


def test_bad_arg_and_duplicate_rows_fail_clearly():
  module, _ = runner.config_module("peers_ml100k")
  with pytest.raises(ValueError, match="unknown config arg"):
    module.get_config("clicks")

  class Duplicated:
    @staticmethod
    def table_rows(protocol):
      return [("a", {}), ("a", {"num_steps": 3})]

  with pytest.raises(ValueError, match="distinct names"):
    table.entries(Duplicated, "dup", "rating")


def test_ml1m_table_is_the_ml100k_table_on_ml1m():
  """configs/peers_ml1m.py: every row and setting of peers_ml100k, only the data, the evaluation batch and the
  validation interval changed (smoke: only the data and the batch); no reference rows (the peer has none on ML-1M)."""
  for smoke in (False, True):
    small = table.grid("peers_ml100k", ["rating", "click"], {"seeds": 2}, smoke=smoke)
    large = table.grid("peers_ml1m", ["rating", "click"], {"seeds": 2}, smoke=smoke)
    assert [(p, n) for p, n, _ in large] == [(p, n) for p, n, _ in small]
    for (_, _, a), (_, _, b) in zip(small, large):
      assert (a.dataset_name, b.dataset_name, b.eval_batch_size) == ("ml-100k", "ml-1m", 128)
      assert b.eval_every == (10 if smoke else 25) and a.eval_every == 10
      changed = {k for k in a.to_dict() if a.to_dict()[k] != b.to_dict()[k]}
      assert changed == ({"dataset_name", "eval_batch_size"} | (set() if smoke else {"eval_every"}))
  module, _ = runner.config_module("peers_ml1m")
  assert table.reference_rows(module, "rating") == [] and module.VERDICT_METRICS["click"][0] == "auc"
  with pytest.raises(ValueError, match="unknown config arg"):
    module.get_config("clicks")


# Per setting, what every trained row of the peers' tables must resolve to: the loss, the initial output bias (a
# mean rating, or a logit of 0 on clicks), LWA/NLBA's class threshold and the target range a model's
# (y - rating_center) / rating_scale maps onto [-1, 1].
EXPECTED = {
  "rating": dict(loss="mse", global_bias=3.5, positive_threshold=4.0, target_range=(1.0, 5.0)),
  "click": dict(loss="bce", global_bias=0.0, positive_threshold=0.5, target_range=(0.0, 1.0)),
}


def resolved(factory, given: dict) -> dict:
  """The keywords `factory` runs with: its signature's defaults, overridden by `given`."""
  defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items() if p.default is not p.empty}
  return defaults | dict(given)


def setting_mismatches(what: str, kwargs: dict, setting: str) -> list[str]:
  """The keywords of `kwargs` (a factory's resolved keywords) that contradict `EXPECTED[setting]`."""
  want, bad = EXPECTED[setting], []
  for key in ("loss", "global_bias", "positive_threshold"):
    if key in kwargs and kwargs[key] != want[key]:
      bad.append(f"{what}: {key}={kwargs[key]!r}, want {want[key]!r}")
  if "rating_center" in kwargs:
    lo, hi = want["target_range"]
    scaled = [(y - kwargs["rating_center"]) / kwargs["rating_scale"] for y in (lo, hi)]
    if scaled != [-1.0, 1.0]:
      bad.append(f"{what}: targets {lo}..{hi} enter as {scaled}, want [-1, 1]")
  return bad


def row_mismatches(cell) -> list[str]:
  """Every factory a row of the table trains (its strategy, or its model, learner and comparisons), resolved."""
  setting = cell.protocol.setting
  if cell.strategy_name:  # the run's learner (`none`) is dropped from the table: only the strategy is a row
    return setting_mismatches(f"strategy {cell.strategy_name}", resolved(STRATEGIES[cell.strategy_name],
                              cell.strategy.to_dict()), setting)  # fmt: skip
  bad = setting_mismatches(f"model {cell.model_name}", resolved(MODELS[cell.model_name], cell.model), setting)
  learners = {cell.learner_name: cell.learner, **{n: cell.compare_kwargs.get(n, {}) for n in cell.compare_learners}}
  for name, kwargs in learners.items():
    bad += setting_mismatches(f"learner {name}", resolved(LEARNERS[name], dict(kwargs)), setting)
  return bad


@pytest.mark.parametrize("config", ["peers_ml100k", "peers_ml1m"])
def test_every_row_resolves_to_its_settings_loss_bias_threshold_and_scale(config):
  """Fails on the click rows that start MetaEmb's / MWUF's MF at the rating default global_bias=3.5 (a logit of
  3.5: every click predicted at p = 0.97) or that fit a click with MSE."""
  cells = table.grid(config, ["rating", "click"], {})
  bad = {(p, n): row_mismatches(c) for p, n, c in cells}
  assert {k: v for k, v in bad.items() if v} == {}
  for p, _, c in cells:
    assert c.select_metric == ("valid/ndcg_bin@5" if p == "rating" else "valid/auc")
  strategies = {(p, c.strategy_name): resolved(STRATEGIES[c.strategy_name], c.strategy) for p, _, c in cells if
                c.strategy_name}  # fmt: skip
  assert {k: (v["global_bias"], v["loss"]) for k, v in strategies.items()} == {
    ("rating", "metaemb"): (3.5, "mse"), ("rating", "mwuf"): (3.5, "mse"),
    ("click", "metaemb"): (0.0, "bce"), ("click", "mwuf"): (0.0, "bce"),
  }  # fmt: skip


def test_setting_check_names_each_mistake():
  assert setting_mismatches("s", {"loss": "mse", "global_bias": 3.5, "other": 1}, "click") == [
    "s: loss='mse', want 'bce'",
    "s: global_bias=3.5, want 0.0",
  ]
  assert setting_mismatches("m", {"rating_center": 3.0, "rating_scale": 2.0}, "click") == [
    "m: targets 0.0..1.0 enter as [-1.5, -1.0], want [-1, 1]"
  ]
  assert setting_mismatches("m", {"rating_center": 3.0, "rating_scale": 2.0, "positive_threshold": 4.0}, "rating") == []


def stage(name, stream, steps, batch_size):
  return {"name": name, "stream": stream, "steps": steps, "batch_size": batch_size}


def strategy_run(name, stages, seconds, seeds=5, recorded=1.71):
  """A strategy run's results.json as written before the per-stage count: its run's learner (`none`, 1 step)
  and the strategy, whose recorded tasks/s came from the config's 1 step x 32 tasks x 5 seeds."""
  run = fake_run("none", {name: 0.7}, {"none": 156.8, name: recorded}, 0.6)
  run["train"]["learners"][name]["seconds"] = seconds
  return run | {"seeds": list(range(seeds)), "strategy": {"name": name, "stages": stages}}


def test_strategy_throughput_is_its_task_stages_tasks_over_all_its_training_seconds():
  """The item warm-up table's MWUF row: 1,500 pretraining steps of 256 interactions (no task) then 300 meta-steps
  of 32 tasks, 5 seeds, 93.462 s in all: 48,000 tasks / 93.462 s, not the 1.71 its run recorded (1 x 32 x 5)."""
  mwuf = [stage("pretrain", "interactions", 1500, 256), stage("meta", "tasks", 300, 32)]
  only_pretrain = [stage("pretrain", "interactions", 100, 256)]
  runs = [
    ("maml_family", fake_run("melu", {"none": 0.8}, {"melu": 100.0, "none": 400.0}, 0.6)),
    ("mwuf", strategy_run("mwuf", mwuf, 93.462)),
    ("pretrain", strategy_run("pretrain", only_pretrain, 10.0)),
  ]
  speeds = table.throughput(runs)
  assert speeds["mwuf"] == pytest.approx(300 * 32 * 5 / 93.462, abs=0.01) and round(speeds["mwuf"]) == 514
  assert speeds["pretrain"] is None and (speeds["melu"], speeds["none"]) == (100.0, 400.0)  # no task: no figure
  values = table.table_values(runs)
  rows = table.with_throughput(report.summarize(values), speeds)
  cells = {r.method: r.cells for r in rows if r.scenario == "test"}
  assert cells["mwuf"][table.THROUGHPUT].mean == speeds["mwuf"] and table.THROUGHPUT not in cells["pretrain"]
  assert "pretrain" in table.verdicts(values, list(speeds), ["auc"])[1]  # still a trained row of the verdicts
  # A first run that is a strategy (the item warm-up table's MetaEmb run): its row is recounted too.
  first = table.throughput([("metaemb", strategy_run("metaemb", mwuf, 57.371, recorded=836.66))])
  assert first == {"none": 156.8, "metaemb": pytest.approx(48000 / 57.371, abs=0.01)}


class Seconds:
  """The one field of `train.Trained` that `results.throughput` reads."""

  def __init__(self, seconds: float):
    self.seconds = seconds


def test_results_throughput_counts_learners_by_meta_steps_and_strategies_by_stage():
  config = ml_collections.ConfigDict(dict(num_steps=3, batch_size=4))
  trained = {"melu": Seconds(2.0), "metaemb": Seconds(8.0), "pretrain": Seconds(1.0)}
  stages = {
    "metaemb": [stage("pretrain", "interactions", 50, 256), stage("meta", "tasks", 10, 4)],
    "pretrain": [stage("pretrain", "interactions", 50, 256)],
  }
  assert results_lib.throughput(config, 2, trained, stages) == {
    "melu": {"seconds": 2.0, "tasks": 3 * 4 * 2, "tasks_per_second": 12.0},
    "metaemb": {"seconds": 8.0, "tasks": 10 * 4 * 2, "tasks_per_second": 10.0},
    "pretrain": {"seconds": 1.0, "tasks": 0, "tasks_per_second": None},
  }
  source = [stage("source", "source_tasks", 5, 2), stage("target", "tasks", 5, 2)]
  assert results_lib.stage_tasks(source, 3) == (5 * 2 + 5 * 2) * 3
  with pytest.raises(ValueError, match="batch_size >= 1"):
    results_lib.stage_tasks([stage("meta", "tasks", 3, 0)], 1)
