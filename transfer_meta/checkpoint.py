"""Orbax checkpoints of a training run: array items and JSON items per step, keep-N, corrupt-latest fallback.

Layout (one Orbax `CheckpointManager` directory per trained learner):

    DIR/checkpoints/<learner>/<step>/meta_params/       the meta-initialisation (serving restores only this)
                                     best_meta_params/  best-so-far on the selection metric
                                     opt_state/         optimiser state
                                     extra/             JSON: step, data-iterator states, best metric, ...
                                     config/            JSON: the run's config

Array items are restored against an abstract tree (`jax.ShapeDtypeStruct`s carrying shardings), so a
restore places every leaf where the trainer wants it. A step is trusted only when its commit marker
(`commit_success.txt`, written by Orbax as the last act of a save) and every expected item are present
and the restore succeeds; otherwise it is deleted with a warning and the previous step is tried.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp

COMMIT_MARKER = "commit_success.txt"


class CorruptCheckpointWarning(UserWarning):
  """A checkpoint step was unreadable or partial and was skipped."""


def abstract_tree(tree, sharding=None):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs), each with `sharding` (or its own)."""

  def one(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

  return jax.tree.map(one, tree)


class Checkpointer:
  """Saves and restores named items per step under `directory`, keeping the latest `keep` steps.

  Args:
    directory: where step subdirectories go (created when missing).
    array_items: names of pytree-of-array items (saved with `StandardSave`).
    json_items: names of JSON-serialisable dict items.
    keep: how many of the most recent steps to keep.
  """

  def __init__(
    self, directory: str | os.PathLike, array_items: tuple[str, ...], json_items: tuple[str, ...] = (), keep: int = 2
  ):
    if keep < 1:
      raise ValueError(f"keep (checkpoints to keep) must be >= 1, got {keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.array_items = tuple(array_items)
    self.json_items = tuple(json_items)
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
      enable_async_checkpointing=False,
      create=True,
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Steps present on disk, ascending (committed or not)."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, arrays: dict, json: dict | None = None) -> None:
    """Writes one step (blocking: when this returns, the step is committed on disk)."""
    json = json or {}
    self._check_names(arrays, json)
    args = {k: ocp.args.StandardSave(v) for k, v in arrays.items()}
    args.update({k: ocp.args.JsonSave(v) for k, v in json.items()})
    self._manager.save(int(step), args=ocp.args.Composite(**args))
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract: dict, json_names: tuple[str, ...] = ()) -> dict:
    """Restores `step`: array items named by `abstract` (name -> abstract tree) and `json_names`.

    Raises:
      FileNotFoundError: the step or one of the items is missing, or it lacks its commit marker.
      Exception: whatever Orbax raises on unreadable files.
    """
    self._check_complete(step, tuple(abstract) + tuple(json_names))
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    args.update({k: ocp.args.JsonRestore() for k in json_names})
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**args))
    return {k: restored[k] for k in args}

  def restore_latest(self, abstract: dict, json_names: tuple[str, ...] = ()) -> tuple[int, dict] | None:
    """Restores the newest readable step, deleting (with a warning) newer steps that fail.

    Returns:
      (step, items) or None when no readable step exists.
    """
    for step in reversed(self.steps()):
      try:
        return step, self.restore(step, abstract, json_names)
      except Exception as e:  # any failure to read a step means: fall back to the previous one
        msg = (
          f"checkpoint step {step} in {self.directory} is corrupt or partial "
          f"({type(e).__name__}: {str(e)[:300]}); deleting it and trying the previous step"
        )
        warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
        logging.warning(msg)
        self._manager.delete(step)
    return None

  def close(self) -> None:
    self._manager.close()

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def _check_complete(self, step: int, names: tuple[str, ...]) -> None:
    path = self._step_dir(step)
    if not os.path.isfile(os.path.join(path, COMMIT_MARKER)):
      raise FileNotFoundError(f"{path} has no commit marker {COMMIT_MARKER!r} (save interrupted)")
    missing = [n for n in names if not os.path.isdir(os.path.join(path, n))]
    if missing:
      raise FileNotFoundError(f"{path} lacks items {missing}")

  def _check_names(self, arrays: dict, json: dict) -> None:
    if set(arrays) != set(self.array_items) or set(json) != set(self.json_items):
      raise ValueError(
        f"checkpoint items must be arrays {sorted(self.array_items)} and json "
        f"{sorted(self.json_items)}, got {sorted(arrays)} and {sorted(json)}"
      )


def restore_item(directory: str | os.PathLike, item: str, abstract, step: int | None = None):
  """Restores one array item (e.g. 'meta_params') of a finished run without touching the others.

  Args:
    directory: a `Checkpointer` directory.
    item: the item name.
    abstract: abstract tree (ShapeDtypeStructs with shardings) of the item.
    step: which step; default the latest readable one (falls back past corrupt steps, read-only).
  Returns:
    (step, tree).
  """
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoints at {directory}")
  options = ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options) as manager:
    steps = sorted(manager.all_steps()) if step is None else [int(step)]
    errors = []
    for s in reversed(steps):
      path = os.path.join(directory, str(s))
      if not os.path.isfile(os.path.join(path, COMMIT_MARKER)):
        errors.append(f"step {s}: no commit marker")
        continue
      try:
        restored = manager.restore(s, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}))
        return s, restored[item]
      except Exception as e:  # fall back to an older step
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
        warnings.warn(
          f"checkpoint step {s} of {directory} unreadable; trying an older one", CorruptCheckpointWarning, stacklevel=2
        )
  raise FileNotFoundError(f"no readable {item!r} checkpoint in {directory}: {errors or 'no steps'}")
