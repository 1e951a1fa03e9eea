"""What `reproduce` and `ablate` share: find a config, override it by dotted keys, run it (or reuse a finished
run), read a run's results into table values, and record where the numbers came from.

    config = load_config("melu_ml100k:smoke")                     # configs/melu_ml100k.py, get_config("smoke")
    config = apply_overrides(config, {"seeds": 2, "learner.inner_steps": 1})   # a locked copy; typos raise
    results, seconds = run(config, "runs/ablate/melu_ml100k/inner_steps=1")
    values = method_values(results)                                # {method: {scenario: {metric: [per seed]}}}
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import jax
import ml_collections

from transfer_meta import compile_cache, config_files
from transfer_meta import results as results_lib
from transfer_meta.data.interactions import Interactions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")


def config_module(spec: str) -> tuple[ModuleType, str | None]:
  """The config module named by `spec` and its get_config argument.

  Args:
    spec: 'melu_ml100k', 'melu_ml100k:smoke' or a path 'configs/melu_ml100k.py[:smoke]'.
  Returns:
    (module with get_config and usually sweep, the argument or None).
  """
  path, arg = config_path(spec), spec.partition(":")[2]
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
    raise ValueError(f"config {spec!r}: no file {path}; configs in {CONFIG_DIR}: {known}")
  return config_files.load_module(path, f"config_{config_name(spec)}"), (arg or None)


def config_path(spec: str) -> str:
  """The file of a config spec: 'melu_ml100k:smoke' -> <repo>/configs/melu_ml100k.py; a '.py' path is kept."""
  name = spec.partition(":")[0]
  return name if name.endswith(".py") else os.path.join(CONFIG_DIR, f"{name}.py")


def config_name(spec: str) -> str:
  """A file-name-safe name of a config spec: 'configs/smoke_synthetic.py:tiny' -> 'smoke_synthetic-tiny'."""
  name, _, arg = spec.partition(":")
  name = os.path.basename(name)
  name = name[:-3] if name.endswith(".py") else name
  return f"{name}-{arg}" if arg else name


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config named by `spec` (see `config_module`): a locked ConfigDict."""
  module, arg = config_module(spec)
  return module.get_config(arg)


def parse_value(text: str) -> Any:
  """A command-line value: a Python literal ('3', '0.1', 'True', '(1, 2)', "{'a': 1}") or else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_sets(items: Sequence[str]) -> dict:
  """['a.b=1', 'c=x'] -> {'a.b': 1, 'c': 'x'} (values by `parse_value`)."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--set {item!r}: want key=value, e.g. --set num_steps=100")
    out[key.strip()] = parse_value(value.strip())
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked copy of `config` with each dotted key set to its value.

  A key that does not exist in `config` raises ValueError naming it and the valid keys at that level; a value of
  the wrong type raises (ml_collections' type safety). A dict value replaces a whole sub-config (e.g. a backbone's
  kwargs `{"model": {}}`).

  Args:
    config: a (locked) experiment config; left unchanged.
    overrides: {"learner.inner_steps": 3, "support_cap": 5, ...}.
  Returns:
    The overridden copy, locked.
  """
  out = copy.deepcopy(config)
  out.lock()
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = out
    for i, part in enumerate(path):
      child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(child, ml_collections.ConfigDict):
        raise ValueError(
          f"override {key!r}: {'.'.join(path[: i + 1])!r} is not a sub-config of the config "
          f"(keys there: {sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []})"
        )
      node = child
    if last not in node:
      raise ValueError(
        f"override {key!r}: no field {last!r} in the config (keys there: {sorted(node.keys())}); "
        "a locked config refuses new keys, so check the spelling"
      )
    try:
      setattr(node, last, value)
    except (TypeError, AttributeError) as e:
      raise ValueError(f"override {key!r}={value!r}: {e}") from e
  out.unlock()  # lock() on a locked dict returns early: unlock first so a replaced sub-config is locked too
  out.lock()
  return out


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as the trainer writes it to `config.json`."""
  return json.loads(config.to_json())


def _finished(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The results of a finished run of exactly `config` in `workdir`, None if it has not finished there.

  Raises ValueError when `workdir` holds a run of a different config (stale results must not be reused).
  """
  results_path, config_path = os.path.join(workdir, "results.json"), os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      old = json.load(f)
    new = config_json(config)
    diff = results_lib.config_diff(old, new)
    if diff:
      raise ValueError(
        f"{workdir} holds a run of a different config (keys {diff}); delete it or write the runs elsewhere (--runs=DIR)"
      )
  if not os.path.exists(results_path):
    return None
  with open(results_path) as f:
    return json.load(f)


WALL_FILE = "wall_time.json"  # written beside results.json: a reused run still reports what it cost


class RunInfo(NamedTuple):
  results: dict  # the run's results.json
  wall_seconds: float | None  # train_and_evaluate wall time when the run was made (None if unknown)
  reused: bool  # True when a finished run was reused rather than run now


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  data: Interactions | None = None,
  reuse_from: Sequence[str] | None = None,
) -> RunInfo:
  """Runs `train_and_evaluate(config, workdir)`, or reuses the results of a finished run of the same config.

  A workdir that holds a run of a different config raises ValueError; an unfinished run of the same config
  resumes from its checkpoints. `reuse_from` (the workdirs of a sweep's earlier runs) lets the run copy a learner
  those runs trained identically instead of training it again (`transfer_meta.learner_reuse`: same results).
  """
  from transfer_meta.train import train_and_evaluate

  results = _finished(config, workdir)
  wall_path = os.path.join(workdir, WALL_FILE)
  if results is not None:
    wall = None
    if os.path.exists(wall_path):
      with open(wall_path) as f:
        wall = json.load(f).get("wall_seconds")
    return RunInfo(results, wall, True)
  start, cpu, load = time.time(), time.process_time(), os.getloadavg()[0]
  results = train_and_evaluate(config, workdir, data=data, reuse_from=reuse_from)
  wall = time.time() - start
  # CPU seconds of this process over the run (every thread), and the 1-minute load average at start and end
  cost = {"cpu_seconds": round(time.process_time() - cpu, 1), "load_avg_1m": [load, os.getloadavg()[0]]}
  with open(wall_path, "w") as f:
    json.dump({"wall_seconds": round(wall, 3), **cost, "machine": machine()}, f)
  return RunInfo(results, wall, False)


def describe_wall(info: RunInfo) -> str:
  """'62.3 s', '62.3 s (reused run)', or 'reused run' when its wall time is unknown."""
  if info.wall_seconds is None:
    return "reused run"
  return f"{info.wall_seconds:.1f} s" + (" (reused run)" if info.reused else "")


def method_values(results: Mapping, baselines: bool | Sequence[str] = True) -> dict:
  """Per-seed values of every method of a run: the learner, its comparisons, then the baselines.

  Args:
    results: a results.json dict.
    baselines: True for all of the run's baselines, False for none, or the names to keep (in the run's order).
  Returns:
    {method: {scenario: {metric: [value per seed]}}}, the input of `report.summarize`.
  """
  methods = {results["learner"]: results["metrics"], **results.get("comparisons", {})}
  run_baselines = results.get("baselines", {})
  if baselines is not True:
    keep = set(baselines or ())
    unknown = sorted(keep - set(run_baselines))
    if unknown:
      raise ValueError(f"baselines {unknown} are not in the run; it has {list(run_baselines)}")
    run_baselines = {k: v for k, v in run_baselines.items() if k in keep}
  methods.update(run_baselines)
  return {
    m: {s: {k: list(v["per_seed"]) for k, v in per.items()} for s, per in scen.items()} for m, scen in methods.items()
  }


def commit() -> str:
  """HEAD's short hash, '+dirty' when the tree has uncommitted changes; 'unknown' outside a git checkout."""
  try:
    head = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+dirty" if dirty else "")


def machine() -> str:
  """'Linux-...-x86_64, 2 CPUs, jax 0.10.2 on 1 x cpu' — enough to compare wall times."""
  devices = jax.devices()
  return (
    f"{platform.platform(terse=True)} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
    f"{len(devices)} x {devices[0].device_kind}"
  )


def enable_compilation_cache(value: str) -> None:
  """Persistent XLA compilation cache (runs of a sweep share compiled programs): `value` 'auto' is the machine
  user's shared cache of runs (`compile_cache.default_dir`), '' leaves it off, anything else is a directory. The
  threshold is `transfer_meta.main`'s (an explicit JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS wins)."""
  compile_cache.enable(value)


def add_run_args(parser: argparse.ArgumentParser, runs_layout: str) -> None:
  """The options every experiment script shares: seeds, overrides, where runs and tables go, the XLA cache."""
  parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the config's)")
  parser.add_argument(
    "--set",
    dest="sets",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config field by dotted key for every run (repeatable), e.g. --set num_steps=100",
  )
  parser.add_argument("--runs", default="runs", help=f"runs root (workdirs under {runs_layout})")
  parser.add_argument("--out", default="experiments/results", help="directory of the tables")
  parser.add_argument(
    "--compilation_cache",
    default="auto",
    help="persistent XLA cache dir shared by the runs; 'auto': the user's shared cache of runs "
    "(<$TRANSFER_META_CACHE or ~/.cache/transfer_meta>/jax_compilation_cache/runs), '': off",
  )


def parse_run_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
  """`parser.parse_args` plus the checks of the shared options."""
  args = parser.parse_args(argv)
  if args.seeds is not None and args.seeds < 1:
    parser.error(f"--seeds={args.seeds} must be >= 1")
  return args
