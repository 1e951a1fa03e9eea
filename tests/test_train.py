"""Trainer: the meta-step's maths (masked mean, optimiser, seeds, randomness), stopping on non-finite values,
and one end-to-end `train_and_evaluate` on the tiny smoke config whose outputs and checkpoint are checked."""

from __future__ import annotations

import functools
import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from transfer_meta import chunking, evaluate, programs, runlog, train
from transfer_meta.checkpoint import Checkpointer
from transfer_meta.data.tasks import eval_batches
from transfer_meta.learners import get_learner, inner
from transfer_meta.learners.base import Learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 4  # tasks per batch (3 real + 1 padded)
LR = 0.1


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def exp():
  return train.build_experiment(load_config("smoke_synthetic", "tiny"))


def _batch(exp, seed_pos: int, n_real: int = 3, n_tasks: int = T) -> dict:
  return exp.seeds[seed_pos].tasks["train"].batch(np.arange(n_real) + 5 * seed_pos, n_tasks)


def _task(batch: dict, t: int) -> dict:
  return {"support": train.unstack(batch["support"], t), "query": train.unstack(batch["query"], t)}


@pytest.fixture(scope="module")
def setup(exp):
  """`none` with SGD, two seeds: one jitted step shared by the maths tests (compiled once per shape)."""
  learner = get_learner("none", exp.model)
  tx = optax.sgd(LR)
  b0 = _batch(exp, 0)
  example = _task(b0, 0)
  keys, _ = train.seed_keys([0, 1])
  state = train.make_init(learner, tx, example)[1](keys)
  step = jax.jit(train.meta_step_fn(learner, tx))
  return learner, tx, keys, state, step


def test_meta_step_equals_independent_per_task_sgd(exp, setup):
  """none + SGD: new params = params - lr * (mean over REAL tasks of each task's own gradient), per seed."""
  learner, _, keys, state, step = setup
  batches = [_batch(exp, 0), _batch(exp, 1)]
  new, metrics = step(state, train.stack_seed_batches(batches), keys)
  grad = jax.jit(jax.grad(lambda p, task: inner.joint_loss(learner.model, "mse", p, task["support"], task["query"])))
  query_loss = jax.jit(lambda p, task: inner.query_loss(learner.model, "mse", p, task["query"], task["support"]))
  for n, batch in enumerate(batches):
    params = train.unstack(state["meta_params"], n)
    grads = [grad(params, _task(batch, t)) for t in range(3)]  # task 3 is padding
    mean = jax.tree.map(lambda *g: sum(g) / 3.0, *grads)
    want = jax.tree.map(lambda p, g: p - LR * g, params, mean)
    chex.assert_trees_all_close(train.unstack(new["meta_params"], n), want, rtol=2e-5, atol=1e-6)
    query_losses = [query_loss(params, _task(batch, t)) for t in range(3)]
    np.testing.assert_allclose(metrics["outer_loss"][n], np.mean(query_losses), rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"][n], optax.tree.norm(mean), rtol=1e-5)
    np.testing.assert_allclose(metrics["param_norm"][n], optax.tree.norm(want), rtol=1e-5)
  assert int(new["step"]) == 1


def test_padding_tasks_and_lengths_changes_nothing(exp, setup):
  learner, _, keys, state, step = setup
  plain = train.stack_seed_batches([_batch(exp, 0, 3, 3), _batch(exp, 1, 3, 3)])
  padded = train.stack_seed_batches([_batch(exp, 0, 3, 8), _batch(exp, 1, 3, 8)])
  # 5 padded tasks and 7 padded support entries per task (mask False, ids 0).
  padded["support"] = {
    k: np.pad(v, [(0, 0), (0, 0), (0, 7)] + [(0, 0)] * (v.ndim - 3)) for k, v in padded["support"].items()
  }
  a, ma = step(state, plain, keys)
  b, mb = step(state, padded, keys)
  chex.assert_trees_all_close(a["meta_params"], b["meta_params"], rtol=1e-5, atol=1e-6)
  for k in ma:
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, atol=1e-6)


def test_seed_axis_equals_separate_single_seed_steps(exp, setup):
  learner, tx, keys, state, step = setup
  batches = [_batch(exp, 0), _batch(exp, 1)]
  both, m_both = step(state, train.stack_seed_batches(batches), keys)
  for n in range(2):
    take = functools.partial(lambda n, x: x[n : n + 1], n)
    one_state = {
      "meta_params": jax.tree.map(take, state["meta_params"]),
      "opt_state": jax.tree.map(take, state["opt_state"]),
      "step": state["step"],
    }
    one, m_one = step(one_state, train.stack_seed_batches([batches[n]]), keys[n : n + 1])
    chex.assert_trees_all_close(
      train.unstack(one["meta_params"], 0), train.unstack(both["meta_params"], n), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(m_one["outer_loss"][0], m_both["outer_loss"][n], rtol=1e-5)


def test_step_randomness_is_fold_in_of_step_split_over_tasks(exp):
  """A learner whose metric is its task key's uniform draw pins the scheme fold_in(seed key, step) -> split."""
  base = get_learner("none", exp.model)

  def task_grad(meta_params, task, key):
    return jax.tree.map(jnp.zeros_like, meta_params), {"outer_loss": jax.random.uniform(key)}

  learner = Learner("probe", base.model, base.init, base.adapt, task_grad)
  tx = optax.sgd(LR)
  keys, _ = train.seed_keys([0, 1])
  state = train.make_init(learner, tx, _task(_batch(exp, 0), 0))[1](keys)
  state["step"] = jnp.int32(7)
  _, metrics = jax.jit(train.meta_step_fn(learner, tx))(
    state, train.stack_seed_batches([_batch(exp, 0, 4), _batch(exp, 1, 4)]), keys
  )
  for n in range(2):
    task_keys = jax.random.split(jax.random.fold_in(keys[n], 7), T)
    want = np.mean([jax.random.uniform(k) for k in task_keys])
    np.testing.assert_allclose(metrics["outer_loss"][n], want, rtol=1e-6)
  assert metrics["outer_loss"][0] != metrics["outer_loss"][1]


def test_masked_task_mean_ignores_padded_nan():
  values = jnp.array([[1.0, 2.0], [3.0, 6.0], [jnp.nan, jnp.inf]])
  out = train._masked_task_mean(values, jnp.array([True, True, False]))
  np.testing.assert_allclose(out, [2.0, 4.0])
  np.testing.assert_allclose(train._masked_task_mean(jnp.zeros(3), jnp.zeros(3, bool)), 0.0)


def test_stack_seed_batches_pads_to_the_longest(exp):
  a = exp.seeds[0].tasks["train"].batch(np.arange(2), 2)
  b = {**a, "support": {k: v[:, :5] for k, v in a["support"].items()}}
  out = train.stack_seed_batches([a, b])
  width = a["support"]["mask"].shape[1]
  assert out["support"]["mask"].shape == (2, 2, width)
  assert not out["support"]["mask"][1, :, 5:].any()
  np.testing.assert_array_equal(out["support"]["target"][1, :, :5], a["support"]["target"][:, :5])
  np.testing.assert_array_equal(out["task_mask"], [[True, True], [True, True]])


def test_stack_seed_batches_of_equal_widths_is_a_plain_stack(exp):
  a = exp.seeds[0].tasks["train"].batch(np.arange(2), 2)
  b = exp.seeds[0].tasks["train"].batch(np.array([1, 0]), 2)
  out = train.stack_seed_batches([a, b])
  for part in ("support", "query"):
    assert set(out[part]) == set(a[part])
    for k in a[part]:
      np.testing.assert_array_equal(out[part][k], np.stack([a[part][k], b[part][k]]))
  out["support"]["target"][0] += 1.0  # a fresh array: the per-seed batches are not aliased
  np.testing.assert_array_equal(
    a["support"]["target"], exp.seeds[0].tasks["train"].batch(np.arange(2), 2)["support"]["target"]
  )


def test_optimizer_and_learner_specs_are_validated():
  c = load_config("smoke_synthetic", "tiny")
  with c.unlocked():
    c.optimizer_name = "adamm"
  with pytest.raises(ValueError, match="not an optax optimizer"):
    train.make_optimizer(c)
  with c.unlocked():
    c.optimizer_name, c.grad_clip_norm = "sgd", 1.0
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 1.0})
  tx = train.make_optimizer(c)
  updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init({"w": jnp.zeros(2)}))
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)  # clipped to norm 1, then -lr * g
  with c.unlocked():
    c.compare_learners = ("maml",)
  with pytest.raises(ValueError, match="distinct"):
    train._learner_specs(c)
  with c.unlocked():
    c.compare_learners = ("none",)
    c.compare_kwargs = ml_collections.ConfigDict({"fomaml": {}})
  with pytest.raises(ValueError, match="compare_kwargs"):
    train._learner_specs(c)
  with c.unlocked():
    c.select_metric = "valid/auc"
  with pytest.raises(ValueError, match="select_metric"):
    train.build_experiment(c)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = load_config("smoke_synthetic", "tiny")
  with c.unlocked():
    c.seeds, c.checkpoint_every, c.eval_every, c.compare_learners, c.baselines = 1, 1, 100, (), ()
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 1e15})
  with pytest.raises(FloatingPointError, match=r"non-finite train/\w+ at step (\d+)") as info:
    train.train_and_evaluate(c, str(tmp_path))
  bad_step = int(info.value.args[0].split(" at step ")[1].split()[0])
  assert bad_step >= 2, "the first step's loss is computed before any update and must be finite"
  assert f"last good checkpoint (step {bad_step - 1})" in info.value.args[0]
  ckpt = Checkpointer(tmp_path / "checkpoints" / "maml", train.ARRAY_ITEMS, train.JSON_ITEMS)
  assert ckpt.steps()[-1] == bad_step - 1
  items = ckpt.restore(bad_step - 1, {}, ("extra",))
  assert items["extra"]["step"] == bad_step - 1
  assert not os.path.exists(tmp_path / "results.json")


EVAL_STEPS_BUILT: list = []  # the learners `evaluate.make_eval_step` was called for during the `run` fixture


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  config = load_config("smoke_synthetic", "tiny")
  make = evaluate.make_eval_step
  programs.clear()  # an earlier test's identical learner would be reused: this run builds its own eval steps
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "make_eval_step", lambda *a, **k: EVAL_STEPS_BUILT.append(a[0].name) or make(*a, **k))
    return config, workdir, train.train_and_evaluate(config, workdir)


def test_the_final_evaluation_reuses_the_validation_eval_step(run):
  """One eval step per learner, built for validation and reused by `evaluate_trained` (not traced again); the
  reported metrics equal an independently built one's (test_checkpoint_restores_and_reproduces_reported_metrics)."""
  config, _, results = run
  assert EVAL_STEPS_BUILT == [config.learner_name, *config.compare_learners] == ["maml", "none"]
  assert set(results["comparisons"]) == {"none"}


def test_results_json_has_the_design_layout(run):
  config, workdir, results = run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == results
  assert {"dataset", "protocol", "protocol_version", "learner", "model", "seeds", "metrics", "train"} <= set(results)
  assert results["dataset"] == "synthetic" and results["protocol"] == "melu" and results["learner"] == "maml"
  assert results["seeds"] == [0, 1]
  assert set(results["metrics"]) == {"valid", "warm", "new_user", "new_item", "new_user_new_item"}
  for scenario, per_metric in results["metrics"].items():
    assert set(per_metric) == {"mae", "rmse", "ndcg@1", "ndcg@3"}, scenario
    for stat in per_metric.values():
      assert len(stat["per_seed"]) == 2
      np.testing.assert_allclose(stat["mean"], np.mean(stat["per_seed"]))
      np.testing.assert_allclose(stat["std"], np.std(stat["per_seed"]))
  assert set(results["train"]) >= {"steps", "seconds", "tasks_per_second"} and results["train"]["steps"] == 8
  assert set(results["comparisons"]) == {"none"}
  assert set(results["baselines"]) == {"global_mean", "item_user_offset"}
  assert set(results["baselines"]["global_mean"]) == {"warm", "new_user", "new_item", "new_user_new_item"}
  assert len(results["manifest_hashes"]) == 2 and results["manifest_hashes"][0] != results["manifest_hashes"][1]


def test_run_files(run):
  config, workdir, results = run
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f) == json.loads(config.to_json())
  with open(os.path.join(workdir, "split_manifest.json")) as f:
    manifests = json.load(f)
  assert [m["seed"] for m in manifests] == [0, 1]
  assert [m["hash"] for m in manifests] == results["manifest_hashes"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [(r["learner"], r["step"]) for r in records] == [(n, s) for n in ("maml", "none") for s in range(1, 9)]
  for r in records:
    assert {"train/outer_loss", "train/grad_norm", "train/param_norm"} <= set(r)
    assert np.isfinite(r["train/outer_loss"])
    assert ("valid/mae" in r) == (r["step"] % 4 == 0)
  assert os.path.isfile(os.path.join(workdir, "results.md"))
  assert config.plots and os.path.isfile(os.path.join(workdir, "curves.png"))  # config.plots (default True)


def test_checkpoint_restores_and_reproduces_reported_metrics(run, exp):
  """The best meta-params restored from the checkpoint, evaluated independently, give the reported numbers."""
  config, workdir, results = run
  learner = get_learner("maml", exp.model, **config.learner.to_dict())
  tx = train.make_optimizer(config)
  keys, eval_keys = train.seed_keys([0, 1])
  example = _task(_batch(exp, 0), 0)
  abstract = train.make_init(learner, tx, example, train.sharding.make_mesh())[0](keys)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "maml"), train.ARRAY_ITEMS, train.JSON_ITEMS)
  assert ckpt.steps() == [6, 8]  # keep_checkpoints=2, saved every 2 steps
  step, items = ckpt.restore_latest({"best_meta_params": abstract["meta_params"]}, ("extra",))
  assert step == 8 and items["extra"]["step"] == 8
  assert items["extra"]["best_step"] == results["selection"]["best_step"]["maml"]
  eval_step = evaluate.make_eval_step(learner, exp.seeds[0].split.metrics, None)
  for n in range(2):
    got = evaluate.evaluate_tasks(
      eval_step,
      train.unstack(items["best_meta_params"], n),
      eval_batches(exp.seeds[n].tasks["new_user"], 16),
      eval_keys[n],
    )
    np.testing.assert_allclose(got["mae"], results["metrics"]["new_user"]["mae"]["per_seed"][n], rtol=1e-6)


def test_rerun_into_a_finished_workdir_reproduces_results_and_refuses_other_configs(run):
  config, workdir, results = run
  again = train.train_and_evaluate(config, workdir)
  assert {k: v for k, v in again.items() if k != "train"} == {k: v for k, v in results.items() if k != "train"}
  other = load_config("smoke_synthetic", "tiny")
  with other.unlocked():
    other.num_steps = 9
  with pytest.raises(ValueError, match="different config"):
    train.train_and_evaluate(other, workdir)


SHARDED_SCRIPT = r"""
import os
import sys
sys.path.insert(0, {root!r})
import chex, jax, numpy as np, optax
from tests.test_train import load_config, _task
from transfer_meta import evaluate, sharding, train
from transfer_meta.data.tasks import eval_batches
from transfer_meta.learners import get_learner

assert len(jax.devices()) == 8
config = load_config("smoke_synthetic", "tiny")
exp = train.build_experiment(config)
learner = get_learner("none", exp.model)  # the placement and reduction under test do not depend on the learner
tx = optax.adam(1e-2)
keys, eval_keys = train.seed_keys([0, 1])
td = [st.tasks["train"] for st in exp.seeds]
batches = [train.stack_seed_batches([td[0].batch(np.arange(8) + 8 * i), td[1].batch(np.arange(5) + 8 * i, 8)])
           for i in range(2)]
width = max(b["support"]["mask"].shape[2] for b in batches)
for b in batches:  # one shape for every step: one trace
  b["support"] = {{k: np.pad(v, [(0, 0), (0, 0), (0, width - v.shape[2])] + [(0, 0)] * (v.ndim - 3))
                  for k, v in b["support"].items()}}
example = _task(td[0].batch(np.arange(1)), 0)
mesh8, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
traced = chex.assert_max_traces(train.meta_step_fn(learner, tx), n=1)
step8 = train.jit_meta_step(traced, mesh8)
step1 = train.jit_meta_step(train.meta_step_fn(learner, tx), mesh1)
s8 = train.make_init(learner, tx, example, mesh8)[1](keys)
s1 = train.make_init(learner, tx, example, mesh1)[1](keys)
for b in batches:
  placed = sharding.shard_batch(b, mesh8, 1)
  assert len(placed["task_mask"].addressable_shards) == 8
  assert placed["task_mask"].addressable_shards[0].data.shape == (2, 1)
  s8, m8 = step8(s8, placed, keys)
  s1, m1 = step1(s1, sharding.shard_batch(b, mesh1, 1), keys)
  np.testing.assert_allclose(m8["outer_loss"], m1["outer_loss"], rtol=1e-5)
assert s8["meta_params"]["params"]["output"]["kernel"].sharding.is_fully_replicated
chex.assert_trees_all_close(s8["meta_params"], s1["meta_params"], rtol=1e-4, atol=1e-6)
params = train.unstack(s8["meta_params"], 0)
e8 = evaluate.evaluate_tasks(evaluate.make_eval_step(learner, ("mae", "ndcg@3"), None, mesh8), params,
                             eval_batches(exp.seeds[0].tasks["valid"], 8), eval_keys[0], mesh8)
e1 = evaluate.evaluate_tasks(evaluate.make_eval_step(learner, ("mae", "ndcg@3"), None, mesh1), params,
                             eval_batches(exp.seeds[0].tasks["valid"], 8), eval_keys[0], mesh1)
np.testing.assert_allclose(e8["mae"], e1["mae"], rtol=1e-5)
process_count = jax.process_count
jax.process_count = lambda: 2  # the multi-host placement path, on one host
by_callback = sharding.shard_batch(batches[0], mesh8, 1)
jax.process_count = process_count
by_put = sharding.shard_batch(batches[0], mesh8, 1)
chex.assert_trees_all_equal(by_callback, by_put)
assert by_callback["support"]["item"].sharding == by_put["support"]["item"].sharding
try:
  sharding.check_batch_size(12, mesh8)
  raise SystemExit("batch 12 on 8 devices was accepted")
except ValueError as e:
  assert "multiple of the device count 8" in str(e)
print("SHARDED_OK")
"""


def test_sharded_meta_step_on_8_fake_devices_equals_one_device_and_compiles_once():
  from xla_flags import run_script  # noqa: PLC0415 (its subprocess script imports this module)

  done = run_script(SHARDED_SCRIPT.format(root=ROOT), devices=8, cwd=ROOT)
  assert done.returncode == 0 and "SHARDED_OK" in done.stdout, done.stderr[-4000:]


def test_auto_chunking_with_padded_tasks_trains_like_the_plain_vmap(tmp_path):
  """chunk_size=-1 at 65 tasks per step picks chunks of 22 over 66 task slots (one masked pad task): the trained
  meta-parameters equal the plain vmap's (chunk_size=0) up to float summation order."""
  assert chunking.auto_chunk_size(65, 1) == (22, 66)
  trained = {}
  for chunk in (0, -1):
    c = load_config("smoke_synthetic", "tiny")
    with c.unlocked():
      c.seeds, c.batch_size, c.num_steps, c.eval_every, c.checkpoint_every = 1, 65, 3, 3, 3
      c.chunk_size, c.compare_learners, c.baselines, c.min_tasks = chunk, (), (), 0
    e = train.build_experiment(c)
    assert len(e.seeds[0].tasks["train"]) >= 65  # a full batch of real tasks: only the slot padding differs
    os.makedirs(tmp_path / f"c{chunk}")
    mlog = runlog.MetricsLog(str(tmp_path / f"c{chunk}" / "metrics.jsonl"), ["maml"])
    trained[chunk] = train.train_learner(e, "maml", c.learner.to_dict(), str(tmp_path / f"c{chunk}"), mlog)
  plain, auto = (jax.tree.leaves(trained[k].selection.params) for k in (0, -1))
  for a, b in zip(plain, auto):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  assert trained[0].selection.value == pytest.approx(trained[-1].selection.value, rel=1e-5)
  assert trained[0].selection.step == trained[-1].selection.step == [3]  # trained params, not the initial ones


def test_reused_builders_key_on_their_arguments_by_value_type_and_identity(exp):
  """`programs.reused`: equal arguments give the same object (so the same jitted functions, already traced), and any
  difference in value, type, array content or function identity builds afresh; an object it cannot compare by value
  is keyed by identity. (A reused program's results equal a fresh one's: test_run_outputs' bit-identical rerun.)"""
  key = lambda x: programs.fingerprint(x)[0]
  assert len({key(1), key(1.0), key(True), key(np.int64(1))}) == 4
  assert key([1, 2]) != key((1, 2)) and key({"a": 1, "b": 2}) == key({"a": 1, "b": 2})
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  assert key(a) == key(a.copy()) and key(a) != key(a.reshape(3, 2)) and key(a) != key(a + 1)
  assert key(a) != key(a.astype(np.float64))
  f, g = (lambda x: x), (lambda x: x)
  assert key(f) == key(f) and key(f) != key(g)
  o = object()
  assert key(o) == key(o) and key(o) != key(object())

  built = []
  build = programs.reused(lambda *args, **kw: built.append(args) or object())
  x = build(1, k=2)
  assert build(1, k=2) is x and build(1.0, k=2) is not x and build(1, k=3) is not x
  assert build(object()) is not build(object())  # distinct objects: distinct keys, built afresh
  assert dict(build.stats) == {"hits": 1, "misses": 5} and len(built) == 5

  c, spec = load_config("smoke_synthetic", "tiny"), exp.spec
  assert train.build_model(c, spec) is train.build_model(load_config("smoke_synthetic", "tiny"), spec)
  assert train.make_optimizer(c) is train.make_optimizer(load_config("smoke_synthetic", "tiny"))
  with c.unlocked():
    c.model.emb_dim += 1
    c.optimizer.learning_rate *= 2
  other = load_config("smoke_synthetic", "tiny")
  assert train.build_model(c, spec) is not train.build_model(other, spec)
  assert train.make_optimizer(c) is not train.make_optimizer(other)
  programs.clear()
  assert not train._jit_meta_step.entries and not train._jit_meta_step.stats
