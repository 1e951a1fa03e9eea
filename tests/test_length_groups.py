"""Length grouping (`transfer_meta.length_groups`): the grouped meta-step equals the ungrouped one.

The reference is the trainer's ungrouped step (`step.meta_step_fn`, itself checked against a Python loop over
tasks in tests/test_chunking.py) on the same batch; grouping only changes the float summation order, so
parameters after a few Adam steps and every step's metrics must agree to ~1e-6. Padded tasks carry NaN targets
and padded entries of real tasks carry garbage: neither may reach a result.
"""

from __future__ import annotations

import math

import chex
import jax
import numpy as np
import optax
import pytest

import transfer_meta as tm
from transfer_meta import length_groups, packing, step, train
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.learners import get_learner
from transfer_meta.models import get_model

T, S, Q, W = 8, 12, 4, 4  # task slots, support and query widths, the width grid's spacing
REAL = np.array([True, True, False, True, True, True, False, True])  # two padded slots, not at the end
LENGTHS = np.array([11, 2, 0, 7, 3, 12, 0, 1])  # real support lengths: groups of 4 get widths 4 and 12
STEPS = 3
KW = {
  "maml": dict(inner_steps=2, inner_lr=0.1),  # second order
  "fomaml": dict(inner_steps=2, inner_lr=0.1),
  "reptile": dict(inner_steps=2, inner_lr=0.1),
}


@pytest.fixture(scope="module")
def setup():
  return make_setup()


def make_setup():
  """(model, batch with T slots of ragged supports and garbage in every masked value, one-task example)."""
  data = tm.load_dataset("synthetic", n_users=30, n_items=40, ratings_per_user=(5, 10), seed=0)
  feats, spec = FeatureMatrices.from_interactions(data), FeatureSpec.from_interactions(data)
  model = get_model("melu", spec, emb_dim=4, hidden=(8,))
  rng = np.random.default_rng(0)

  def part(n, lengths):
    users = np.repeat(rng.integers(0, 30, T)[:, None], n, axis=1)
    items = rng.integers(0, 40, (T, n))
    target = rng.integers(1, 6, (T, n)).astype(np.float32)
    mask = (np.arange(n)[None, :] < lengths[:, None]) & REAL[:, None]
    x = make_examples(feats, users, items, target, mask)
    # Garbage where masked: padded entries of real tasks hold huge targets, padded tasks hold NaN.
    x["target"] = np.where(mask, x["target"], 1e6).astype(np.float32)
    x["target"] = np.where(REAL[:, None], x["target"], np.nan).astype(np.float32)
    return x

  batch = {
    "support": part(S, LENGTHS),
    "query": part(Q, np.where(REAL, rng.integers(1, Q + 1, T), 0)),
    "task_mask": REAL.copy(),
    "task_id": np.where(REAL, np.arange(T), -1).astype(np.int32),
  }
  example = {k: jax.tree.map(lambda x: x[0], batch[k]) for k in ("support", "query")}
  return model, batch, example


# Shared across tests (tracing and loading the same program again is most of these tests' cost): the initial
# state of each (learner, optimiser), and the grouped runs that two tests use as their result or reference.
ADAM, SGD = optax.adam(1e-2), optax.sgd(0.1)
_INITIAL: dict = {}
_GROUPED: dict = {}


def _initial_state(learner, tx, example):
  """`train.make_init`'s state for seed 0, built once per (learner name, optimiser) and reused (`_run`'s jit
  does not donate its input, so the cached buffers stay valid)."""
  key = (learner.name, id(tx))
  if key not in _INITIAL:
    _INITIAL[key] = train.make_init(learner, tx, example)[1](train.seed_keys([0])[0])
  return _INITIAL[key]


def _params(learner, model, example):
  """Meta-params from `model.init` (key 0) and `learner.init` (key 3), as one jitted program rather than
  op-by-op (each eager primitive is a program of its own)."""
  init = lambda ex: learner.init(jax.random.key(3), model.init(jax.random.key(0), ex["query"], ex["support"]))  # noqa: E731
  return jax.jit(init)(example)


def _run(fn, learner, tx, example, batches):
  """Params and per-step metrics after feeding `batches` to the jitted step `fn` (one seed)."""
  keys, _ = train.seed_keys([0])
  state = _initial_state(learner, tx, example)
  jitted, history = jax.jit(fn), []
  for b in batches:
    state, metrics = jitted(state, b, keys)
    history.append(jax.device_get(metrics))
  return jax.device_get(state["meta_params"]), history


def _grouped_run(name, n_groups, chunk, learner, example, batch):
  """`_run` of the separate-groups step (`length_groups.meta_step_fn`, Adam) on `batch` in `n_groups` groups,
  STEPS times: the result of test_grouped_step_equals_the_ungrouped_step and the reference of
  test_packed_step_equals_the_separate_step, computed once for both."""
  if (name, n_groups, chunk) not in _GROUPED:
    sizes = length_groups.group_sizes(T, n_groups, chunk or 1)
    grouped = length_groups.stack_seed_groups([length_groups.group_batch(batch, sizes, W)])
    fn = length_groups.meta_step_fn(learner, ADAM, chunk)
    _GROUPED[name, n_groups, chunk] = _run(fn, learner, ADAM, example, [grouped] * STEPS)
  return _GROUPED[name, n_groups, chunk]


@pytest.mark.parametrize(
  "name,n_groups,chunk", [("maml", 2, None), ("maml", 2, 2), ("fomaml", 2, None), ("reptile", 2, 2)]
)
def test_grouped_step_equals_the_ungrouped_step(setup, name, n_groups, chunk):
  model, batch, example = setup
  learner, tx = get_learner(name, model, **KW[name]), ADAM
  sizes = length_groups.group_sizes(T, n_groups, chunk or 1)
  grouped = length_groups.stack_seed_groups([length_groups.group_batch(batch, sizes, W)])
  assert [g["support"]["mask"].shape[2] for g in grouped["groups"]] == [4, 12]  # the grouping really trims
  plain = train.stack_seed_batches([batch])
  want_params, want = _run(step.meta_step_fn(learner, tx, chunk), learner, tx, example, [plain] * STEPS)
  got_params, got = _grouped_run(name, n_groups, chunk, learner, example, batch)
  chex.assert_tree_all_finite((got_params, got))  # NaN / 1e6 in masked slots never leak
  assert want[0]["outer_loss"][0] > 0 and want[0]["grad_norm"][0] > 0
  chex.assert_trees_all_close(got_params, want_params, rtol=1e-5, atol=1e-6)
  for g, w in zip(got, want):
    assert set(g) == set(w)
    chex.assert_trees_all_close(g, w, rtol=1e-5, atol=1e-6)
  init = jax.device_get(_initial_state(learner, tx, example)["meta_params"])
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(init)))
  assert moved > 1e-4  # the steps changed the parameters: not a comparison of two initialisations


def test_grouped_gradient_matches_a_loop_over_real_tasks(setup):
  """Independent of the trainer: the mean of one jitted `task_grad` per real task at its UNPADDED length, with
  slot t's key split(key, T)[t]."""
  model, batch, example = setup
  learner = get_learner("maml", model, **KW["maml"])
  params = _params(learner, model, example)
  key = jax.random.key(7)
  grouped = {"groups": length_groups.group_batch(batch, length_groups.group_sizes(T, 4), W)}
  grads, metrics = jax.jit(length_groups.grouped_batch_grad_fn(learner))(params, grouped, key)
  task_keys, tasks = jax.random.split(key, T), []
  for t in np.flatnonzero(REAL):
    n_s, n_q = int(batch["support"]["mask"][t].sum()), int(batch["query"]["mask"][t].sum())
    task = {
      "support": jax.tree.map(lambda x, t=t, n=n_s: x[t, :n], batch["support"]),
      "query": jax.tree.map(lambda x, t=t, n=n_q: x[t, :n], batch["query"]),
    }
    tasks.append((task, task_keys[t]))
  # One `task_grad` per task, each at its own unpadded shape, in ONE jitted program (one compile, not six).
  outs = jax.jit(lambda p, ts: [learner.task_grad(p, task, k) for task, k in ts])(params, tasks)
  want = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *outs)
  chex.assert_trees_all_close((grads, metrics), want, rtol=1e-5, atol=1e-6)


def test_padded_and_masked_slots_contribute_nothing(setup):
  """Rewriting everything masked (padded tasks' whole rows, real tasks' padded entries) changes nothing."""
  model, batch, example = setup
  learner = get_learner("fomaml", model, **KW["fomaml"])
  params = _params(learner, model, example)
  fn = jax.jit(length_groups.grouped_batch_grad_fn(learner))
  sizes = length_groups.group_sizes(T, 2)
  base = fn(params, {"groups": length_groups.group_batch(batch, sizes, W)}, jax.random.key(1))
  other = jax.tree.map(lambda x: x.copy(), batch)
  rng = np.random.default_rng(5)
  for part in ("support", "query"):
    masked = ~(other[part]["mask"] & REAL[:, None])
    other[part]["target"] = np.where(masked, rng.normal(size=masked.shape) * 50, other[part]["target"]).astype(
      np.float32
    )
    other[part]["item_cat"] = np.where(masked[..., None], 0, other[part]["item_cat"])
  changed = fn(params, {"groups": length_groups.group_batch(other, sizes, W)}, jax.random.key(1))
  chex.assert_tree_all_finite(base)
  chex.assert_trees_all_close(changed, base, rtol=1e-6, atol=1e-7)
  # ... while a real entry does change the result (the check can fail).
  other["support"]["target"][0, 0] += 3.0
  moved = fn(params, {"groups": length_groups.group_batch(other, sizes, W)}, jax.random.key(1))
  assert not np.allclose(moved[1]["outer_loss"], base[1]["outer_loss"])


def test_group_batch_sorts_trims_and_keeps_every_slot(setup):
  _, batch, _ = setup
  groups = length_groups.group_batch(batch, (2, 2, 4), W)
  index = np.concatenate([g["task_index"] for g in groups])
  assert sorted(index.tolist()) == list(range(T))  # every slot exactly once
  lengths = np.concatenate([g["support"]["mask"].sum(axis=1) for g in groups])
  np.testing.assert_array_equal(lengths, np.sort(np.where(REAL, LENGTHS, 0)))  # sorted by support length
  widths = [g["support"]["mask"].shape[1] for g in groups]
  assert widths == [4, 4, 12] and widths == sorted(widths)  # padded slots (length 0) get the smallest width
  for g in groups:
    np.testing.assert_array_equal(g["task_mask"], REAL[g["task_index"]])
    np.testing.assert_array_equal(g["task_id"], batch["task_id"][g["task_index"]])
    for part in ("support", "query"):
      width = g[part]["mask"].shape[1]
      assert width % W == 0 or width == batch[part]["mask"].shape[1]
      for k, v in g[part].items():  # the kept columns are the original ones; nothing real was cut
        np.testing.assert_array_equal(v, batch[part][k][g["task_index"], :width])
      assert batch[part]["mask"][g["task_index"], width:].sum() == 0


def test_group_sizes_widths_and_bad_settings():
  assert length_groups.group_sizes(8, 2) == (4, 4)
  assert length_groups.group_sizes(480, 2, 32) == (256, 224)  # 15 chunks of 32: 8 + 7
  assert length_groups.group_sizes(480, 4, 32) == (128, 128, 128, 96)
  assert length_groups.group_sizes(10, 3) == (4, 3, 3)
  assert length_groups.group_width(0, 100) == 16 and length_groups.group_width(17, 100) == 32
  assert length_groups.group_width(97, 100) == 100 and length_groups.group_width(5, 8, 16) == 8
  with pytest.raises(ValueError, match="does not fit"):
    length_groups.group_width(101, 100)
  with pytest.raises(ValueError, match="at most 15 groups"):
    length_groups.group_sizes(480, 16, 32)
  with pytest.raises(ValueError, match="unit=32 dividing slots=100"):
    length_groups.group_sizes(100, 2, 32)
  for bad in (-1, 1.5, "2", True, None):
    with pytest.raises(ValueError, match="length_groups="):
      length_groups.check_length_groups(bad)
  with pytest.raises(ValueError, match="length_group_step=0"):
    length_groups.check_length_groups(2, 0)
  with pytest.raises(ValueError, match="sum to the batch's 8 task slots"):
    length_groups.group_batch({"task_mask": REAL, "support": {}, "query": {}, "task_id": REAL}, (4, 3))


def test_coupled_learners_are_refused_or_bypassed(setup):
  model, _, _ = setup
  tx = optax.adam(1e-3)
  mamo = get_learner("mamo", model)
  with pytest.raises(ValueError, match="length grouping refused: learner 'mamo' has state or a batch-level loss"):
    length_groups.meta_step_fn(mamo, tx)
  fn, build, reason = length_groups.step_parts(mamo, tx, None, 1, T, 2)
  assert "batch-level loss" in reason and build is step.stack_seed_batches  # the trainer's ungrouped step
  assert length_groups.unsupported_reason(get_learner("maml", model)) is None
  _, build, reason = length_groups.step_parts(get_learner("maml", model), tx, None, 1, T, 0)
  assert reason is None and build is step.stack_seed_batches  # 0: off
  # A model with a shared per-step table (the text tail's gradient hook) runs the ungrouped step that wraps it.
  hooked = get_learner("maml", model._replace(aux={"share_grad": lambda learner, grad_fn: grad_fn}))
  with pytest.raises(ValueError, match="shared per-step table"):
    length_groups.meta_step_fn(hooked, tx)
  _, build, reason = length_groups.step_parts(hooked, tx, None, 1, T, 2)
  assert "text tail" in reason and build is step.stack_seed_batches


@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_compiles_once_per_group_width_signature(setup, layout):
  """One trace per distinct tuple of group widths, never more, and within the documented bound; the trainer's
  packed batches carry the widths in their static layout, so they compile exactly as often."""
  model, batch, example = setup
  learner, tx = get_learner("fomaml", model, inner_steps=1, inner_lr=0.1), SGD
  traces = []
  sizes = length_groups.group_sizes(T, 2)
  if layout == "packed":
    packed_step, build, _ = length_groups.step_parts(learner, tx, None, 1, T, 2, W)

    def fn(state, b, keys):
      traces.append(tuple(support for _, support, _ in b.layout.meta[0]))
      return packed_step(state, b, keys)

  else:
    grad_fn = length_groups.grouped_batch_grad_fn(learner)

    def counted(params, b, key):
      traces.append(tuple(g["support"]["mask"].shape[-1] for g in b["groups"]))
      return grad_fn(params, b, key)

    fn = step.step_fn(counted, tx)
    build = lambda bs: length_groups.stack_seed_groups([length_groups.group_batch(b, sizes, W) for b in bs])  # noqa: E731
  rng = np.random.default_rng(0)
  batches, signatures = [], set()
  for _ in range(6):
    b = jax.tree.map(lambda x: x.copy(), batch)
    cut = rng.integers(1, S + 1)  # shorten every support to at most `cut` entries
    b["support"]["mask"] &= np.arange(S)[None, :] < cut
    batches.append(build([b]))
    signatures.add(tuple(g["support"]["mask"].shape[-1] for g in length_groups.group_batch(b, sizes, W)))
  _run(chex.assert_max_traces(fn, n=len(signatures)), learner, tx, example, batches + batches)
  assert len(traces) == len(signatures) and set(traces) == signatures and len(signatures) >= 2
  grid = math.ceil(S / W)
  assert len(signatures) <= math.comb(grid + 2 - 1, 2)
  chex.clear_trace_counter()


def test_train_and_evaluate_with_length_groups_equals_without(tmp_path, monkeypatch):
  """End to end on the tiny smoke config: the same results with 2 length groups, which really were built."""
  from experiments.runner import config_module

  calls, group_plan = [], length_groups.group_plan
  monkeypatch.setattr(length_groups, "group_plan", lambda *a: calls.append(1) or group_plan(*a))
  runs, built = {}, {}
  for n_groups in (0, 2):
    c = config_module("smoke_synthetic")[0].get_config("tiny")
    c.unlock()
    c.seeds, c.num_steps, c.eval_every, c.checkpoint_every, c.compare_learners = 1, 4, 4, 4, ()
    c.plots = False  # no check reads the PNGs (tests/test_run_outputs.py checks them)
    c.length_groups = n_groups
    c.lock()
    runs[n_groups] = tm.train_and_evaluate(c, str(tmp_path / f"g{n_groups}"))
    built[n_groups] = len(calls)
  assert built[0] == 0 and built[2] >= 4  # one grouped batch per step (plus the prefetched one)
  a, b = runs[0]["metrics"], runs[2]["metrics"]
  assert set(a) == set(b) and a
  for scenario in a:
    for metric in a[scenario]:
      np.testing.assert_allclose(b[scenario][metric]["per_seed"], a[scenario][metric]["per_seed"], rtol=1e-4, atol=1e-5)
  bad = config_module("smoke_synthetic")[0].get_config("tiny")
  bad.unlock()
  bad.length_groups = 99
  with pytest.raises(ValueError, match="length_groups=99 > 8"):
    train.build_experiment(bad)


def test_stack_seed_groups_pads_each_group_to_the_longest_seed(setup):
  _, batch, _ = setup
  short = jax.tree.map(lambda x: x.copy(), batch)
  short["support"]["mask"] &= np.arange(S)[None, :] < 3  # every support at most 3 long: widths (4, 4)
  sizes = length_groups.group_sizes(T, 2)
  seeds = [length_groups.group_batch(b, sizes, W) for b in (batch, short)]
  assert [g["support"]["mask"].shape[1] for g in seeds[1]] == [4, 4]
  stacked = length_groups.stack_seed_groups(seeds)["groups"]
  assert [g["support"]["mask"].shape for g in stacked] == [(2, 4, 4), (2, 4, 12)]
  for g, (a, b) in enumerate(zip(*seeds)):
    for k, v in stacked[g]["support"].items():
      np.testing.assert_array_equal(v[0], a["support"][k])
      np.testing.assert_array_equal(v[1, :, :4], b["support"][k])
      assert not np.any(v[1, :, 4:])  # zeros (False in the mask) past the short seed's width
    np.testing.assert_array_equal(stacked[g]["task_index"], np.stack([a["task_index"], b["task_index"]]))
  with pytest.raises(ValueError, match="same number of length groups"):
    length_groups.stack_seed_groups([seeds[0], seeds[1][:1]])


@pytest.mark.parametrize("devices", [1, 2])
def test_packed_groups_equal_the_separate_groups(setup, devices):
  """`unpack_groups(pack_groups(...))` (the trainer's one-transfer path) gives the groups `stack_seed_groups`
  builds: same slots, widths, masks and keys' indices, the same values on every unmasked entry."""
  _, batch, _ = setup
  short = jax.tree.map(lambda x: x.copy(), batch)
  short["support"]["mask"] &= np.arange(S)[None, :] < 3  # a narrower second seed: its groups are padded
  sizes = length_groups.group_sizes(T, 2, devices)
  packed = length_groups.pack_groups([batch, short], sizes, devices, W)
  dtypes = {x.dtype for x in jax.tree.leaves(batch)} | {np.dtype(np.int32)}
  assert len(jax.tree.leaves(packed)) == len(dtypes) == 3  # one transfer per dtype, whatever G
  got = length_groups.unpack_groups(packed)["groups"]
  want = length_groups.stack_seed_groups([length_groups.group_batch(b, sizes, W) for b in (batch, short)])["groups"]
  assert [g["support"]["mask"].shape for g in got] == [(2, 4, 4), (2, 4, 12)]
  for g, w in zip(got, want):
    assert jax.tree.structure(g) == jax.tree.structure(w)
    for k in ("task_mask", "task_id", "task_index"):
      np.testing.assert_array_equal(g[k], w[k])
    for part in ("support", "query"):
      mask = w[part]["mask"]
      np.testing.assert_array_equal(g[part]["mask"], mask)
      for k, v in w[part].items():
        assert g[part][k].shape == v.shape and g[part][k].dtype == v.dtype
        sel = mask.reshape(mask.shape + (1,) * (v.ndim - 3))
        np.testing.assert_array_equal(np.where(sel, g[part][k], 0), np.where(sel, v, 0))
        np.testing.assert_array_equal(g[part][k][0], v[0])  # the widest seed: every entry, masked ones too
  if devices == 2:  # device 0's block (first T/2 positions) holds half of each group: a local slice per device
    index = packing.unpack(packed)["task_index"][0]
    np.testing.assert_array_equal(index[: T // 2], np.concatenate([w["task_index"][0, :2] for w in want]))


@pytest.mark.parametrize("name,chunk", [("maml", None), ("fomaml", 2)])
def test_packed_step_equals_the_separate_step(setup, name, chunk):
  """The groups reach the step bit for bit (test above); the compiled programs differ only in where the groups
  are sliced, which can change XLA's fusion and so the float summation order: equal to ~1 ulp-level noise."""
  model, batch, example = setup
  learner, tx = get_learner(name, model, **KW[name]), ADAM
  fn, build, reason = length_groups.step_parts(learner, tx, chunk, 1, T, 2, W)  # the trainer's path
  assert reason is None
  want_params, want = _grouped_run(name, 2, chunk, learner, example, batch)  # the separate groups' step
  got_params, got = _run(fn, learner, tx, example, [build([batch])] * STEPS)
  chex.assert_tree_all_finite((got_params, got))
  assert want[-1]["grad_norm"][0] > 0
  for a, b in zip(jax.tree.leaves((got_params, got)), jax.tree.leaves((want_params, want))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_pack_groups_refuses_sizes_not_split_over_the_devices(setup):
  _, batch, _ = setup
  with pytest.raises(ValueError, match=r"multiples of devices=2"):
    length_groups.pack_groups([batch], (3, 5), 2, W)


SHARDED_SCRIPT = r"""
import os
import sys
sys.path.insert(0, {root!r})
import chex, jax, optax
from tests.test_length_groups import KW, T, W, make_setup
from transfer_meta import length_groups, sharding, step, train
from transfer_meta.learners import get_learner

assert len(jax.devices()) == 2
model, batch, example = make_setup()
learner, tx = get_learner("fomaml", model, **KW["fomaml"]), optax.adam(1e-2)
mesh2, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
fn, build, _ = length_groups.step_parts(learner, tx, 2, 2, T, 2, W)  # the trainer's path: chunks of 2, 2 partial sums
step2 = train.jit_meta_step(fn, mesh2)
step1 = train.jit_meta_step(step.meta_step_fn(learner, tx), mesh1)
keys = train.seed_keys([0])[0]
s2 = train.make_init(learner, tx, example, mesh2)[1](keys)
s1 = train.make_init(learner, tx, example, mesh1)[1](keys)
hlo = step2.lower(s2, sharding.shard_batch(build([batch]), mesh2, 1), keys).compile().as_text()
moves = [op for op in ("all-to-all", "all-gather", "collective-permute") if op in hlo]
assert not moves and "all-reduce" in hlo, moves  # groups are local slices; only the gradient sum is reduced
for _ in range(2):
  placed = sharding.shard_batch(build([batch]), mesh2, 1)
  assert all(len(b.addressable_shards) == 2 for b in jax.tree.leaves(placed)) and len(jax.tree.leaves(placed)) == 3
  s2, m2 = step2(s2, placed, keys)
  s1, m1 = step1(s1, sharding.shard_batch(train.stack_seed_batches([batch]), mesh1, 1), keys)
  chex.assert_trees_all_close(m2, m1, rtol=1e-5, atol=1e-6)
chex.assert_trees_all_close(s2["meta_params"], s1["meta_params"], rtol=1e-5, atol=1e-6)
print("GROUPED_SHARDED_OK")
"""


def test_grouped_chunked_step_on_2_fake_devices_equals_the_ungrouped_step_on_one():
  import os

  from xla_flags import run_script  # noqa: PLC0415 (its subprocess script imports this module)

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = run_script(SHARDED_SCRIPT.format(root=root), devices=2, cwd=root)
  assert done.returncode == 0 and "GROUPED_SHARDED_OK" in done.stdout, done.stderr[-4000:]
