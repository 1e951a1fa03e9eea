"""Checkpointer: round trip, keep-N, item-only restore, and the corrupt/partial-latest fallback."""

from __future__ import annotations

import os
import shutil
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfer_meta.checkpoint import COMMIT_MARKER, Checkpointer, CorruptCheckpointWarning, abstract_tree, restore_item

ARRAYS = ("meta_params", "opt_state")
JSONS = ("extra",)


def _tree(step: int) -> dict:
  return {"w": jnp.full((3, 2), float(step)), "b": {"c": jnp.arange(4, dtype=jnp.int32) + step}}


def _abstract():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"meta_params": abstract_tree(_tree(0), device), "opt_state": abstract_tree(_tree(0), device)}


def _save_steps(directory, steps, keep=2) -> Checkpointer:
  ckpt = Checkpointer(directory, ARRAYS, JSONS, keep=keep)
  for s in steps:
    ckpt.save(s, {"meta_params": _tree(s), "opt_state": _tree(10 * s)}, {"extra": {"step": s, "it": [s, 1]}})
  return ckpt


def _corrupt_data_files(step_dir: str) -> int:
  """Overwrites every array data file under `step_dir` with garbage; returns how many."""
  n = 0
  for root, _, files in os.walk(step_dir):
    for f in files:
      if os.sep + "d" in root or f.endswith(".ocdbt"):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"not a checkpoint")
        n += 1
  return n


def test_round_trip_and_keep_n(tmp_path):
  ckpt = _save_steps(tmp_path / "ck", [1, 2, 3], keep=2)
  assert ckpt.steps() == [2, 3]
  step, items = ckpt.restore_latest(_abstract(), JSONS)
  assert step == 3
  chex.assert_trees_all_equal(items["meta_params"], _tree(3))
  chex.assert_trees_all_equal(items["opt_state"], _tree(30))
  assert items["extra"] == {"step": 3, "it": [3, 1]}
  assert items["meta_params"]["w"].sharding == _abstract()["meta_params"]["w"].sharding
  ckpt.close()


def test_restore_item_reads_only_that_item(tmp_path):
  _save_steps(tmp_path / "ck", [1, 2]).close()
  # Remove the other items of the latest step: restoring meta_params alone must not need them.
  for item in ("opt_state", "extra"):
    shutil.rmtree(tmp_path / "ck" / "2" / item)
  step, tree = restore_item(tmp_path / "ck", "meta_params", _abstract()["meta_params"])
  assert step == 2
  chex.assert_trees_all_equal(tree, _tree(2))
  step, tree = restore_item(tmp_path / "ck", "meta_params", _abstract()["meta_params"], step=1)
  chex.assert_trees_all_equal(tree, _tree(1))


def test_corrupt_latest_falls_back_with_warning_and_is_deleted(tmp_path):
  _save_steps(tmp_path / "ck", [1, 2]).close()
  assert _corrupt_data_files(str(tmp_path / "ck" / "2" / "meta_params")) > 0
  ckpt = Checkpointer(tmp_path / "ck", ARRAYS, JSONS, keep=2)
  with pytest.warns(CorruptCheckpointWarning, match="step 2"):
    step, items = ckpt.restore_latest(_abstract(), JSONS)
  assert step == 1
  chex.assert_trees_all_equal(items["meta_params"], _tree(1))
  assert items["extra"]["step"] == 1
  assert ckpt.steps() == [1]  # the bad step is gone, so a resumed run can save step 2 again
  ckpt.save(2, {"meta_params": _tree(5), "opt_state": _tree(6)}, {"extra": {"step": 2, "it": []}})
  assert ckpt.restore_latest(_abstract(), JSONS)[0] == 2
  ckpt.close()


def test_missing_commit_marker_counts_as_partial(tmp_path):
  _save_steps(tmp_path / "ck", [1, 2]).close()
  os.remove(tmp_path / "ck" / "2" / COMMIT_MARKER)
  ckpt = Checkpointer(tmp_path / "ck", ARRAYS, JSONS, keep=2)
  with pytest.warns(CorruptCheckpointWarning, match="commit marker"):
    step, _ = ckpt.restore_latest(_abstract(), JSONS)
  assert step == 1
  ckpt.close()


def test_corrupt_json_item_falls_back(tmp_path):
  _save_steps(tmp_path / "ck", [1, 2]).close()
  for root, _, files in os.walk(tmp_path / "ck" / "2" / "extra"):
    for f in files:
      if f != COMMIT_MARKER:
        with open(os.path.join(root, f), "w") as fh:
          fh.write("{truncated")
  ckpt = Checkpointer(tmp_path / "ck", ARRAYS, JSONS, keep=2)
  with pytest.warns(CorruptCheckpointWarning):
    assert ckpt.restore_latest(_abstract(), JSONS)[0] == 1
  ckpt.close()


def test_nothing_readable_returns_none(tmp_path):
  _save_steps(tmp_path / "ck", [1]).close()
  _corrupt_data_files(str(tmp_path / "ck" / "1"))
  ckpt = Checkpointer(tmp_path / "ck", ARRAYS, JSONS)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CorruptCheckpointWarning)
    assert ckpt.restore_latest(_abstract(), JSONS) is None
  assert Checkpointer(tmp_path / "empty", ARRAYS, JSONS).restore_latest(_abstract(), JSONS) is None


def test_bad_item_names_and_keep_are_refused(tmp_path):
  ckpt = Checkpointer(tmp_path / "ck", ARRAYS, JSONS)
  with pytest.raises(ValueError, match="checkpoint items"):
    ckpt.save(1, {"meta_params": _tree(1)}, {"extra": {}})
  with pytest.raises(ValueError, match="keep"):
    Checkpointer(tmp_path / "ck2", ARRAYS, JSONS, keep=0)
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    restore_item(tmp_path / "nowhere", "meta_params", _abstract()["meta_params"])


def test_abstract_tree_keeps_shapes_and_sets_sharding():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = abstract_tree({"a": np.zeros((2, 5), np.float32)}, device)
  assert abstract["a"].shape == (2, 5) and abstract["a"].dtype == np.float32
  assert abstract["a"].sharding == device
