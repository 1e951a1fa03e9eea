"""MAMO (learners/mamo.py) and the trainer's learner state (learner_state.py): the memory write rule against a hand
computation, the personalised init against an independent numpy read, zero memories = first-order MAML, the state
written by the trainer's step, and SIGKILL-resume bit-identical with the state."""

from __future__ import annotations

import os
import signal
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from forkrun import TRAINING_PRELOAD, ForkServer
from jax.flatten_util import ravel_pytree
from test_learners import make_task, tiny_batch, tiny_model
from test_resume import ROOT, _read, _results_without_timing

from transfer_meta import learner_state, serving
from transfer_meta import step as step_lib
from transfer_meta.learners import get_learner
from transfer_meta.learners.mamo import moving_average

KW = dict(n_slots=2, profile_dim=3, profile_vocab=8, max_profile_features=2, inner_steps=1, inner_lr=0.1)


def _setup(**kw):
  model = tiny_model()
  task = make_task(0)
  params = model.init(jax.random.key(0), task["support"], task["support"])
  learner = get_learner("mamo", model, **{**KW, **kw})
  meta = learner.init(jax.random.key(1), params)
  return model, learner, meta, learner.init_state(jax.random.key(2), meta)


def test_memory_write_rule_matches_hand_computation():
  memory = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  att = jnp.array([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
  values = jnp.array([[4.0, 0.0], [2.0, 2.0], [100.0, 100.0]])  # the third task is padded: it never writes
  mask = jnp.array([True, True, False])
  # By hand: a0 (x) v0 = [[1, 0], [3, 0]], a1 (x) v1 = [[2, 2], [0, 0]], mean [[1.5, 1], [1.5, 0]];
  # 0.1 * mean + 0.9 * memory = [[1.05, 0.1], [0.15, 1.8]].
  np.testing.assert_allclose(moving_average(memory, att, values, mask, 0.1), [[1.05, 0.1], [0.15, 1.8]], rtol=1e-6)
  np.testing.assert_array_equal(moving_average(memory, att, values, jnp.zeros(3, bool), 0.1), memory)
  np.testing.assert_allclose(moving_average(memory, att[:1], values[:1], mask[:1], 1.0), [[1.0, 0.0], [3.0, 0.0]])


def _np_attention(meta, support, state, vocab, temperature=1.0):
  table, w = np.asarray(meta["profile"]["table"]), np.asarray(meta["profile"]["key"])
  m = np.asarray(support["mask"])
  cat = np.asarray(support["user_cat"])
  rows = [sum(table[f * vocab + cat[i, f]] for f in range(cat.shape[1])) for i in range(len(m))]
  profile = np.mean([r for r, real in zip(rows, m) if real], axis=0)
  k = profile @ w
  mem = np.asarray(state["profile"])
  cos = mem @ k / (np.linalg.norm(mem, axis=1) * np.linalg.norm(k))
  e = np.exp(cos / temperature)
  return k, e / e.sum()


def test_personalised_init_reads_both_memories():
  model, learner, meta, state = _setup(inner_steps=0, tau=0.3)
  rng = np.random.default_rng(0)
  state = {**state, "feature": rng.normal(size=state["feature"].shape), "task": rng.normal(size=state["task"].shape)}
  state = jax.tree.map(jnp.asarray, state)
  support = make_task(1)["support"]
  _, att = _np_attention(meta, support, state, KW["profile_vocab"])
  start = learner.adapt(meta, support, jax.random.key(0), state)  # 0 inner steps: the personalised init itself
  p = meta["params"]["params"]
  # The tiny model's adapted leaves (adapt_regex 'body|head'), flattened in tree order: body/kernel, head/bias,
  # head/kernel; the preference leaves are the head's (bias, kernel).
  flat = np.concatenate([np.ravel(p["body"]["kernel"]), np.ravel(p["head"]["bias"]), np.ravel(p["head"]["kernel"])])
  phi = flat - 0.3 * att @ np.asarray(state["feature"])
  n_body = p["body"]["kernel"].size
  phi[n_body:] += att @ np.asarray(state["task"])
  got = start["params"]
  got_flat = np.concatenate(
    [np.ravel(got["body"]["kernel"]), np.ravel(got["head"]["bias"]), np.ravel(got["head"]["kernel"])]
  )
  np.testing.assert_allclose(got_flat, phi, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got["item_emb"]["embedding"], p["item_emb"]["embedding"])  # not adapted


@pytest.mark.parametrize("first_order", [True, False])
def test_zero_memories_equal_maml(first_order):
  model, learner, meta, state = _setup(first_order=first_order)
  assert float(jnp.abs(state["feature"]).max()) == 0.0 and float(jnp.abs(state["task"]).max()) == 0.0
  fomaml = get_learner(
    "maml", model, inner_steps=1, inner_lr=0.1, adapt_regex=model.adapt_regex, first_order=first_order
  )
  task, key = make_task(3), jax.random.key(0)
  chex.assert_trees_all_close(
    learner.adapt(meta, task["support"], key, state), fomaml.adapt(meta["params"], task["support"], key), rtol=1e-6
  )
  grads, metrics = learner.task_grad(meta, task, key, state)
  want, want_metrics = fomaml.task_grad(meta["params"], task, key)
  chex.assert_trees_all_close(grads["params"], want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["outer_loss"], want_metrics["outer_loss"], rtol=1e-6)
  # With empty memories the reads are 0 * attention: no gradient reaches the profile embedding yet.
  assert float(ravel_pytree(grads["profile"])[0].__abs__().max()) == 0.0


def test_attention_is_trained_once_memories_are_written():
  model, learner, meta, state = _setup()
  state = {**state, "feature": jnp.ones_like(state["feature"]) * jnp.arange(2.0)[:, None]}
  task, key = make_task(3), jax.random.key(0)
  grads, _ = learner.task_grad(meta, task, key, state)
  assert float(jnp.abs(grads["profile"]["key"]).max()) > 0  # the attention projection is a parameter, learned
  assert meta["profile"]["key"].shape == (KW["profile_dim"],) * 2  # created once in init, part of meta_params


def test_profile_overflow_is_counted():
  model, learner, meta, state = _setup()
  task = make_task(0)
  task["support"] = {**task["support"], "user_cat": np.where(np.arange(2) == 1, 9, task["support"]["user_cat"])}
  _, metrics = learner.task_grad(meta, task, jax.random.key(0), state)
  assert float(metrics["profile_overflow"]) == pytest.approx(0.5)  # one of two features is >= profile_vocab=8
  _, clean = learner.task_grad(meta, make_task(0), jax.random.key(0), state)
  assert float(clean["profile_overflow"]) == 0.0


def test_trainer_step_writes_the_state_by_the_rule():
  model, learner, _, _ = _setup()
  tx = optax.sgd(0.5)
  task0 = make_task(0)
  example = {"support": task0["support"], "query": task0["query"]}
  keys = jax.random.split(jax.random.key(0), 2)
  state = step_lib.make_init(learner, tx, example)[1](keys)
  assert set(state) == {"meta_params", "opt_state", "step", "learner_state"}
  batch = {**tiny_batch(3), "task_mask": np.array([True, True, False]), "task_id": np.arange(3)}
  batch = step_lib.stack_seed_batches([batch, batch])
  before = jax.tree.map(np.asarray, state)
  new, metrics = jax.jit(step_lib.meta_step_fn(learner, tx))(state, batch, keys)
  chex.assert_tree_all_finite((new, metrics))
  for n in range(2):
    meta, mem = step_lib.unstack(before["meta_params"], n), step_lib.unstack(before["learner_state"], n)
    one = step_lib.unstack(batch, n)
    task_keys = jax.random.split(jax.random.fold_in(keys[n], 0), 3)
    outs = [
      learner.task_outputs(meta, {"support": step_lib.unstack(one["support"], t), "query": {}}, task_keys[t], mem)
      for t in range(2)  # the real tasks; the padded third must not write
    ]
    for name, value in (("profile", "key"), ("feature", "grad"), ("task", "delta")):
      rate = {"profile": 0.05, "feature": 0.1, "task": 0.1}[name]
      mean = np.mean([np.outer(o["att"], o[value]) for o in outs], axis=0)
      want = rate * mean + (1 - rate) * np.asarray(mem[name])
      np.testing.assert_allclose(step_lib.unstack(new["learner_state"], n)[name], want, rtol=1e-4, atol=1e-6)
  assert float(np.abs(np.asarray(new["learner_state"]["feature"])).max()) > 0  # written


def test_eval_learner_bundles_the_state():
  model, learner, meta, state = _setup()
  view = learner_state.eval_learner(learner)
  bundle = {"meta_params": meta, "learner_state": state}
  support = make_task(2)["support"]
  chex.assert_trees_all_equal(
    view.adapt(bundle, support, jax.random.key(0)), learner.adapt(meta, support, jax.random.key(0), state)
  )
  assert set(view.init(jax.random.key(0), meta["params"])) == {"meta_params", "learner_state"}
  maml = get_learner("maml", model)
  assert learner_state.eval_learner(maml) is maml  # a stateless learner is evaluated as itself


# ---------------------------------------------------------------------------------------------------------------
# SIGKILL mid-run, rerun: bit-identical to an uninterrupted run, with the memories in the checkpoint.

CONFIG = "configs/smoke_synthetic.py:tiny"  # 2 seeds, 8 steps, checkpoints every 2
# mamo alone: the smoke config's second learner (`none`, trained after it, never killed) adds nothing to what
# this test checks (resuming a learner with state) and costs each full launch its trace and evaluation;
# tests/test_resume.py kills and resumes a run during its second learner.
# No PNGs either (`--config.plots=False`): nothing here reads them (test_run_outputs checks the plots).
OVERRIDES = (
  "--config.learner_name=mamo", "--config.resample_train=True", "--config.compare_learners=()", "--config.plots=False"
)  # fmt: skip


# The three launches run in forks of one preloaded interpreter (tests/forkrun.py), as in tests/test_resume.py.
SERVER = ForkServer(ROOT, preload=TRAINING_PRELOAD)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _command(workdir: str, cache: str) -> list[str]:
  base = ["transfer_meta.main", f"--config={CONFIG}", f"--workdir={workdir}"]
  return [*base, f"--compilation_cache={cache}", *OVERRIDES]


def _run(workdir: str, cache: str) -> None:
  done = SERVER.run(_command(workdir, cache), ROOT, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]


def _kill_when(workdir: str, cache: str, marker: str) -> None:
  proc = SERVER.start(_command(workdir, cache), ROOT, timeout=900)
  path, deadline = os.path.join(workdir, marker), time.time() + 600
  while not os.path.exists(path):
    if proc.poll() is not None:
      pytest.fail(f"run ended (rc {proc.returncode}) before {marker}: {proc.stderr[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      proc.wait()
      pytest.fail(f"{marker} did not appear")
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed: the test would prove nothing"
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_sigkill_resume_with_learner_state_is_bit_identical(tmp_path, jax_cache):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  _run(straight, jax_cache)
  assert os.path.isdir(os.path.join(straight, "checkpoints", "mamo", "8", "meta_params"))
  # Serving loads the selected meta-params with their memories and adapts a user with them.
  bundle = serving.load_meta_params(straight)
  assert set(bundle.meta_params) == {"meta_params", "learner_state"}
  assert float(np.abs(bundle.meta_params["learner_state"]["feature"]).max()) > 0  # written during training
  data = bundle.data
  out = serving.adapt(bundle, data.item_raw_ids[[0, 3, 7]], [5.0, 4.0, 1.0], user=data.user_raw_ids[0])
  assert out.scores.shape == (data.n_items,) and np.isfinite(out.scores).all()
  _kill_when(killed, jax_cache, os.path.join("checkpoints", "mamo", "2", "commit_success.txt"))
  _run(killed, jax_cache)
  assert _results_without_timing(killed) == _results_without_timing(straight)
  assert _read(killed, "metrics.jsonl") == _read(straight, "metrics.jsonl")
