"""The command line a newcomer meets: --help, factory keywords as config fields, clear errors, --dry_run,
and the CSV config end to end."""

from __future__ import annotations

import json
import os
import subprocess
import warnings

import jax
import numpy as np
import pytest

import transfer_meta as tm
from tests.forkrun import ForkServer
from tests.test_learners import FAST_COMPILE, LEARNER_MODELS, built_model, make_task, tiny_model
from transfer_meta import cli, compile_cache, keywords, learner_state, train
from transfer_meta.data.protocols import PROTOCOLS, common
from transfer_meta.learners import LEARNERS
from transfer_meta.models import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The suite's compile-cache threshold (tests/conftest.py sets 0) made explicit, for the check of main's cache flag.
SERVER = ForkServer(ROOT, env={**os.environ, compile_cache.MIN_COMPILE_ENV: "0"})


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _quick(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
  """`python -m transfer_meta.main ARGS` (--help, --dry_run, refusals and the CSV run): in a fork of a preloaded
  interpreter (tests/forkrun.py), ~0.2 instead of ~1.5 CPU-s each before the command's own work."""
  return SERVER.run(["transfer_meta.main", *args], ROOT, timeout=timeout)


def _dry(*args: str) -> dict:
  done = _quick(*args, "--workdir=/nonexistent/never-written", "--dry_run")
  assert done.returncode == 0, done.stderr[-2000:]
  text = done.stdout.split("dry run: ", 1)[1].rsplit("\nworkdir:", 1)[0]
  return json.loads(text)


def test_help_exits_0_and_lists_config_fields_with_defaults():
  done = _quick("--help")
  assert done.returncode == 0, done.stderr
  default = train.default_config()
  for key in ("num_steps", "batch_size", "compute_dtype", "min_tasks"):
    assert f"--config.{key}={default[key]!r}" in done.stdout
  assert "--workdir" in done.stdout and "--dry_run" in done.stdout
  # With a config file: that file's values, and every keyword of its learner's factory.
  done = _quick("--config=configs/melu_ml100k.py", "--help")
  assert done.returncode == 0, done.stderr
  assert "--config.learner.inner_lr=0.05  (float)" in done.stdout
  assert "--config.learner.adapt_regex=None  (str)" in done.stdout  # melu's: the model's adapt set
  assert "--config.protocol.year_cutoff=None  (int)" in done.stdout
  assert "--config.model.global_bias=3.5  (float)" in done.stdout


def test_readme_overrides_reach_the_config():
  got = _dry(
    "--config=configs/melu_ml100k.py",
    "--config.learner.adapt_regex=output",
    "--config.protocol.year_cutoff=1995",
    "--config.model.hidden=(32, 32)",
    "--config.learner.remat=True",
  )
  assert got["learner"]["adapt_regex"] == "output" and got["learner"]["remat"] is True
  assert got["protocol"]["year_cutoff"] == 1995 and got["model"]["hidden"] == [32, 32]
  assert got["learner"]["inner_lr"] == 0.05  # the file's value survives completion


def test_switching_factory_on_the_command_line_lists_its_keywords():
  got = _dry(
    "--config=configs/smoke_synthetic.py:tiny", "--config.learner_name=reptile", "--config.learner.use_query=False"
  )
  assert got["learner"] == {"inner_steps": 1, "inner_lr": 0.1, "adapt_regex": ".*", "use_query": False, "loss": "mse"}
  got = _dry("--config=configs/smoke_synthetic.py:tiny", "--config.model_name=mf", "--config.model={'dim': 4}")
  assert got["model"] == {"dim": 4}  # a whole section replaced, as the sweeps do
  done = _quick("--config=configs/smoke_synthetic.py:tiny", "--workdir=/nonexistent", "--config.model_name=mf")
  assert done.returncode != 0  # the file's melu keywords do not apply to mf: said before anything runs
  assert "['emb_dim', 'hidden'] that model 'mf' does not take; valid: ['adapt_regex', 'dim'" in done.stderr


def test_compilation_cache_flag_keeps_the_environments_min_compile_time():
  """`--compilation_cache=DIR` caches compiles over 0.5 s, unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS is set
  (the suite sets 0, so its subprocesses load even the small programs it compiled before instead of compiling
  them again). Checked on `transfer_meta.main`'s own code path, its training call replaced by a print."""
  env_name, secs = compile_cache.MIN_COMPILE_ENV, "jax_persistent_cache_min_compile_time_secs"
  assert compile_cache.settings("", {}) == {} and compile_cache.settings("", {env_name: "0"}) == {}
  assert compile_cache.settings("/c", {}) == {"jax_compilation_cache_dir": "/c", secs: 0.5}
  assert compile_cache.settings("/c", {env_name: "0"}) == {"jax_compilation_cache_dir": "/c"}
  script = (
    "import sys, jax\nfrom absl import app\nfrom transfer_meta import main, train\n"
    "train.train_and_evaluate = lambda config, workdir: print(jax.config.jax_compilation_cache_dir, "
    "jax.config.jax_persistent_cache_min_compile_time_secs)\n"
    "sys.argv = ['main', '--config=configs/smoke_synthetic.py:tiny', '--workdir=/nonexistent/never-written',"
    " *sys.argv[1:]]\napp.run(main.main)\n"
  )
  # The server's jax read the variable's 0 at import; unset in the child, main sets its own 0.5. 'auto' (the
  # default) is the user's shared cache of runs under the data cache root (nothing is compiled or written here).
  auto = "/tmp/tm_root_x/jax_compilation_cache/runs"
  for flag, env, want in (
    ("--compilation_cache=/tmp/tm_cache_x", {}, "/tmp/tm_cache_x 0.0"),
    ("--compilation_cache=/tmp/tm_cache_x", {env_name: None}, "/tmp/tm_cache_x 0.5"),
    ("--compilation_cache=", {env_name: None}, f"{jax.config.jax_compilation_cache_dir} 0.0"),
    ("--compilation_cache=auto", {env_name: None, "TRANSFER_META_CACHE": "/tmp/tm_root_x"}, f"{auto} 0.5"),
  ):
    done = SERVER.run(["-c", script, flag], ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == want, (flag, env)


def test_unknown_override_lists_valid_keywords():
  done = _quick("--config=configs/melu_ml100k.py", "--workdir=/nonexistent", "--config.learner.inner_stpes=3")
  assert done.returncode != 0
  assert "config.learner has no field 'inner_stpes'" in done.stderr and "'inner_steps'" in done.stderr
  done = _quick("--config=configs/melu_ml100k.py", "--workdir=/nonexistent", "--config.learner_name=mamll")
  assert done.returncode != 0 and "valid:" in done.stderr and "'maml'" in done.stderr


@pytest.mark.parametrize("registry, positional", [(LEARNERS, 1), (MODELS, 1), (PROTOCOLS, 2)], ids=str)
def test_factory_keywords_match_signatures(registry, positional):
  import inspect

  for name, fn in registry.items():
    kws = keywords.factory_keywords(fn, registry, positional)
    params = list(inspect.signature(fn).parameters.values())[positional:]
    own = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
    own.pop("name", None)
    assert {k: v for k, v in kws.items() if k in own} == own, name
    assert "name" not in kws


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_completed_learner_keywords_change_nothing(name):
  """A learner built from its completed config section computes what the bare factory computes."""
  config = train.default_config()
  config.learner_name = name
  keywords.complete(config)
  model = built_model(LEARNER_MODELS[name])[0] if name in LEARNER_MODELS else tiny_model()
  task = make_task(0)
  params = model.init(jax.random.key(0), task["query"], task["support"])
  key = jax.random.key(1)
  # eval_learner: a stateful learner (mamo) as a plain one over {meta_params, learner_state}
  bare = learner_state.eval_learner(tm.get_learner(name, model))
  full = learner_state.eval_learner(tm.get_learner(name, model, **config.learner.to_dict()))
  # Jitted: one compile per learner instead of op-by-op dispatch (the second is a persistent-cache hit when the
  # completed keywords change nothing, i.e. when both lower to the same program); both with test_learners' fast
  # compile options, so the bit-for-bit comparison is between programs compiled alike.
  g1, m1 = jax.jit(bare.task_grad, compiler_options=FAST_COMPILE)(bare.init(key, params), task, key)
  g2, m2 = jax.jit(full.task_grad, compiler_options=FAST_COMPILE)(full.init(key, params), task, key)
  jax.tree.map(np.testing.assert_array_equal, (g1, m1), (g2, m2))


def test_unknown_keyword_lists_valid_ones():
  model = tiny_model()
  with pytest.raises(keywords.KeywordError, match=r"learner 'melu' has no keyword\(s\) \['prox'\].*'inner_lr'"):
    tm.get_learner("melu", model, prox=0.1)
  with pytest.raises(TypeError, match="valid keywords"):  # also a TypeError, as Python's own
    tm.get_learner("none", model, inner_steps=3)


def test_cli_override_parsing():
  argv = ["prog", "--config=x.py", "--config.a.b=1", "--config.c", "two", "--config.a.b=3", "-config.d=4"]
  assert cli.overrides(argv) == {"a.b": "3", "c": "two", "d": "4"}


# ---------------------------------------------------------------------------------------------------------------
# Protocol floor warnings.


def test_protocol_warns_below_min_tasks_and_says_how_to_fix():
  data = tm.load_dataset("synthetic", n_users=200, n_items=150, ratings_per_user=(20, 60))
  with pytest.warns(UserWarning, match=r"task set 'new_user_new_item' has only \d+ tasks.*year_cutoff"):
    split = tm.make_protocol("melu", data, seed=0, min_tasks=10_000)
  msgs = common.warn_few_tasks(split, 10_000)
  assert len(msgs) == len(split.tasks)
  assert any("new_user_fraction" in m for m in msgs if "'new_user'" in m)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    small = min(len(ts) for ts in split.tasks.values())
    assert common.warn_few_tasks(split, small) == []  # at the floor: no warning
    tm.make_protocol("melu", data, seed=0, min_tasks=0)


# ---------------------------------------------------------------------------------------------------------------
# The CSV config: the example files are what csv_export writes, and the job runs from the command line.


def test_example_csv_files_are_the_export_of_their_documented_command(tmp_path):
  from transfer_meta.data import csv_export

  doc = csv_export.__doc__
  kwargs = json.loads(doc.split("--out=examples/csv --kwargs='", 1)[1].split("'", 1)[0])
  csv_export.write_csv(tm.load_dataset("synthetic", **kwargs), tmp_path)
  for name in ("ratings.csv", "users.csv", "items.csv"):
    with open(os.path.join(ROOT, "examples", "csv", name)) as a, open(tmp_path / name) as b:
      assert a.read() == b.read(), name


def test_csv_round_trip_equals_the_source(tmp_path):
  from transfer_meta.data import csv_export

  data = tm.load_dataset("synthetic", n_users=60, n_items=40, ratings_per_user=(5, 15))
  back = tm.load_dataset("csv", **csv_export.write_csv(data, tmp_path))
  for field in ("user", "item", "rating", "timestamp", "item_year"):
    np.testing.assert_array_equal(getattr(back, field), getattr(data, field), err_msg=field)
  assert back.user_raw_ids.tolist() == data.user_raw_ids.tolist() and back.name == data.name
  for side in ("user_features", "item_features"):
    a, b = getattr(data, side), getattr(back, side)
    for name in a.categorical:
      decode = lambda t, n: [t.vocab[n][c] for c in t.categorical[n]]  # noqa: E731
      assert decode(a, name) == decode(b, name), name
    for name in a.multi_hot:  # label sets per row (the file holds only the labels some row uses)
      labels = lambda t, n: [{t.vocab[n][j] for j in np.flatnonzero(r)} for r in t.multi_hot[n]]  # noqa: E731
      assert labels(a, name) == labels(b, name), name


def test_csv_config_dry_run_takes_every_loader_keyword_from_the_command_line():
  got = _dry(
    "--config=configs/csv.py",
    "--config.dataset.interactions=my.tsv",
    "--config.dataset.columns.timestamp=",
    "--config.dataset.rating_scale=(0.5, 5)",
    "--config.dataset.sep=;",
    "--config.dataset.decimal=,",
    "--config.dataset.name=mine",
    "--config.protocol.year_cutoff=2010",
    "--config.min_tasks=5",
  )
  ds = got["dataset"]
  assert ds["interactions"] == "my.tsv" and ds["columns"]["timestamp"] == "" and ds["rating_scale"] == [0.5, 5.0]
  assert (ds["sep"], ds["decimal"], ds["name"]) == (";", ",", "mine")
  assert got["protocol"]["year_cutoff"] == 2010 and got["min_tasks"] == 5
  import inspect

  from transfer_meta.data.csv_source import load_csv

  assert set(ds) | {"users", "items"} == set(inspect.signature(load_csv).parameters)


def test_csv_config_runs_end_to_end(tmp_path):
  done = _quick(
    "--config=configs/csv.py:smoke",
    f"--workdir={tmp_path}",
    "--config.seeds=1",
    "--config.num_steps=2",
    "--config.compare_learners=()",  # the learner alone: the comparisons' plumbing is test_train's
    "--config.compare_kwargs={}",
    "--config.dataset.name=my_data",
    "--config.protocol.year_cutoff=1994",
    "--compilation_cache=",
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["dataset"] == "csv" and results["learner"] == "melu"
  assert "my_data: " in done.stderr  # the loaded dataset carries the command line's name
  manifest = json.load(open(tmp_path / "split_manifest.json"))[0]
  assert manifest["params"]["year_cutoff"] == 1994
  assert set(results["metrics"]) == {"valid", "warm", "new_user", "new_item", "new_user_new_item"}


def test_display_names_match_the_registry_and_the_readme():
  from transfer_meta.learners import DISPLAY_NAMES
  from transfer_meta.results import results_table
  from transfer_meta.strategies import STRATEGIES

  assert set(DISPLAY_NAMES) <= set(LEARNERS) | set(STRATEGIES)  # strategies are table rows too
  readme = open(os.path.join(ROOT, "README.md")).read()
  for name, shown in DISPLAY_NAMES.items():  # a README row naming a learner gives its registry name beside it
    for row in (ln for ln in readme.splitlines() if ln.startswith(f"| {shown} ")):
      assert f"`{name}`" in row, row
  assert "| MAML-MeLU (`melu`) |" in readme
  cell = {"mean": 0.8, "std": 0.0, "per_seed": [0.8]}
  results = {"learner": "melu", "metrics": {"warm": {"mae": cell}}, "comparisons": {"fomaml": {"warm": {"mae": cell}}}}
  table = results_table(results)
  assert "| warm | melu | 0.800 ± 0.000 |" in table and "learners: melu = MAML-MeLU, fomaml = FOMAML" in table
