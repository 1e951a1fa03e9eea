"""Rule-based parameter sharding (`transfer_meta.param_sharding`) and chunking on a sharded task axis.

The rule logic runs here on an `AbstractMesh`; placing arrays and running the trainer's meta-step with a
sharded embedding table needs 8 (fake CPU) devices, set by XLA_FLAGS before jax is imported: a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from xla_flags import subprocess_env

from transfer_meta.param_sharding import param_shardings, spec_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = AbstractMesh((4, 2), ("tasks", "model"))
PARAMS = {
  "params": {
    "item_id": {"embedding": jnp.zeros((40, 8))},
    "user_id": {"embedding": jnp.zeros((32, 8))},
    "decision_0": {"kernel": jnp.zeros((16, 6)), "bias": jnp.zeros(6)},
  }
}


def specs(params, rules, leading_axes=0):
  return jax.tree.map(lambda s: s.spec, param_shardings(params, MESH, rules, leading_axes))


def test_first_matching_rule_wins_and_the_rest_is_replicated():
  rules = (
    (r"item_id/embedding$", ("model", None)),
    (r"embedding$", (("tasks", "model"), None)),
    (r"decision_0/kernel", (None, "model")),
  )
  got = specs(PARAMS, rules)
  assert got["params"]["item_id"]["embedding"] == P("model", None)  # the first rule, not the second
  assert got["params"]["user_id"]["embedding"] == P(("tasks", "model"), None)  # 32 rows over 4 x 2
  assert got["params"]["decision_0"]["kernel"] == P(None, "model")
  assert got["params"]["decision_0"]["bias"] == P()


def test_leading_axes_and_optimizer_state_paths():
  import optax

  stacked = jax.tree.map(lambda x: jnp.zeros((3, *x.shape)), PARAMS)
  rules = ((r"item_id/embedding$", ("tasks", None)),)
  got = specs(stacked, rules, leading_axes=1)
  assert got["params"]["item_id"]["embedding"] == P(None, "tasks", None)
  opt = jax.eval_shape(optax.adam(1e-3).init, stacked)  # abstract leaves work too
  opt_specs = specs(opt, rules, leading_axes=1)
  assert opt_specs[0].mu["params"]["item_id"]["embedding"] == P(None, "tasks", None)  # '0/mu/params/item_id/...'
  assert opt_specs[0].nu["params"]["user_id"]["embedding"] == P()


def test_bad_rules_fail_clearly():
  emb = jnp.zeros((30, 8))
  with pytest.raises(
    ValueError,
    match=r"dimension 0 of parameter 'p' \(shape \(30, 8\)\) has size 30, not divisible "
    r"by mesh axes \('tasks',\) of total size 4",
  ):
    spec_for("p", emb.shape, MESH, ((r"p", ("tasks", None)),))
  with pytest.raises(ValueError, match=r"names mesh axes \['rows'\], not in the mesh axes \['tasks', 'model'\]"):
    spec_for("p", emb.shape, MESH, ((r"p", ("rows", None)),))
  with pytest.raises(ValueError, match="has 3 entries but parameter 'p' has 2 dimensions"):
    spec_for("p", emb.shape, MESH, ((r"p", (None, None, "tasks")),))
  with pytest.raises(ValueError, match="spec must be a tuple"):
    param_shardings(PARAMS, MESH, ((r"nothing_matches", "tasks"),))  # malformed even though unmatched
  with pytest.raises(ValueError, match="bad regex"):
    param_shardings(PARAMS, MESH, ((r"(", ()),))
  with pytest.raises(ValueError, match=r"must be \(regex, spec tuple\)"):
    param_shardings(PARAMS, MESH, (("a", (None,), "extra"),))
  assert spec_for("p", emb.shape, MESH, ((r"p", ("model", None)),)) == P("model", None)  # 30 % 2 == 0


SCRIPT = r"""
import os
import sys
sys.path.insert(0, {root!r})
import chex, jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import PartitionSpec as P
import transfer_meta as tm
from transfer_meta import sharding, train
from transfer_meta.chunking import mean_task_grads
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
from transfer_meta.data.protocols import make_protocol
from transfer_meta.data.tasks import TaskData
from transfer_meta.learners import get_learner
from transfer_meta.models import get_model
from transfer_meta.param_sharding import param_shardings

assert len(jax.devices()) == 8
data = tm.load_dataset("synthetic", n_users=80, n_items=64, ratings_per_user=(14, 30), seed=3)
split = make_protocol("recbole_metarec", data, seed=0)
tasks = TaskData.from_split(data, split, "train", FeatureMatrices.from_interactions(data), buckets=(10, 32))
model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=4, hidden=(8,), use_ids=True)
learner = get_learner("maml", model, inner_steps=1, inner_lr=0.1)
tx = optax.adam(1e-2)
keys, _ = train.seed_keys([0])
batches = [train.stack_seed_batches([tasks.batch(np.arange(14) + 16 * i, 16)]) for i in range(3)]
first = tasks.batch(np.arange(1))
example = {{"support": jax.tree.map(lambda x: x[0], first["support"]),
           "query": jax.tree.map(lambda x: x[0], first["query"])}}

# 1. the trainer's meta-step with the item-id table (and its Adam moments) split over the 'tasks' axis
mesh8, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
rules = ((r"item_id/embedding$", ("tasks", None)),)
abstract_state, init8 = train.make_init(learner, tx, example, mesh8)
abstract = abstract_state(keys)
rep = sharding.replicated(mesh8)
state_sh = {{"meta_params": param_shardings(abstract["meta_params"], mesh8, rules, leading_axes=1),
            "opt_state": param_shardings(abstract["opt_state"], mesh8, rules, leading_axes=1), "step": rep}}
traced = chex.assert_max_traces(train.meta_step_fn(learner, tx), n=1)
step8 = jax.jit(traced, in_shardings=(state_sh, sharding.task_sharding(mesh8, 1), rep),
                out_shardings=(state_sh, rep), donate_argnums=0)
step1 = train.jit_meta_step(train.meta_step_fn(learner, tx), mesh1)
s8 = jax.device_put(init8(keys), state_sh)
s1 = train.make_init(learner, tx, example, mesh1)[1](keys)
table = s8["meta_params"]["params"]["item_id"]["embedding"]
assert table.sharding.spec == P(None, "tasks", None) and table.addressable_shards[0].data.shape == (1, 8, 4)
for b in batches:
  s8, m8 = step8(s8, sharding.shard_batch(b, mesh8, 1), keys)
  s1, m1 = step1(s1, sharding.shard_batch(b, mesh1, 1), keys)
  np.testing.assert_allclose(m8["outer_loss"], m1["outer_loss"], rtol=1e-5)
table = s8["meta_params"]["params"]["item_id"]["embedding"]
assert table.sharding.spec == P(None, "tasks", None), table.sharding
assert s8["opt_state"][0].mu["params"]["item_id"]["embedding"].sharding.spec == P(None, "tasks", None)
assert s8["meta_params"]["params"]["output"]["kernel"].sharding.is_fully_replicated
chex.assert_trees_all_close(s8["meta_params"], s1["meta_params"], rtol=1e-4, atol=1e-6)
assert float(jnp.abs(s1["meta_params"]["params"]["item_id"]["embedding"]).max()) > 0  # the table was trained

# 2. chunked mean over a task axis split over 8 devices == plain vmap on one device
b = jax.tree.map(lambda x: x[0], batches[0])
task = {{"support": b["support"], "query": b["query"]}}
task_keys = jax.random.split(jax.random.key(0), 16)
params = jax.tree.map(lambda x: x[0], s1["meta_params"])
fn = lambda chunk, groups=1: (lambda p, t, k, m: mean_task_grads(learner.task_grad, p, t, k, m, chunk, groups))
want = jax.jit(fn(None))(params, task, task_keys, b["task_mask"])
ts = sharding.task_sharding(mesh8, 0)
placed = sharding.shard_batch((task, b["task_mask"]), mesh8, 0)
for chunk, groups in ((4, 1), (8, 8)):  # groups=8: per-device partial sums, one cross-device sum per step
  got = jax.jit(fn(chunk, groups), in_shardings=(sharding.replicated(mesh8), ts, ts, ts))(
    params, placed[0], task_keys, placed[1])
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
print("PARAM_SHARDING_OK")
"""


def test_sharded_embedding_table_and_chunked_tasks_on_8_fake_devices():
  env = subprocess_env(devices=8)  # read by jax at import, before the script's first line that needs it
  done = subprocess.run(
    [sys.executable, "-c", SCRIPT.format(root=ROOT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0 and "PARAM_SHARDING_OK" in done.stdout, done.stderr[-4000:]
