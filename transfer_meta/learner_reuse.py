"""Reuse a learner another run has already trained identically, instead of training it again.

    results = train_and_evaluate(config, workdir, reuse_from=[earlier workdirs of the sweep])

Runs of a sweep often differ only in what a learner's training never reads: the transfer strategy and its
keywords (`experiments.strategies` trains the `none` row once per strategy, `experiments.ablate --sweep=a+b+c`
once per setting), the other learners of the run, the reference baselines. With `reuse_from` (a sequence, even
empty), `train_and_evaluate` records in DIR/learner_keys.json the key (`learner_key`) of every learner it finished,
and before training a learner looks in those workdirs, in order, for one that finished a learner of the same key:
it copies that run's last checkpoint of the learner (checkpoints/<learner>/<num_steps>/) and its metrics.jsonl
records (`take`), and `train.train_learner` restores the checkpoint at its last step, as a resumed run would
(exact resume: no step runs again). Its evaluation is copied too when the donor recorded one under the same key
(DIR/learner_evals.json, written only for values a JSON round trip keeps exactly), so the reusing run neither traces
nor runs the learner's evaluation programs again; else it is computed afresh. The run's results.json,
metrics.jsonl and checkpoints are then those of training it again, bit for bit (tests/test_strategies.py);
results.json's "train" says which learner came from where ("reused": {learner: workdir}) and keeps the seconds
its training took there.

The key is a sha256 over: the config without `REUSE_FREE` fields; the learner's name and keywords; the data
(`data_fingerprint`: every array and vocabulary of the `Interactions`); every seed's split manifest hash; the
device and process counts and the jax version. What it cannot see is a change of the code between the two runs,
as with `experiments.runner`'s reuse of a finished run: reuse workdirs written by the code you run. A workdir that
already holds a checkpoint of the learner resumes from it instead, and a multi-process run never reuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from transfer_meta import runlog
from transfer_meta.checkpoint import COMMIT_MARKER
from transfer_meta.data.interactions import FeatureTable, Interactions

log = logging.getLogger(__name__)

KEYS_FILE = "learner_keys.json"
EVALS_FILE = "learner_evals.json"  # {learner: {"key": learner key, "evaluated": [per-seed {set: {metric: value}}]}}
# Config fields no learner's training reads: the strategy (trained after the learners), which learners the run
# trains (the learner's own name and keywords are keyed apart), the reference baselines, the progress bar, the plots.
REUSE_FREE = (
  "strategy_name",
  "strategy",
  "learner_name",
  "learner",
  "compare_learners",
  "compare_kwargs",
  "baselines",
  "progress",
  "plots",
)


def _update(digest, value) -> None:
  """Feeds one field into `digest`: arrays by dtype, shape and bytes (object arrays by their strings)."""
  if isinstance(value, FeatureTable):
    digest.update(f"table:{value.n}".encode())
    for field in ("categorical", "multi_hot", "dense", "text", "vocab"):
      for name, v in getattr(value, field).items():  # sorted by name (FeatureTable sorts its mappings)
        digest.update(f"{field}/{name}".encode())
        _update(digest, v)
  elif isinstance(value, np.ndarray):
    digest.update(f"{value.dtype.str}{value.shape}".encode())
    if value.dtype == object:
      digest.update(json.dumps([str(x) for x in value.tolist()]).encode())
    else:
      digest.update(np.ascontiguousarray(value).tobytes())
  else:
    digest.update(json.dumps(value, default=str).encode())


def data_fingerprint(data: Interactions) -> str:
  """sha256 (hex) of every field of `data`: ids, ratings, timestamps, side features, vocabularies, raw ids, domains."""
  digest = hashlib.sha256()
  for field in sorted(f.name for f in data.__dataclass_fields__.values()):
    digest.update(field.encode())
    _update(digest, getattr(data, field))
  return digest.hexdigest()


def learner_key(exp, name: str, kwargs: dict, fingerprint: str) -> str:
  """The identity of learner `name`'s training in experiment `exp` (module docstring), a sha256 hex digest.

  Args:
    exp: the run's `train.Experiment`.
    name, kwargs: the learner and its keywords (`train._learner_specs`).
    fingerprint: `data_fingerprint(exp.data)` (computed once per run).
  """
  config = {k: v for k, v in json.loads(exp.config.to_json()).items() if k not in REUSE_FREE}
  payload = {
    "config": config,
    "learner": name,
    "kwargs": kwargs,
    "data": fingerprint,
    "manifests": [st.split.manifest["hash"] for st in exp.seeds],
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "jax": jax.__version__,
  }
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_record(workdir: str, filename: str) -> dict:
  """The JSON dict a run in `workdir` recorded in `filename` ({} when there is no such file)."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def recorded_keys(workdir: str) -> dict:
  """{learner: key} of the learners a run in `workdir` finished ({} when it recorded none)."""
  return _read_record(workdir, KEYS_FILE)


def record(workdir: str, name: str, key: str) -> None:
  """Adds `name`: `key` to workdir's learner_keys.json (call once the learner's last checkpoint is written)."""
  keys = {**recorded_keys(workdir), name: key}
  runlog.atomic_write(os.path.join(workdir, KEYS_FILE), json.dumps(keys, indent=1, sort_keys=True))


def json_exact(value: Any) -> bool:
  """Whether `value` comes back from a JSON round trip unchanged (written without sorting keys, so dicts keep their
  order): dicts with str keys, lists, and str, int, float, bool or None leaves (exactly those types: a tuple would
  come back a list, a numpy scalar a Python number)."""
  if type(value) is dict:
    return all(type(k) is str and json_exact(v) for k, v in value.items())
  if type(value) is list:
    return all(json_exact(v) for v in value)
  return value is None or type(value) in (str, int, float, bool)


def recorded_evaluations(workdir: str) -> dict:
  """{learner: {"key", "evaluated"}} of the evaluations a run in `workdir` recorded ({} when none)."""
  return _read_record(workdir, EVALS_FILE)


def record_evaluation(workdir: str, name: str, key: str, evaluated: list) -> bool:
  """Adds learner `name`'s evaluation (`train.evaluate_trained`'s per-seed results) under `key` to workdir's
  learner_evals.json, if a JSON round trip keeps it exactly (`json_exact`); returns whether it was recorded."""
  if not json_exact(evaluated):
    return False
  evals = {**recorded_evaluations(workdir), name: {"key": key, "evaluated": evaluated}}
  runlog.atomic_write(os.path.join(workdir, EVALS_FILE), json.dumps(evals))  # key order kept: the tables' order
  return True


def take(
  name: str, key: str, num_steps: int, workdir: str, donors: Sequence[str], mlog: runlog.MetricsLog
) -> str | None:
  """Copies a finished learner of key `key` from the first of `donors` that holds one into `workdir`.

  Args:
    name: the learner.
    key: its `learner_key` in this run.
    num_steps: its training steps (the donor's last checkpoint must be this step, committed).
    workdir: this run's directory; nothing is copied when it holds checkpoints/<name> already (a resume).
    donors: workdirs of other runs, searched in order (this workdir itself is skipped).
    mlog: this run's metrics log, which gets the donor's records of the learner.
  Returns:
    The donor workdir the learner came from, or None (train it).
  """
  target = os.path.join(workdir, "checkpoints", name)
  if jax.process_count() > 1 or (os.path.isdir(target) and os.listdir(target)):
    return None
  for donor in donors:
    if os.path.abspath(donor) == os.path.abspath(workdir) or recorded_keys(donor).get(name) != key:
      continue
    src = os.path.join(donor, "checkpoints", name, str(num_steps))
    if not os.path.isfile(os.path.join(src, COMMIT_MARKER)):
      log.warning("%s: %s records learner %r but has no committed step %d; not reused", workdir, donor, name, num_steps)
      continue
    records = []
    with open(os.path.join(donor, "metrics.jsonl")) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a kill of the donor after this learner (its own records are whole)
    shutil.copytree(src, os.path.join(target, str(num_steps)))
    for rec in records:
      if rec.get("learner") == name and rec.get("step", 0) <= num_steps:
        mlog.write(rec)
    log.info("%s: reused the finished training of %s (same learner key %s)", name, donor, key[:12])
    return donor
  return None


class Reuse:
  """One run's reuse of other runs' learners (`train_and_evaluate(..., reuse_from=...)`); inert when `donors` is
  None (no fingerprint, no file).

  Args:
    exp: the run's `train.Experiment`.
    workdir: the run's directory.
    donors: None (off), or the workdirs to search, in order (empty: only record this run's keys).
    mlog: the run's metrics log.
  """

  def __init__(self, exp, workdir: str, donors: Sequence[str] | None, mlog: runlog.MetricsLog):
    self.exp, self.workdir, self.mlog = exp, workdir, mlog
    self.donors = None if donors is None else [str(d) for d in donors]
    self.fingerprint = None if donors is None else data_fingerprint(exp.data)
    self.reused: dict[str, str] = {}
    self._keys: dict[str, str] = {}
    self._evaluations: dict[str, list] = {}

  def key(self, name: str, kwargs: dict) -> str:
    if name not in self._keys:
      self._keys[name] = learner_key(self.exp, name, kwargs, self.fingerprint)
    return self._keys[name]

  def take(self, name: str, kwargs: dict) -> str | None:
    """Before training `name`: copies it from a donor (`take`); returns the donor or None."""
    if self.donors is None:
      return None
    donor = take(name, self.key(name, kwargs), self.exp.config.num_steps, self.workdir, self.donors, self.mlog)
    if donor is not None:
      self.reused[name] = donor
      recorded = recorded_evaluations(donor).get(name)
      if recorded is not None and recorded["key"] == self.key(name, kwargs):
        self._evaluations[name] = recorded["evaluated"]
    return donor

  def evaluation(self, name: str) -> list | None:
    """The evaluation of `name` copied from its donor by `take` (None: evaluate it)."""
    return self._evaluations.get(name)

  def record(self, name: str, kwargs: dict) -> None:
    """After `name` finished training (or was restored at its last step): records its key in the workdir."""
    if self.donors is not None:
      record(self.workdir, name, self.key(name, kwargs))

  def record_evaluation(self, name: str, kwargs: dict, evaluated: list) -> None:
    """After `name` was evaluated: records the evaluation in the workdir for later runs (`record_evaluation`)."""
    if self.donors is not None:
      record_evaluation(self.workdir, name, self.key(name, kwargs), evaluated)

  def results_entry(self) -> dict[str, Any]:
    """What results.json's "train" gains: {"reused": {learner: donor workdir}} when any learner was reused."""
    return {"reused": dict(self.reused)} if self.reused else {}
