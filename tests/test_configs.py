"""Experiment configs: locked, complete, documented, their variants and sweeps valid, and every component they name
resolves (dataset, protocol, metrics, model, learners and adapt sets) without training."""

from __future__ import annotations

import glob
import inspect
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from transfer_meta import config_files, train
from transfer_meta.data import load_dataset
from transfer_meta.learners import get_learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
  if not os.path.basename(p).startswith("_")
)
SMALL = {"smoke_synthetic": "tiny"}  # the seconds-long variant of each config (default 'smoke')


def _module(name: str):
  return config_files.load_module(os.path.join(ROOT, "configs", f"{name}.py"), f"cfg_{name}")


def _apply(config: ml_collections.ConfigDict, overrides: dict) -> None:
  """Sets dotted keys on a locked config: a key that does not exist raises."""
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    setattr(node, last, value)


def test_the_required_configs_exist():
  assert {"smoke_synthetic", "melu_ml100k", "recbole_metarec_ml100k", "item_cold_ml100k"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_locked_complete_and_documented(name):
  module = _module(name)
  config = module.get_config()
  assert config.is_locked
  assert set(config.keys()) == set(train.default_config().keys())
  with pytest.raises(AttributeError):
    config.learner_nam = "maml"  # a typo fails instead of being ignored
  config.num_steps = 7  # point overrides of existing fields work
  doc = module.__doc__
  assert f"python -m transfer_meta.main --config=configs/{name}.py --workdir=" in doc
  assert "2 CPU cores" in doc and "TODO" not in doc
  with pytest.raises(ValueError, match="unknown config arg"):
    module.get_config("no-such-variant")


@pytest.mark.parametrize("name", CONFIGS)
def test_sweep_overrides_apply_to_the_locked_config(name):
  module = _module(name)
  sweep = module.sweep()
  assert sweep and all(isinstance(o, dict) and o for o in sweep)
  for overrides in sweep:
    config = module.get_config()
    _apply(config, overrides)
    for key, value in overrides.items():
      got = config
      for part in key.split("."):
        got = got[part]
      assert got == value or (isinstance(value, dict) and got.to_dict() == value), key


@pytest.fixture(scope="module")
def datasets() -> dict:
  """Datasets loaded in this module, by `_data_key`: configs naming the same data share one load (loading ML-1M
  costs ~3.5 CPU-s, `ml-1m+ml-100k` ~9); freed at the module's end."""
  return {}


SESSION_DATA = {"ml-1m": "ml1m", "ml-100k": "ml100k"}  # tests/conftest.py's session fixtures: load_dataset(name)


def _data_key(name: str, kwargs: dict) -> str:
  """`load_dataset(name, **kwargs)`'s arguments with its defaults filled in, as a key: two configs that spell the
  same load differently (`{}` or `text_features=False`) get one key."""
  bound = inspect.signature(load_dataset).bind(name, **kwargs)
  bound.apply_defaults()
  return json.dumps(bound.arguments, sort_keys=True, default=repr)


def _load(name: str, kwargs: dict, datasets: dict, request: pytest.FixtureRequest):
  """The config's dataset, as `build_experiment` would load it: from the session's fixtures when it is one of
  theirs (shared with every other test file), else loaded once per module."""
  key = _data_key(name, kwargs)
  if key not in datasets:
    fixture = SESSION_DATA.get(name) if key == _data_key(name, {}) else None
    datasets[key] = request.getfixturevalue(fixture) if fixture else load_dataset(name, **kwargs)
  return datasets[key]


@pytest.mark.parametrize("name", CONFIGS)
def test_components_resolve(name, datasets, request):
  config = _module(name).get_config(SMALL.get(name, "smoke"))
  data = _load(config.dataset_name, config.dataset.to_dict(), datasets, request)
  exp = train.build_experiment(config, data)  # protocol per seed, task sets, metric cutoffs, mesh
  assert len(exp.seeds) == config.seeds
  batch = exp.seeds[0].tasks["train"].batch(np.arange(1))
  example = {"support": train.unstack(batch["support"], 0), "query": train.unstack(batch["query"], 0)}
  for learner_name, kwargs in train._learner_specs(config):
    learner = get_learner(learner_name, exp.model, **kwargs)
    params = jax.eval_shape(exp.model.init, jax.random.key(0), example["query"], example["support"])
    jax.eval_shape(learner.init, jax.random.key(0), params)  # adapt regexes must match parameters


def test_command_line_typo_fails_before_training(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "transfer_meta.main",
      "--config=configs/smoke_synthetic.py:tiny",
      f"--workdir={tmp_path}",
      "--config.learner.inner_stepz=3",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode != 0 and "inner_stepz" in done.stderr
  assert not os.path.exists(tmp_path / "results.json")


def test_sibling_loads_a_config_next_to_the_caller_and_names_a_missing_one():
  anchor = os.path.join(ROOT, "configs", "peers_ml1m.py")
  module = config_files.sibling(anchor, "peers_ml100k")
  assert module.get_config("smoke").seeds == _module("peers_ml100k").get_config("smoke").seeds
  assert callable(module.table_rows)
  with pytest.raises(FileNotFoundError, match=r"config 'no_such_config'.*configs in .*'peers_ml100k'"):
    config_files.sibling(anchor, "no_such_config")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    config_files.load_module(os.path.join(ROOT, "configs", "nope.py"), "cfg_nope")
