"""Task batches: bucket rule, padding never changes content, iterator determinism and restore."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from transfer_meta.data.examples import KEYS, FeatureMatrices, gather_rows
from transfer_meta.data.interactions import UNKNOWN, FeatureTable, Interactions
from transfer_meta.data.split import TaskSet
from transfer_meta.data.tasks import DEFAULT_BUCKETS, TaskData, TaskIterator, bucket, eval_batches

U, I = 6, 40
BUCKETS = (2, 4, 8)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  pairs = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, U, 400), rng.integers(0, I, 400))})
  user = np.array([p[0] for p in pairs], np.int32)
  item = np.array([p[1] for p in pairs], np.int32)
  users = FeatureTable(
    U, categorical={"age": rng.integers(0, 3, U).astype(np.int32)}, vocab={"age": (UNKNOWN, "a", "b")}
  )
  items = FeatureTable(
    I,
    multi_hot={"genre": (rng.random((I, 3)) < 0.5).astype(np.float32)},
    dense={"emb": rng.normal(size=(I, 2)).astype(np.float32)},
    vocab={"genre": ("x", "y", "z")},
  )
  return Interactions(
    "tasks-fixture",
    user,
    item,
    rng.integers(1, 6, len(pairs)).astype(np.float32),
    np.arange(len(pairs), dtype=np.int64),
    users,
    items,
    np.arange(U).astype(object),
    np.arange(I).astype(object),
  )


@pytest.fixture(scope="module")
def task_set(data):
  """7 tasks with support sizes 1..13 (task 6 > largest bucket 8) and query sizes 1..3, disjoint rows."""
  rng = np.random.default_rng(1)
  rows = rng.permutation(len(data))
  support, query, start = [], [], 0
  for s, q in [(1, 1), (3, 2), (5, 3), (2, 2), (8, 1), (4, 3), (13, 2)]:
    support.append(rows[start : start + s])
    query.append(rows[start + s : start + s + q])
    start += s + q
  return TaskSet.from_lists(np.arange(100, 107), support, query)


def test_bucket_rule():
  assert [bucket(n) for n in (0, 1, 5, 6, 10, 11, 50, 51, 200)] == [5, 5, 5, 10, 10, 20, 50, 100, 200]
  assert [bucket(n) for n in (201, 400, 401)] == [400, 400, 600]  # past the largest: multiples of 200
  assert DEFAULT_BUCKETS == (5, 10, 20, 50, 100, 200)
  assert [bucket(n, BUCKETS) for n in (1, 3, 8, 9, 17)] == [2, 4, 8, 16, 24]
  for bad in ((), (4, 2), (0, 2), (2, 2)):
    with pytest.raises(ValueError, match="buckets"):
      bucket(1, bad)
  with pytest.raises(ValueError, match="negative"):
    bucket(-1)


def assert_examples_equal(a: dict, b: dict):
  assert sorted(a) == sorted(b) == sorted(KEYS)
  for k in KEYS:
    assert a[k].dtype == b[k].dtype, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_matches_gather_rows(data, task_set):
  """Each task of a batch equals the independent gather_rows path, padded to the batch's bucket."""
  feats = FeatureMatrices.from_interactions(data)
  target = data.rating * 2
  td = TaskData.build(data, task_set, target, feats, buckets=BUCKETS)
  for indices, n_tasks in (([0, 1], 2), ([2, 0, 4], 5), ([6], 3), (list(range(7)), 8)):
    b = td.batch(np.array(indices), n_tasks)
    s_len = bucket(int(task_set.support_sizes()[indices].max()), BUCKETS)
    q_len = bucket(int(task_set.query_sizes()[indices].max()), BUCKETS)
    assert b["support"]["user"].shape == (n_tasks, s_len) and b["query"]["item_multi"].shape == (n_tasks, q_len, 3)
    np.testing.assert_array_equal(b["task_mask"], np.arange(n_tasks) < len(indices))
    np.testing.assert_array_equal(b["task_id"], [100 + t for t in indices] + [-1] * (n_tasks - len(indices)))
    for j, t in enumerate(indices):
      for part, rows, length in (("support", task_set.support(t), s_len), ("query", task_set.query(t), q_len)):
        want = gather_rows(data, feats, target, rows, length)
        assert_examples_equal({k: v[j] for k, v in b[part].items()}, want)
        assert int(b[part]["mask"][j].sum()) == len(rows)
    for j in range(len(indices), n_tasks):  # padded tasks: nothing real in them
      for part in ("support", "query"):
        assert not b[part]["mask"][j].any() and not b[part]["target"][j].any()
        assert not b[part]["user"][j].any() and not b[part]["item"][j].any()


def test_padding_leaves_masked_loss_unchanged(data, task_set):
  """A masked loss of fixed scores is the same whatever the batch padding (bucket width, padded tasks)."""
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  wide = TaskData.build(data, task_set, data.rating, buckets=(32,))

  def losses(batch):
    x = batch["support"]
    err = np.square(0.1 * x["item"] + 0.01 * x["user"] - x["target"]) * x["mask"]
    per_task = err.sum(1) / np.maximum(x["mask"].sum(1), 1)
    return per_task[batch["task_mask"]]

  tight = losses(td.batch(np.arange(7)))
  np.testing.assert_allclose(losses(wide.batch(np.arange(7), 11)), tight, rtol=1e-6)
  np.testing.assert_allclose([losses(td.batch([t], 4))[0] for t in range(7)], tight, rtol=1e-6)
  by_hand = [
    np.mean(np.square(0.1 * data.item[r] + 0.01 * data.user[r] - data.rating[r]))
    for r in (task_set.support(t) for t in range(7))
  ]
  np.testing.assert_allclose(tight, by_hand, rtol=1e-5)


def test_batch_errors(data, task_set):
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  with pytest.raises(ValueError, match="task indices"):
    td.batch(np.array([7]))
  with pytest.raises(ValueError, match="n_tasks"):
    td.batch(np.array([0, 1, 2]), 2)
  with pytest.raises(ValueError, match="target"):
    TaskData.build(data, task_set, data.rating[:-1])


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a: list, b: list):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["task_id"], y["task_id"])
    np.testing.assert_array_equal(x["task_mask"], y["task_mask"])
    for part in ("support", "query"):
      assert_examples_equal(x[part], y[part])


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_iterator_epochs_and_determinism(data, task_set, drop_remainder):
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  it = TaskIterator(td, batch_size=3, seed=5, drop_remainder=drop_remainder)
  per_epoch = 2 if drop_remainder else 3  # 7 tasks: 3 + 3 (+ 1 padded to 3)
  epochs = []
  for _ in range(3):
    ids = np.concatenate([b["task_id"] for b in take(it, per_epoch)])
    real = ids[ids >= 0]
    if drop_remainder:
      assert len(real) == 6 and len(set(real)) == 6
    else:
      assert sorted(real) == list(range(100, 107)) and (ids == -1).sum() == 2
    epochs.append(tuple(real))
  assert len(set(epochs)) > 1  # each epoch draws its own permutation
  assert_batches_equal(
    take(TaskIterator(td, 3, seed=5, drop_remainder=drop_remainder), 7),
    take(TaskIterator(td, 3, seed=5, drop_remainder=drop_remainder), 7),
  )
  orders = {tuple(np.concatenate([b["task_id"] for b in take(TaskIterator(td, 3, s), 3)])) for s in range(4)}
  assert len(orders) > 1  # different seeds, different orders


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_iterator_restore(data, task_set, drop_remainder):
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  reference = take(TaskIterator(td, 3, seed=2, drop_remainder=drop_remainder), 12)
  for stop in (0, 1, 2, 3, 5, 8):  # inside an epoch and at epoch boundaries
    it = TaskIterator(td, 3, seed=2, drop_remainder=drop_remainder)
    take(it, stop)
    state = dict(it.state())
    resumed = TaskIterator(td, 3, seed=2, drop_remainder=drop_remainder)
    resumed.restore(state)
    assert resumed.state() == state
    assert_batches_equal(take(resumed, 12 - stop), reference[stop:])
  with pytest.raises(ValueError, match="state"):
    TaskIterator(td, 3, seed=2).restore({"epoch": 0, "position": 7})


def test_iterator_slots_pad_each_batch_with_masked_tasks(data, task_set):
  """`slots` (a chunked step's padded task count) appends masked tasks and changes nothing else."""
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  plain, padded = take(TaskIterator(td, 3, seed=5), 4), take(TaskIterator(td, 3, seed=5, slots=5), 4)
  for a, b in zip(plain, padded):
    assert b["task_mask"].shape == (5,) and not b["task_mask"][3:].any()
    np.testing.assert_array_equal(b["task_id"][3:], [-1, -1])
    np.testing.assert_array_equal(b["task_id"][:3], a["task_id"])
    for part in ("support", "query"):
      assert_examples_equal(jax.tree.map(lambda x: x[:3], b[part]), a[part])
      assert not b[part]["mask"][3:].any()
  with pytest.raises(ValueError, match="slots=2 must be >= batch_size=3"):
    TaskIterator(td, 3, seed=0, slots=2)


def test_batch_gathers_real_slots_and_zeroes_padded_ones(data, task_set):
  """A batch of real slots is the padded arrays' rows (no masking pass); padded slots hold ids 0, target 0, no mask."""
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  idx = np.array([2, 0, 1])
  full, padded = td.batch(idx), td.batch(idx, 5)
  for part in ("support", "query"):
    width = full[part]["mask"].shape[1]
    for k in ("user", "item", "target", "mask"):
      np.testing.assert_array_equal(full[part][k], getattr(td, part)[k][idx, :width])
      np.testing.assert_array_equal(padded[part][k][:3], full[part][k])
      assert not padded[part][k][3:].any()


def test_iterator_errors(data, task_set):
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  with pytest.raises(ValueError, match="batch_size"):
    TaskIterator(td, 8, seed=0, drop_remainder=True)
  with pytest.raises(ValueError, match="batch_size"):
    TaskIterator(td, 0, seed=0)
  with pytest.raises(ValueError, match="seed"):
    TaskIterator(td, 2, seed=-1)


def test_eval_batches(data, task_set):
  td = TaskData.build(data, task_set, data.rating, buckets=BUCKETS)
  batches = list(eval_batches(td, 3))
  assert len(batches) == 3 and all(b["task_mask"].shape == (3,) for b in batches)
  ids = np.concatenate([b["task_id"] for b in batches])
  np.testing.assert_array_equal(ids, [*range(100, 107), -1, -1])
  assert_batches_equal([batches[1]], [td.batch(np.arange(3, 6), 3)])
  assert sum(int(b["query"]["mask"].sum()) for b in batches) == int(task_set.query_sizes().sum())
