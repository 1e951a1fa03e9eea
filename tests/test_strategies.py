"""Stages and strategies: every registered strategy end to end on the synthetic data (no per-strategy code), the
maths (a frozen mask leaves those leaves bitwise unchanged; the ridge head equals numpy's ridge solution; the
distillation loss equals a hand computation), the data streams, and a SIGKILL mid-stage followed by a resume that
is bit-identical to an uninterrupted run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from forkrun import TRAINING_PRELOAD, ForkServer
from jax.flatten_util import ravel_pytree
from test_resume import _run, _run_and_kill_when
from xla_flags import xla_flags

from transfer_meta import learner_reuse, runlog, stages, step, train
from transfer_meta.checkpoint import COMMIT_MARKER
from transfer_meta.data.streams import InteractionIterator, SampledPairIterator, training_rows
from transfer_meta.learners import inner
from transfer_meta.learners.ridge import ridge_head
from transfer_meta.models.base import Model, adapt_mask
from transfer_meta.strategies import CROSS_DOMAIN, STRATEGIES, get_strategy
from transfer_meta.strategies.distill import distill_objective
from transfer_meta.strategies.fusion import fit_coef, fit_gate, gate_weight
from transfer_meta.strategies.soup import soup_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/strategies_synthetic.py:tiny"  # pretrain 6 steps -> meta 4 steps, checkpoints every 2
COMMON = dict(batch_size=64)  # keywords every strategy takes (stage steps default to config.num_steps)
# The SIGKILL test's four `transfer_meta.main` launches and the 8-device script run in forks of one interpreter that
# has imported jax, the library and matplotlib (tests/forkrun.py): one import (~2 CPU-s) instead of five. A fork
# creates its XLA backend after the fork, so the 8-device script's XLA_FLAGS (set per command) give it 8 devices.
SERVER = ForkServer(ROOT, preload=TRAINING_PRELOAD)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def load_config(arg: str | None = "tiny") -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(
    "cfg_strategies", os.path.join(ROOT, "configs", "strategies_synthetic.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def exp():
  return train.build_experiment(load_config())


def _example(exp) -> dict:
  first = exp.seeds[0].tasks["train"].batch(np.arange(1))
  return {"support": step.unstack(first["support"], 0), "query": step.unstack(first["query"], 0)}


def _cross_domain_config(name: str) -> ml_collections.ConfigDict:
  """configs/cross_domain_synthetic.py:<name>,tiny (a genre split of the synthetic data), one seed."""
  spec = importlib.util.spec_from_file_location("cfg_cd", os.path.join(ROOT, "configs", "cross_domain_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"{name},tiny")
  config.unlock()
  return config


# The table-row run of each family (cross-domain or not) that trains the `none` learner; every other strategy's run
# of that family copies it (`learner_reuse`: the same config but for the strategy, so the same training), as a
# sweep of strategies (`experiments.strategies`, `experiments.ablate`) does. REUSED_CHECK is trained again afresh
# by test_a_reused_learner_gives_the_results_of_training_it_again.
DONORS = {False: "pretrain_finetune", True: "mmd"}
REUSED_CHECK = "pretrain_frozen_head"


def _table_config(name: str) -> tuple[ml_collections.ConfigDict, dict]:
  """The one-seed config of strategy `name`'s table-row run and its strategy keywords. It checkpoints each stage
  at its end only (the SIGKILL test below resumes from the checkpoints in between), and only the donors write
  the plots (every run's results have the same layout; a plot of each family is drawn)."""
  cross = name in CROSS_DOMAIN  # cross-domain strategies need a cross-domain split: their own smoke config
  config = _cross_domain_config(name) if cross else load_config()
  config.strategy_name = name
  kwargs = config.strategy.to_dict() if cross else COMMON
  config.strategy = kwargs
  config.seeds = 1
  config.checkpoint_every = 1000
  config.plots = name == DONORS[cross]
  return config, kwargs


class TableRuns:
  """Each strategy's table-row run, made once per module on first use, under `root`/<name>."""

  def __init__(self, root: str):
    self.root, self.done = root, {}

  def get(self, name: str) -> tuple[str, dict, train.Experiment, dict]:
    """(workdir, results, the run's experiment, strategy keywords) of strategy `name`'s run."""
    if name not in self.done:
      donor = DONORS[name in CROSS_DOMAIN]
      reuse = [] if name == donor else [self.get(donor)[0]]
      config, kwargs = _table_config(name)
      built = train.build_experiment(config)
      workdir = os.path.join(self.root, name)
      results = train.train_and_evaluate(config, workdir, data=built.data, reuse_from=reuse)
      self.done[name] = (workdir, results, built, kwargs)
    return self.done[name]


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> TableRuns:
  return TableRuns(str(tmp_path_factory.mktemp("table_runs")))


def _none_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["learner"] == "none"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_trains_and_is_a_table_row(name, table_runs):
  cross = name in CROSS_DOMAIN
  workdir, results, built, kwargs = table_runs.get(name)
  config = built.config
  strategy = get_strategy(name, built.model, config, built.spec, exp=built, **kwargs)
  assert results["strategy"]["name"] == name and results["strategy"]["learner"] == strategy.learner.name
  assert [s["name"] for s in results["strategy"]["stages"]] == [s.name for s in strategy.stages]
  fitted = {"fit"} if strategy.fit is not None else set()
  assert set(results["train"]["stage_seconds"]) == {s.name for s in strategy.stages} | fitted
  # Throughput: the tasks of its task-batch stages (none for interaction-only strategies) over all its seconds.
  speed = results["train"]["learners"][name]
  tasks = sum(s.steps * s.batch_size for s in strategy.stages if s.stream in ("tasks", "source_tasks"))  # 1 seed
  assert speed["tasks"] == tasks and speed["seconds"] == pytest.approx(sum(results["train"]["stage_seconds"].values()))
  assert speed["tasks_per_second"] == (round(tasks / speed["seconds"], 2) if tasks else None)
  if strategy.describe is not None:  # e.g. distill's parameter counts, fusion's fitted coefficients
    assert isinstance(results["strategy"]["describe"], dict) and results["strategy"]["describe"]
  row = results["comparisons"][name]
  assert set(row) == set(results["metrics"])  # valid and every scenario, like the learner
  for scenario in row.values():
    assert all(np.isfinite(v["mean"]) for v in scenario.values())
  assert results["selection"]["best_step"][name][0] > 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if json.loads(line)["learner"] == name]
  assert sorted({r["stage"] for r in records}) == sorted(s.name for s in strategy.stages)
  assert [r["step"] for r in records] == list(range(1, sum(s.steps for s in strategy.stages) + 1))
  for k, s in enumerate(strategy.stages):
    assert str(s.steps) in os.listdir(os.path.join(workdir, "checkpoints", name, f"{k}_{s.name}"))
  with open(os.path.join(workdir, "results.md")) as f:
    scenario = "cold_target" if cross else "new_user"
    assert f"| {scenario} | {name} |" in f.read()
  # The `none` row: trained by the family's donor run, copied by the others with its metrics.jsonl records.
  donor = DONORS[cross]
  keys = learner_reuse.recorded_keys(workdir)
  kept = os.listdir(os.path.join(workdir, "checkpoints", "none"))
  assert set(keys) == {"none"} and str(config.num_steps) in kept
  pngs = sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
  metrics = {re.sub(r"[^0-9A-Za-z_.-]", "_", m) for per in results["metrics"].values() for m in per if "/" not in m}
  assert pngs == (sorted(["curves.png", *(f"scenarios_{m}.png" for m in metrics)]) if config.plots else [])
  if name == donor:
    assert "reused" not in results["train"]
  else:
    assert kept == [str(config.num_steps)]  # only the donor's last step was copied
    donor_dir, donor_results = table_runs.get(donor)[:2]
    assert results["train"]["reused"] == {"none": donor_dir} and keys == learner_reuse.recorded_keys(donor_dir)
    assert results["metrics"] == donor_results["metrics"] and _none_records(workdir) == _none_records(donor_dir)
    assert results["selection"]["best_step"]["none"] == donor_results["selection"]["best_step"]["none"]
  # `none`'s evaluation: computed by the donor, copied by the others (recorded again under the same key).
  evals = learner_reuse.recorded_evaluations(workdir)
  assert set(evals) == {"none"} and evals["none"]["key"] == keys["none"]
  assert evals == learner_reuse.recorded_evaluations(table_runs.get(donor)[0])
  (seed0,) = evals["none"]["evaluated"]  # one seed: the values results.json reports for `none`
  assert set(seed0) == set(results["metrics"])
  for scenario, per in results["metrics"].items():
    assert per and all(v["per_seed"] == [seed0[scenario][m]] for m, v in per.items()), scenario


def test_a_reused_learner_gives_the_results_of_training_it_again(table_runs, tmp_path):
  """REUSED_CHECK's table run copied `none` from another strategy's run; trained afresh, every file is the same."""
  reused_dir, reused = table_runs.get(REUSED_CHECK)[:2]
  assert reused["train"]["reused"] == {"none": table_runs.get(DONORS[False])[0]}
  config, _ = _table_config(REUSED_CHECK)
  fresh = train.train_and_evaluate(config, str(tmp_path), data=table_runs.get(REUSED_CHECK)[2].data)
  assert "reused" not in fresh["train"] and not os.path.exists(tmp_path / learner_reuse.KEYS_FILE)
  assert not os.path.exists(tmp_path / learner_reuse.EVALS_FILE)
  assert {k: v for k, v in fresh.items() if k != "train"} == {k: v for k, v in reused.items() if k != "train"}
  for name in ("results.md", "metrics.jsonl", "split_manifest.json", "config.json"):
    assert _read(str(tmp_path), name) == _read(reused_dir, name), name
  assert fresh["train"]["steps"] == reused["train"]["steps"]


def test_learner_key_changes_with_what_training_reads_only(exp):
  fingerprint = learner_reuse.data_fingerprint(exp.data)
  base = learner_reuse.learner_key(exp, "none", {}, fingerprint)

  def key(name: str = "none", kwargs: dict | None = None, data=None, **fields) -> str:
    config = exp.config.copy_and_resolve_references()
    config.unlock()
    for field, value in fields.items():
      config[field] = value
    changed = dataclasses.replace(exp, config=config, data=exp.data if data is None else data)
    return learner_reuse.learner_key(changed, name, kwargs or {}, learner_reuse.data_fingerprint(changed.data))

  assert key() == base
  free = [
    dict(strategy_name="soup", strategy={"n_copies": 2}),
    dict(learner_name="maml", learner={"inner_steps": 3}, compare_learners=("fomaml", "none")),
    dict(baselines=("random",), progress=True),
  ]
  for fields in free:  # REUSE_FREE: the strategy, which learners run, the baselines, the progress bar
    assert key(**fields) == base, fields
  for fields in (dict(num_steps=5), dict(batch_size=16), dict(optimizer={"learning_rate": 0.5}), dict(residual="x")):
    assert key(**fields) != base, fields
  assert key("maml") != base and key(kwargs={"inner_lr": 0.1}) != base
  rating = exp.data.rating.copy()
  rating[0] = 5.0 if rating[0] != 5.0 else 1.0
  raw = exp.data.user_raw_ids.copy()
  raw[0] = f"renamed {raw[0]}"
  for data in (dataclasses.replace(exp.data, rating=rating), dataclasses.replace(exp.data, user_raw_ids=raw)):
    assert learner_reuse.data_fingerprint(data) != fingerprint and key(data=data) != base


def test_take_copies_only_a_committed_last_step_recorded_under_the_same_key(tmp_path, caplog):
  donor, run = tmp_path / "donor", tmp_path / "run"
  last = donor / "checkpoints" / "none" / "4"
  (last / "meta_params").mkdir(parents=True)
  (last / "meta_params" / "data").write_bytes(b"params of step 4")
  (donor / "checkpoints" / "none" / "2").mkdir()  # an earlier step: not copied
  records = [{"learner": "none", "step": s, "train/loss": 0.5 / s} for s in (1, 2, 3, 4)]
  lines = [json.dumps(r) for r in [records[0], {"learner": "maml", "step": 1}, *records[1:]]]
  (donor / "metrics.jsonl").write_text("\n".join(lines) + '\n{"learner": "none", "st')  # + a torn line
  learner_reuse.record(str(donor), "none", "key-a")
  assert learner_reuse.recorded_keys(str(donor)) == {"none": "key-a"} and learner_reuse.recorded_keys(str(run)) == {}
  run.mkdir()
  mlog = runlog.MetricsLog(str(run / "metrics.jsonl"), ["none"])
  take = lambda key, steps=4: learner_reuse.take("none", key, steps, str(run), [str(run), str(donor)], mlog)
  assert take("key-b") is None  # another key: another training
  assert take("key-a", steps=6) is None  # the donor stopped before this run's last step
  assert take("key-a") is None and "no committed step 4" in caplog.text  # its step 4 lacks the commit marker
  assert not os.path.exists(run / "checkpoints") and not os.path.exists(run / "metrics.jsonl")
  (last / COMMIT_MARKER).write_text("")
  assert take("key-a") == str(donor)
  assert os.listdir(run / "checkpoints" / "none") == ["4"]
  assert (run / "checkpoints" / "none" / "4" / "meta_params" / "data").read_bytes() == b"params of step 4"
  assert [json.loads(line) for line in open(run / "metrics.jsonl")] == records
  assert take("key-a") is None  # the run holds the learner's checkpoints now: it resumes, nothing is copied again
  off = learner_reuse.Reuse(None, str(run), None, mlog)  # reuse_from=None: inert
  assert off.take("none", {}) is None and off.results_entry() == {}
  off.record("none", {})
  assert not os.path.exists(run / learner_reuse.KEYS_FILE)


def test_a_donors_recorded_evaluation_is_copied_only_under_the_same_key(exp, tmp_path):
  """`Reuse.take` hands on the donor's recorded evaluation of the learner it copies when the keys match (what
  train_and_evaluate then uses instead of evaluating); a value a JSON round trip would change is never recorded."""
  donor, run = tmp_path / "donor", tmp_path / "run"
  last = donor / "checkpoints" / "none" / str(exp.config.num_steps)
  last.mkdir(parents=True)
  (last / COMMIT_MARKER).write_text("")
  (donor / "metrics.jsonl").write_text("")
  run.mkdir()
  mlog = runlog.MetricsLog(str(run / "metrics.jsonl"), ["none"])
  key = learner_reuse.Reuse(exp, str(run), [], mlog).key("none", {})
  learner_reuse.record(str(donor), "none", key)
  evaluated = [{"valid": {"mae": 0.75, "ndcg@3": 0.5}, "new_user": {"mae": 0.875, "auc/tasks": 3.0}}]
  for bad in ([{"valid": {"mae": np.float32(0.75)}}], [{"valid": {"mae": (0.75,)}}], [{"valid": {1: 0.75}}]):
    assert not learner_reuse.json_exact(bad) and not learner_reuse.record_evaluation(str(donor), "none", key, bad)
  assert not os.path.exists(donor / learner_reuse.EVALS_FILE)
  for recorded_key, want in ((f"not {key}", None), (key, evaluated)):
    assert learner_reuse.record_evaluation(str(donor), "none", recorded_key, evaluated)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    reuse = learner_reuse.Reuse(exp, str(run), [str(donor)], mlog)
    assert reuse.take("none", {}) == str(donor) and reuse.evaluation("none") == want
  reuse.record_evaluation("none", {}, evaluated)
  assert learner_reuse.recorded_evaluations(str(run)) == {"none": {"key": key, "evaluated": evaluated}}
  copied = learner_reuse.recorded_evaluations(str(run))["none"]["evaluated"][0]
  assert [list(v) for v in copied.values()] == [list(v) for v in evaluated[0].values()]  # order kept: the tables'
  off = learner_reuse.Reuse(None, str(tmp_path / "off"), None, mlog)  # reuse_from=None: nothing read or written
  off.record_evaluation("none", {}, evaluated)
  assert off.evaluation("none") is None and not os.path.exists(tmp_path / "off")


def test_frozen_leaves_are_bitwise_unchanged_and_the_others_move(exp):
  """Adam (whose moments would move every leaf) through `freeze`: leaves outside the regex keep their bits."""
  model = exp.model
  params = model.init(jax.random.key(0), _example(exp)["query"], None)
  regex = "decision_"
  mask = adapt_mask(params, regex)
  tx = stages.freeze(optax.adam(0.05), params, regex)
  grad_fn = stages.objective_grad(stages.supervised_objective(model))
  one = step.step_fn(grad_fn, tx)
  state = {"meta_params": jax.tree.map(lambda x: x[None], params), "step": np.int32(0)}
  state["opt_state"] = jax.vmap(tx.init)(state["meta_params"])
  it = InteractionIterator.from_split(exp.data, exp.seeds[0].split, exp.feats, 64, 0)
  keys = jax.random.key(0)[None]
  run = jax.jit(one)
  for _ in range(3):
    state, metrics = run(state, jax.tree.map(lambda x: x[None], next(it)), keys)
    assert np.isfinite(metrics["loss"][0]) and metrics["grad_norm"][0] > 0
  new = step.unstack(state["meta_params"], 0)
  moved = jax.tree.map(lambda m, a, b: (m, bool(np.array_equal(np.asarray(a), np.asarray(b)))), mask, params, new)
  flags = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
  assert any(not m for m, _ in flags) and any(m for m, _ in flags)
  for trainable, same in flags:
    assert same != trainable  # frozen: bitwise equal; trainable: changed
  for a, b, m in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(mask)):
    if not m:
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_freeze_and_strategy_checks_fail_clearly(exp):
  params = exp.model.init(jax.random.key(0), _example(exp)["query"], None)
  with pytest.raises(ValueError, match="matches no parameter"):
    stages.freeze(optax.sgd(0.1), params, "no_such_layer")
  assert stages.freeze(tx := optax.sgd(0.1), params, ".*") is tx
  with pytest.raises(ValueError, match="valid strategys.*pretrain_finetune"):
    get_strategy("pretrain_finetun", exp.model, exp.config, exp.spec)
  good = get_strategy("pretrain_finetune", exp.model, exp.config, exp.spec, meta_steps=2)
  with pytest.raises(ValueError, match="distinct names"):
    stages.check_strategy(good._replace(stages=(good.stages[0], good.stages[0])))
  with pytest.raises(ValueError, match="unknown stream 'pairs'; valid streams"):
    stages.check_strategy(good._replace(stages=(good.stages[0]._replace(stream="pairs"),)))
  with pytest.raises(ValueError, match="steps=0"):
    stages.check_strategy(good._replace(stages=(good.stages[0]._replace(steps=0),)))


def test_ridge_head_equals_numpy_ridge_on_the_head_design_matrix(exp):
  model = exp.model
  params = model.init(jax.random.key(3), _example(exp)["query"], None)
  batch = exp.seeds[0].tasks["train"].batch(np.arange(2))
  support = step.unstack(batch["support"], 1)
  l2 = 0.5
  adapted = jax.jit(ridge_head(model, l2=l2).adapt)(params, support, jax.random.key(0))
  # Independent: the head's design matrix column by column (score change per unit head parameter), then numpy.
  mask = adapt_mask(params, model.head_regex)
  head, frozen = inner.partition(params, mask)
  theta0, unravel = ravel_pytree(head)
  score = jax.jit(lambda th: model.apply(inner.combine(unravel(th), frozen, mask), support, support))
  f0 = np.asarray(score(theta0), np.float64)
  eye = np.eye(theta0.shape[0], dtype=np.float32)
  design = np.stack([np.asarray(score(theta0 + eye[j]), np.float64) - f0 for j in range(theta0.shape[0])], axis=1)
  m = np.asarray(support["mask"], np.float64)
  y = np.asarray(support["target"], np.float64)
  lhs = design.T @ (m[:, None] * design) + l2 * np.eye(design.shape[1])
  want = np.asarray(theta0, np.float64) + np.linalg.solve(lhs, design.T @ (m * (y - f0)))
  got, _ = ravel_pytree(inner.partition(adapted, mask)[0])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-3)
  for a, b, keep in zip(jax.tree.leaves(params), jax.tree.leaves(adapted), jax.tree.leaves(mask)):
    if not keep:
      np.testing.assert_array_equal(a, b)  # features frozen
  before = np.sum(m * (y - f0) ** 2)
  after = np.sum(m * (y - np.asarray(model.apply(adapted, support, support))) ** 2)
  assert after < before


def test_interaction_stream_covers_training_rows_once_per_epoch_and_resumes(exp):
  st = exp.seeds[0]
  rows = training_rows(st.split)
  for name in st.split.scenarios:  # never an evaluated row
    assert np.intersect1d(rows, st.split.tasks[name].query_rows).size == 0
  b = 100
  it = InteractionIterator(exp.data, exp.feats, st.split.target, rows, b, seed=3, drop_remainder=False)
  seen = []
  for _ in range(-(-rows.size // b)):
    x = next(it)
    assert x["user"].shape == (b,)
    seen += list(zip(x["user"][x["mask"]], x["item"][x["mask"]], x["target"][x["mask"]]))
  want = list(zip(exp.data.user[rows], exp.data.item[rows], st.split.target[rows]))
  assert sorted(seen) == sorted(want) and it.state() == {"epoch": 1, "position": 0}
  saved = it.state()
  ahead = [next(it) for _ in range(2)]
  again = InteractionIterator(exp.data, exp.feats, st.split.target, rows, b, seed=3, drop_remainder=False)
  again.restore(saved)
  for x, y in zip(ahead, [next(again) for _ in range(2)]):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  with pytest.raises(ValueError, match="out of range"):
    again.restore({"epoch": 0, "position": rows.size})
  with pytest.raises(ValueError, match="exceeds"):
    InteractionIterator(exp.data, exp.feats, st.split.target, rows, rows.size + 1, seed=0)


def _results_without_timing(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results["train"]["stage_seconds"]) == {"pretrain", "meta"}
  return {k: v for k, v in results.items() if k != "train"}


def _read(workdir: str, name: str) -> str:
  with open(os.path.join(workdir, name)) as f:
    return f.read()


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path):
  # `--compilation_cache=` (empty): the runs use the suite's cache through the JAX_* variables they inherit, every
  # program included (a directory given to the flag would cache only those compiled in >= 0.5 s: not this config's)
  cache = ""
  uninterrupted, killed = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
  _run(uninterrupted, cache, CONFIG, SERVER)
  where = os.path.join("checkpoints", "pretrain_finetune")
  _run_and_kill_when(killed, cache, os.path.join(where, "0_pretrain", "2", "commit_success.txt"), CONFIG, SERVER)
  _run_and_kill_when(killed, cache, os.path.join(where, "1_meta", "2", "commit_success.txt"), CONFIG, SERVER)
  _run(killed, cache, CONFIG, SERVER)
  assert _results_without_timing(killed) == _results_without_timing(uninterrupted)
  for name in ("metrics.jsonl", "split_manifest.json", "config.json"):
    assert _read(killed, name) == _read(uninterrupted, name), name


def test_distill_loss_equals_a_hand_computation():
  teacher = Model("t", None, lambda p, x, c=None: p["w"] * x["item"], "w", "w")
  student = Model("s", None, lambda p, x, c=None: p["a"] + p["b"] * x["user"], "a", "b")
  params = {"teacher": {"w": np.float32(0.5)}, "student": {"a": np.float32(1.0), "b": np.float32(2.0)}}
  ex = lambda u, i, t, m: {"user": np.float32(u), "item": np.float32(i), "target": np.float32(t), "mask": np.array(m)}
  batch = {
    "observed": ex([0, 1, 2], [2, 4, 6], [1.0, 4.0, 9.0], [True, True, False]),
    "sampled": ex([0, 1, 2], [8, 0, 2], [0.0, 0.0, 0.0], [True, False, True]),
  }
  loss, metrics = distill_objective(teacher, student, alpha=0.25)(params, batch, None)
  # student(observed) = 1 + 2u = [1, 3, 5]; teacher(observed) = i / 2 = [1, 2, 3]; ratings [1, 4, (9 masked)]
  hard = ((1 - 1) ** 2 + (3 - 4) ** 2) / 2
  soft_obs = ((1 - 1) ** 2 + (3 - 2) ** 2) / 2
  # student(sampled) = [1, 3, 5]; teacher(sampled) = [4, 0, 1]; the second is masked
  soft_sampled = ((1 - 4) ** 2 + (5 - 1) ** 2) / 2
  soft = (soft_obs + soft_sampled) / 2
  np.testing.assert_allclose(metrics["hard_loss"], hard, rtol=1e-6)
  np.testing.assert_allclose(metrics["soft_loss"], soft, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.25 * hard + 0.75 * soft, rtol=1e-6)
  grads = jax.grad(lambda p: distill_objective(teacher, student, 0.25)(p, batch, None)[0])(params)
  assert float(grads["teacher"]["w"]) == 0.0  # the teacher's scores are targets, never trained by the student
  with pytest.raises(ValueError, match="alpha"):
    distill_objective(teacher, student, alpha=1.5)


def test_sampled_pairs_are_unrated_and_resume_exactly(exp):
  st = exp.seeds[0]
  observed = InteractionIterator.from_split(exp.data, st.split, exp.feats, 128, 0)
  it = SampledPairIterator(observed, seed=5)
  rows = training_rows(st.split)
  rated = set(zip(exp.data.user[rows].tolist(), exp.data.item[rows].tolist()))
  kept = 0
  for _ in range(3):
    b = next(it)
    np.testing.assert_array_equal(b["sampled"]["user"], b["observed"]["user"])
    for u, i, m in zip(b["sampled"]["user"], b["sampled"]["item"], b["sampled"]["mask"]):
      assert not (m and (int(u), int(i)) in rated)
      kept += bool(m)
  assert kept > 0.9 * 3 * 128  # rejection sampling finds an unrated item for nearly every pair
  saved = it.state()
  ahead = next(it)
  again = SampledPairIterator(InteractionIterator.from_split(exp.data, st.split, exp.feats, 128, 0), seed=5)
  again.restore(saved)
  jax.tree.map(np.testing.assert_array_equal, ahead, next(again))


@pytest.mark.parametrize("mode", ["stack", "weight"])
def test_fusion_coefficients_equal_numpy_least_squares(mode):
  rng = np.random.default_rng(0)
  sa, sb = rng.normal(3.5, 1.0, 200), rng.normal(3.5, 1.0, 200)
  y = 0.3 + 0.6 * sa + 0.25 * sb + rng.normal(0, 0.1, 200)
  got = fit_coef(sa, sb, y, mode)
  if mode == "stack":
    want = np.linalg.lstsq(np.c_[np.ones(200), sa, sb], y, rcond=None)[0]
  else:  # y - sb = w (sa - sb): a one-column least squares
    w = np.linalg.lstsq((sa - sb)[:, None], y - sb, rcond=None)[0][0]
    want = np.array([0.0, w, 1.0 - w])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert fit_coef(sa, sb, sa, "weight")[1] == pytest.approx(1.0)  # y = sa: all weight on A
  assert fit_coef(sa, sb, 2 * sa - sb, "weight")[1] == 1.0  # the unconstrained w = 2 is clipped to [0, 1]
  with pytest.raises(ValueError, match="valid modes"):
    fit_coef(sa, sb, y, "mean")


def test_strategies_table_grid_trains_the_learners_once_per_protocol():
  from experiments import strategies as table

  module = importlib.util.module_from_spec(
    spec := importlib.util.spec_from_file_location("cfg_s100k", os.path.join(ROOT, "configs", "strategies_ml100k.py"))
  )
  spec.loader.exec_module(module)
  cells = table.grid("strategies_ml100k", ["melu", "item_cold"], {"seeds": 2})
  rows = list(module.STRATEGY_KWARGS)
  assert [(p, r) for p, r, _ in cells] == [(p, r) for p in ("melu", "item_cold") for r in rows]
  for p, r, c in cells:
    assert c.protocol_name == p and c.strategy_name == module.ROW_STRATEGY.get(r, r) and c.seeds == 2 and c.is_locked
    assert c.strategy.to_dict() == module.STRATEGY_KWARGS[r]
    first = r == rows[0]
    assert (c.learner_name, tuple(c.compare_learners)) == (("melu", ("fomaml", "none")) if first else ("none", ()))
  assert module.ROW_STRATEGY["mmoe_click_only"] == "multitask"
  eval_every = {(p, r): c.eval_every for p, r, c in cells}
  assert eval_every[("melu", "mmoe_week_only")] == module.MULTITASK["steps"] and eval_every[("melu", "multitask")] == 20
  smoke = table.grid("strategies_ml100k", ["melu"], {"seeds": 1}, smoke=True)
  for _, r, c in smoke:  # every stage shrunk to 20 steps, the per-task inner steps kept
    steps = {k: v for k, v in c.strategy.to_dict().items() if k.endswith("steps")}
    assert steps and all(v == 20 for k, v in steps.items() if k != "inner_steps"), (r, steps)
    assert steps.get("inner_steps", 2) == module.STRATEGY_KWARGS[r].get("inner_steps", 2)
  per_seed = lambda v: {"new_user": {"mae": {"per_seed": [v, v]}}}
  run = lambda learner, comparisons: {
    "learner": learner,
    "metrics": per_seed(1.0),
    "comparisons": {m: per_seed(2.0 + i) for i, m in enumerate(comparisons)},
    "baselines": {"item_user_offset": per_seed(0.5)},
  }
  strategy_run = lambda learner, comparisons, name: {**run(learner, comparisons), "strategy": {"name": name}}
  values = table.table_values(
    [("a", strategy_run("melu", ["none", "a"], "a")), ("b", strategy_run("none", ["b"], "b"))]
  )
  assert list(values) == ["melu", "none", "a", "b", "item_user_offset"]  # run b's own `none` is not repeated
  assert values["b"]["new_user"]["mae"] == [2.0, 2.0] and values["a"]["new_user"]["mae"] == [3.0, 3.0]
  # a row labelled apart from its strategy (multitask's single-task counterparts) and its per-head table
  heads = {"new_user": {"click/auc": {"per_seed": [0.6, 0.7]}}}
  labelled = {**run("none", ["multitask"]), "strategy": {"name": "multitask", "heads": heads}}
  runs = [("a", strategy_run("melu", ["none", "a"], "a")), ("mmoe_click_only", labelled)]
  values = table.table_values(runs)
  assert list(values) == ["melu", "none", "a", "mmoe_click_only", "item_user_offset"]
  assert values["mmoe_click_only"]["new_user"]["mae"] == [2.0, 2.0]
  assert table.heads_values(runs) == {"mmoe_click_only": {"new_user": {"click/auc": [0.6, 0.7]}}}


SHARDED_SCRIPT = r"""
import os
import dataclasses, sys, tempfile
sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
import chex, jax
from tests.test_strategies import load_config
from transfer_meta import runlog, sharding, stages, train
from transfer_meta.strategies import get_strategy

assert len(jax.devices()) == 8
config = load_config()
config.checkpoint_every = 1000  # each stage's end only: resuming is the SIGKILL test's
exp8 = train.build_experiment(config)
exp1 = dataclasses.replace(exp8, mesh=sharding.make_mesh(jax.devices()[:1]))
strategy = get_strategy(config.strategy_name, exp8.model, config, exp8.spec, **config.strategy)
out = {{}}
for name, exp in (("8", exp8), ("1", exp1)):
  workdir = tempfile.mkdtemp()
  mlog = runlog.MetricsLog(os.path.join(workdir, "metrics.jsonl"), [strategy.name])
  out[name] = stages.run_strategy(exp, strategy, workdir, mlog)[0].selection
leaf = jax.tree.leaves(out["8"].params)[0]
assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
assert out["8"].step == out["1"].step, (out["8"].step, out["1"].step)
chex.assert_trees_all_close(out["8"].params, out["1"].params, rtol=1e-4, atol=1e-5)
chex.assert_trees_all_close(out["8"].value, out["1"].value, rtol=1e-5)
print("SHARDED_OK")
"""


def test_stages_on_8_fake_devices_equal_one_device():
  """Every stage (interaction minibatches, then task batches) split over 8 devices gives one device's result."""
  done = SERVER.run(["-c", SHARDED_SCRIPT.format(root=ROOT)], ROOT, timeout=600, env={"XLA_FLAGS": xla_flags(8)})
  assert done.returncode == 0 and "SHARDED_OK" in done.stdout, done.stderr[-4000:]


def test_fusion_gate_recovers_a_planted_support_size_gate():
  """Ratings that follow model A more as the support grows: the fitted gate is the planted one."""
  rng = np.random.default_rng(1)
  n = rng.integers(1, 60, 400)
  sa, sb = rng.normal(3.5, 1.0, 400), rng.normal(3.5, 1.0, 400)
  planted = np.array([-2.0, 0.8])
  w = np.asarray(gate_weight(planted, n.astype(np.float32)), np.float64)
  y = w * sa + (1 - w) * sb
  got = fit_gate(sa, sb, y, n)
  np.testing.assert_allclose(got, planted, atol=1e-3)
  assert float(gate_weight(got, 50.0)) > 0.7 > 0.3 > float(gate_weight(got, 1.0))  # the weight shifts with n


def test_soup_scores_with_the_average_and_pretraining_keeps_one_shared_init(exp):
  model, k = exp.model, 3
  both = soup_model(model, k)
  x = _example(exp)["query"]
  params = both.init(jax.random.key(0), x, None)
  copies = jax.tree.map(
    lambda c: c + jnp.arange(k, dtype=c.dtype).reshape((k,) + (1,) * (c.ndim - 1)) * 0.01, params["copies"]
  )
  mean = jax.tree.map(lambda c: np.mean(np.asarray(c, np.float64), axis=0).astype(np.float32), copies)
  np.testing.assert_allclose(both.apply({"copies": copies}, x, None), model.apply(mean, x, None), rtol=1e-5, atol=1e-6)
  strategy = get_strategy("soup", model, exp.config, exp.spec, n_copies=k, batch_size=66)
  tx = strategy.stages[0].tx
  one = jax.jit(step.step_fn(strategy.stages[0].grad_fn, tx))
  state = {"meta_params": jax.tree.map(lambda p: p[None], params), "step": np.int32(0)}
  state["opt_state"] = jax.vmap(tx.init)(state["meta_params"])
  it = InteractionIterator.from_split(exp.data, exp.seeds[0].split, exp.feats, 66, 0)
  for _ in range(3):
    state, _ = one(state, jax.tree.map(lambda v: v[None], next(it)), jax.random.key(0)[None])
  for leaf in jax.tree.leaves(state["meta_params"]["copies"]):
    for c in range(1, k):  # pretraining the average moves every copy by the same bits
      assert np.asarray(leaf[0, c]).tobytes() == np.asarray(leaf[0, 0]).tobytes()
  with pytest.raises(ValueError, match="divisible"):
    get_strategy("soup", model, exp.config, exp.spec, n_copies=4, batch_size=66)
