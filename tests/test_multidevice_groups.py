"""Multi-device CPU steps dispatched without syncing: the bound that keeps XLA's CPU client from deadlocking.

bench_throughput fo1:32:g4 on 2 fake CPU devices aborted in an all-reduce rendezvous ("Expected 2 threads to join"):
it dispatched 50 steps per repetition without reading a result, and more than 32 un-synced multi-device calls
deadlock XLA's CPU client (transfer_meta/dispatch.py explains the threads). The subprocess below makes 100 such
calls of a minimal step, 60 of the trainer's grouped step (G=4, unchunked: the benchmark's case) through
`step.jit_meta_step`, and 100 of `evaluate.make_eval_step`; without the bound it aborts after XLA's 40 s
rendezvous timeout.
"""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfer_meta import dispatch, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@jax.jit
def _double(x):
  return 2.0 * x


def test_bounded_dispatch_waits_for_the_call_limit_back_and_returns_the_calls_results():
  bounded = dispatch.BoundedDispatch(_double, limit=2)
  outs = [bounded(jnp.full((3,), float(i))) for i in range(5)]
  assert bounded.pending == 2  # calls 0..2 were waited for and dropped
  chex.assert_trees_all_equal([np.asarray(o) for o in outs], [np.full((3,), 2.0 * i, np.float32) for i in range(5)])
  assert "mul" in bounded.lower(jnp.zeros(3)).as_text()  # the jitted function's attributes are its own


def test_bounded_dispatch_skips_outputs_donated_to_later_calls():
  step = dispatch.BoundedDispatch(jax.jit(lambda s: s + 1.0, donate_argnums=0), limit=1)
  state = jnp.zeros(4)
  for _ in range(4):
    state = step(state)  # each call's output is donated to the next: waiting on it must not touch a deleted buffer
  np.testing.assert_array_equal(np.asarray(state), np.full(4, 4.0, np.float32))
  assert step.pending == 1


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bounded_dispatch_refuses_a_limit_that_is_not_a_positive_int(limit):
  with pytest.raises(ValueError, match=r"limit=.* must be an int >= 1"):
    dispatch.BoundedDispatch(_double, limit)


def test_one_device_mesh_keeps_the_jitted_function_itself():
  mesh = sharding.make_mesh(jax.devices()[:1])
  assert not dispatch.needs_bound(mesh)
  assert dispatch.bounded(_double, mesh) is _double


UNSYNCED_SCRIPT = r"""
import sys
sys.path.insert(0, {root!r})
import chex, jax, jax.numpy as jnp, numpy as np, optax
from tests.test_length_groups import KW, T, W, make_setup
from transfer_meta import dispatch, evaluate, length_groups, sharding, step, train
from transfer_meta.learners import get_learner

assert len(jax.devices()) == 2
mesh = sharding.make_mesh()
assert dispatch.needs_bound(mesh)

def tiny(state, batch, keys):  # one all-reduce per call: the sum over the task axis split over the devices
  w = state["w"] * 0.5 + jnp.sum(jnp.tanh(batch @ state["w"]), axis=(0, 1, 2))
  return {{"w": w}}, {{"sum": jnp.sum(w)}}

tiny_step = step.jit_meta_step(tiny, mesh)
assert isinstance(tiny_step, dispatch.BoundedDispatch), type(tiny_step)
state = sharding.replicate({{"w": np.eye(16, dtype=np.float32)}}, mesh)
x = (0.05 * np.random.default_rng(0).standard_normal((1, 8, 4, 16))).astype(np.float32)  # [N, T, 4, 16]
batch = sharding.shard_batch(x, mesh, 1)
keys = sharding.replicate(np.zeros(1, np.float32), mesh)
for _ in range(100):  # > 32 un-synced calls: XLA's per-device in-flight semaphore is full without the bound
  state, metrics = tiny_step(state, batch, keys)
  assert tiny_step.pending <= dispatch.MAX_INFLIGHT
w = np.eye(16, dtype=np.float32)
for _ in range(100):  # the same recursion in numpy
  w = w * 0.5 + np.tanh(x @ w).sum(axis=(0, 1, 2))
np.testing.assert_allclose(np.asarray(state["w"]), w, rtol=1e-5, atol=1e-5)

model, host, example = make_setup()
learner, tx = get_learner("fomaml", model, **KW["fomaml"]), optax.adam(1e-2)
fn, build, _ = length_groups.step_parts(learner, tx, None, 2, T, 4, W)  # the trainer's path: G=4, unchunked
grouped = train.jit_meta_step(fn, mesh)
train_keys = train.seed_keys([0])[0]
init = train.make_init(learner, tx, example, mesh)[1]
placed = sharding.shard_batch(build([host]), mesh, 1)
s_fast, s_sync = init(train_keys), init(train_keys)
for _ in range(60):  # un-synced, as bench_throughput's repetitions (50 steps each)
  s_fast, m_fast = grouped(s_fast, placed, train_keys)
for _ in range(60):  # read each step's metrics, as the trainer's loop
  s_sync, m_sync = grouped(s_sync, placed, train_keys)
  jax.device_get(m_sync)
assert int(s_fast["step"]) == 60
chex.assert_trees_all_equal(s_fast["meta_params"], s_sync["meta_params"])  # the same program on the same inputs
chex.assert_tree_all_finite(s_fast["meta_params"])

eval_step = evaluate.make_eval_step(learner, ("mae",), None, mesh)  # replicated outputs: a collective per call
params, eval_key = train.unstack(s_fast["meta_params"], 0), train.seed_keys([0])[1][0]
eval_batch = sharding.shard_batch(host, mesh, 0)
fast = [eval_step(params, eval_batch, eval_key) for _ in range(100)]  # un-synced
synced = jax.device_get(eval_step(params, eval_batch, eval_key))
real = host["task_mask"]
for out in fast:
  np.testing.assert_array_equal(np.asarray(out["mae"])[real], synced["mae"][real])
print("UNSYNCED_OK")
"""


def test_unsynced_multidevice_steps_do_not_deadlock_xla_cpu():
  from xla_flags import run_script  # noqa: PLC0415 (its subprocess script imports tests.test_length_groups)

  done = run_script(UNSYNCED_SCRIPT.format(root=ROOT), devices=2, cwd=ROOT, timeout=240)
  assert done.returncode == 0 and "UNSYNCED_OK" in done.stdout, done.stderr[-4000:]
