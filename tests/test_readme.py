"""Every command and snippet in README.md and experiments/README.md runs as written.

Found generically, so a section someone adds is under test with no new test code:
  - every ```python block is executed for real, in a scratch directory holding the repository's configs/ and
    examples/; a `runs/<name>` it reads is first made by the README command that writes it, in smoke form
    (the config's seconds-long variant, 1 seed, 2 steps, no comparison learners, no plots); every `train_and_evaluate` a
    snippet calls runs its config with those same overrides (`SNIPPET_OVERRIDES`), set by a prelude that wraps the
    function (tests/shrunk_runs.py, shared with the notebooks' test) and then runs the snippet's text unchanged
    (`runpy`): what is checked is that the code runs as written, not how long it trains; a snippet whose run trains
    a learner an earlier snippet trained identically copies it (`learner_reuse`, the same results bit for bit);
  - every command line of a ```bash block and every inline `python -m ...` / `make ...` code span goes to the
    handler of its kind: `transfer_meta.main` runs with --dry_run (the real config loading and override
    parsing); other `python -m` modules answer --help and list every flag the command passes; `make T` is
    `make -n T`, whose recipe lines are checked the same way; `pip install -r F` / `-e .[extra]` need F / the
    extra to exist; `VAR=value` prefixes and an `srun` launcher are stripped and what they start is checked.
    A command of any other kind FAILS, naming itself, so nothing is passed over in silence. The `python -m` checks
    (--help, --dry_run), the snippets and the runs they read run in forks of one preloaded interpreter
    (tests/forkrun.py), not fresh ones each.
A ```python block preceded by `<!-- readme-test: not run: <reason naming the test that covers it> -->` is
not executed; the test checks that the named test file exists and reads README.md.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import subprocess
import sys

import forkrun
import pytest
import shrunk_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = ("README.md", "experiments/README.md")
SMALL = {"smoke_synthetic": "tiny"}  # each config's seconds-long variant (default 'smoke'), as in test_configs
NOT_RUN = re.compile(r"<!--\s*readme-test:\s*not run:\s*(.+?)\s*-->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")


def _blocks(path: str) -> list[tuple[str, int, str, str | None]]:
  """(language, first line, code, not-run reason) of every fenced block of a Markdown file."""
  lines = open(os.path.join(ROOT, path)).read().splitlines()
  out, i = [], 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if m and m.group(1):
      j = i + 1
      while not lines[j].startswith("```"):
        j += 1
      prev = lines[i - 1] if i else ""
      reason = NOT_RUN.match(prev)
      out.append((m.group(1), i + 2, "\n".join(lines[i + 1 : j]), reason.group(1) if reason else None))
      i = j
    i += 1
  return out


def _expand_braces(cmd: str) -> list[str]:
  """`bench_{a,b}` -> ['bench_a', 'bench_b'] (shell brace expansion, one level)."""
  m = re.search(r"\{([^{}]*,[^{}]*)\}", cmd)
  if not m:
    return [cmd]
  return [x for alt in m.group(1).split(",") for x in _expand_braces(cmd[: m.start()] + alt + cmd[m.end() :])]


def _shell_lines(code: str) -> list[str]:
  """Command lines of a bash block: continuations joined, comments and blank lines dropped."""
  joined = re.sub(r"\s*\\\n\s*", " ", code)
  cmds = []
  for line in joined.splitlines():
    line = re.sub(r"\s+#.*$", "", line).strip()
    if line and not line.startswith("#"):
      cmds.append(line)
  return cmds


def _inline_commands(path: str) -> list[str]:
  text = open(os.path.join(ROOT, path)).read()
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  spans = re.findall(r"`([^`\n]+)`", text)
  return [s for s in spans if s.startswith(("python -m ", "make ", "pip install "))]


def _commands() -> list[tuple[str, str]]:
  out = []
  for path in READMES:
    for lang, line, code, _ in _blocks(path):
      if lang in ("bash", "sh", "shell", "console"):
        out += [(f"{path}:{line}", c) for c in _shell_lines(code)]
    out += [(f"{path}:inline", c) for c in _inline_commands(path)]
  expanded, seen = [], set()
  for where, cmd in out:
    for c in _expand_braces(cmd):
      if c not in seen:
        seen.add(c)
        expanded.append((where, c))
  return expanded


def _python_blocks() -> list[tuple[str, str, str | None]]:
  return [
    (f"{path}:{line}", code, why) for path in READMES for lang, line, code, why in _blocks(path) if lang == "python"
  ]


def _env() -> dict:
  return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(argv: list[str], cwd: str = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())


SERVER = forkrun.ForkServer(ROOT, env=_env(), preload=forkrun.TRAINING_PRELOAD)


@pytest.fixture(scope="module", autouse=True)
def _close_server():
  """The fork server is waited for at the end of this module, so its CPU is charged to this file's tests."""
  yield
  SERVER.close()


def _module_run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
  """`python -m args[0] args[1:]` in ROOT, the cheap commands' way: a fork of a preloaded interpreter
  (tests/forkrun.py; ~0.2 instead of ~1.5 CPU-s each). The snippets and the runs they read run in forks of the
  same server too (`python SCRIPT` and `python -m transfer_meta.main` in their scratch directory)."""
  return SERVER.run(args, ROOT, timeout=timeout)


@functools.cache
def _help(module: str) -> str:
  done = _module_run([module, "--help"])
  assert done.returncode == 0, f"python -m {module} --help failed:\n{done.stderr[-2000:]}"
  return done.stdout + done.stderr


def _check_python_module(args: list[str]) -> None:
  module, rest = args[0], args[1:]
  if "--help" in rest:  # cheap already: run as written
    done = _module_run([module, *rest])
    assert done.returncode == 0, done.stderr[-2000:]
    return
  if module == "transfer_meta.main" and not any(a.startswith("--config=") for a in rest):
    assert _help(module) and not rest, f"transfer_meta.main without --config: {rest}"
    return
  if module == "transfer_meta.main":
    done = _module_run([module, *rest, *([] if "--dry_run" in rest else ["--dry_run"])])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dry run: {" in done.stdout
    return
  text = _help(module)
  for arg in rest:
    if arg.startswith("--"):
      flag = arg.split("=", 1)[0]
      assert re.search(rf"{re.escape(flag)}\b", text), f"{module} --help does not list {flag}"


def _check(cmd: str) -> None:
  """Runs the cheap form of one README command (see the module docstring); unknown kinds fail."""
  args = shlex.split(cmd)
  while args and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", args[0]):  # VAR=value prefixes: the environment
    args = args[1:]
  if args[:1] == ["srun"]:  # a launcher: what it starts must run
    args = args[1:]
  if args[:2] == ["python", "-m"] or (args[0].endswith("/python") and args[1] == "-m"):
    return _check_python_module(args[2:])
  if args[0] == "make":
    assert len(args) == 2, f"make with arguments: {cmd}"
    done = _run(["make", "-n", args[1]])
    assert done.returncode == 0, f"make -n {args[1]}: {done.stderr[-1000:]}"
    recipes = [ln for ln in done.stdout.splitlines() if re.search(r"python3? -m (transfer_meta|experiments)\.", ln)]
    for line in recipes:
      part = shlex.split(line)
      start = next(i for i, a in enumerate(part) if a.endswith("python") or a.endswith("python3"))
      _check_python_module(part[start + 2 :])
    return
  if args[:2] == ["pip", "install"]:
    rest = args[2:]
    if rest[:1] == ["-r"]:
      assert os.path.isfile(os.path.join(ROOT, rest[1])), f"{rest[1]} does not exist"
      return
    m = re.fullmatch(r"\.\[([\w,-]+)\]", rest[-1]) if rest[:1] == ["-e"] else None
    if m:
      import tomllib

      extras = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
      missing = [e for e in m.group(1).split(",") if e not in extras]
      assert not missing, f"pyproject.toml has no extra(s) {missing}"
      return
  pytest.fail(f"no handler for README command {cmd!r}: teach tests/test_readme.py how to run it cheaply")


COMMANDS = _commands()


def test_the_readmes_have_commands_and_snippets():
  kinds = {shlex.split(c)[0] + " " + shlex.split(c)[1] for _, c in COMMANDS}
  assert {"python -m", "make run"} <= kinds | {"make run"} and len(COMMANDS) >= 10
  assert len(_python_blocks()) >= 3


@pytest.mark.parametrize("where, cmd", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_readme_command_runs(where, cmd):
  _check(cmd)


@functools.cache
def _workdir_commands() -> dict[str, list[str]]:
  """runs/<name> -> the python -m transfer_meta.main argv (from a README command or make recipe) writing it."""
  out = {}
  candidates = [c for _, c in COMMANDS]
  for cmd in [c for c in candidates if c.startswith("make ")]:
    done = _run(["make", "-n", cmd.split()[1]])
    candidates += [ln.strip() for ln in done.stdout.splitlines() if "transfer_meta.main" in ln]
  for cmd in candidates:
    args = shlex.split(cmd)
    if "transfer_meta.main" not in args:
      continue
    args = args[args.index("transfer_meta.main") :]
    for a in args:
      if a.startswith("--workdir="):
        out.setdefault(a.split("=", 1)[1].rstrip("/"), args)
  return out


def _smoke(args: list[str], workdir: str) -> list[str]:
  """The smoke form of a transfer_meta.main argv writing into `workdir`."""
  out = []
  for a in args:
    if a.startswith("--config="):
      path = a.split("=", 1)[1].split(":", 1)[0]
      name = os.path.basename(path)[:-3]
      a = f"--config={os.path.join(ROOT, path)}:{SMALL.get(name, 'smoke')}"
    elif a.startswith("--workdir="):
      a = f"--workdir={workdir}"
    out.append(a)
  overrides = [f"--config.{k}={v}" for k, v in SNIPPET_OVERRIDES.items()]
  return [*out, *overrides, "--compilation_cache="]


# The point overrides of every `train_and_evaluate` call in a snippet, and of the writers' smoke form above
# (tests/shrunk_runs.py, shared with the notebooks' kernels).
SNIPPET_OVERRIDES = shrunk_runs.OVERRIDES
_PRELUDE = f"""import runpy, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import shrunk_runs
sys.path.pop(0)
shrunk_runs.install(donors=DONORS)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def _donors(tmp_path_factory) -> str:
  """The file listing the workdirs of this module's finished snippet runs (`shrunk_runs.install(donors=...)`): a
  later snippet that trains the same smoke learner copies it from an earlier one instead of training it again
  (README.md's strategy snippet takes its `melu` from README.md's first snippet). The `runs/<name>` writers go
  through `transfer_meta.main`, whose completed config keywords key their learners apart, so they train their own."""
  return str(tmp_path_factory.mktemp("snippet_runs") / "donors.txt")


@pytest.mark.slow  # each snippet runs for real (a smoke-sized training run or two)
@pytest.mark.parametrize("where, code, why", _python_blocks(), ids=[w for w, _, _ in _python_blocks()])
def test_readme_python_snippet_runs(where, code, why, tmp_path, _donors):
  if why is not None:
    named = re.findall(r"tests/\w+\.py", why)
    assert named, f"{where}: a not-run block must name the test that covers it: {why!r}"
    for test in named:
      assert "README" in open(os.path.join(ROOT, test)).read(), f"{test} does not read the README"
    return
  for name in ("configs", "examples"):
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  script, prelude = tmp_path / "snippet.py", tmp_path / "readme_prelude.py"
  script.write_text(code + "\n")
  prelude.write_text(_PRELUDE.replace("DONORS", repr(_donors)))
  writers = _workdir_commands()
  for rel in sorted(set(re.findall(r"runs/[\w.-]+", code))):
    if rel in writers and not os.path.exists(tmp_path / rel):
      done = SERVER.run(_smoke(writers[rel], str(tmp_path / rel)), str(tmp_path), timeout=600)
      assert done.returncode == 0, f"{where}: making {rel}: {done.stderr[-3000:]}"
  done = SERVER.run([str(prelude), str(script)], str(tmp_path), timeout=600)
  assert done.returncode == 0, f"{where} failed as written:\n{code}\n---\n{done.stderr[-3000:]}"


def test_brace_expansion_and_line_joining():
  assert _expand_braces("python -m experiments.bench_{a,b}") == [
    "python -m experiments.bench_a",
    "python -m experiments.bench_b",
  ]
  assert _shell_lines("make run    # comment\n# only a comment\npython -m x \\\n  --y=1\n") == [
    "make run",
    "python -m x --y=1",
  ]
  assert list(itertools.chain(_expand_braces("no braces"))) == ["no braces"]


def test_fork_server_runs_modules_like_python_m(tmp_path):
  """tests/forkrun.py against real `python -m`: the same stdout, exit status and error, in the given directory."""
  (tmp_path / "x.json").write_text('{"b": [1, 2], "a": null}')
  for args in (["json.tool", "x.json"], ["json.tool", "missing.json"], ["platform"]):
    real = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    forked = SERVER.run(args, str(tmp_path))
    assert (forked.returncode, forked.stdout) == (real.returncode, real.stdout), args
    assert forked.stderr.splitlines()[-1:] == real.stderr.splitlines()[-1:], args
  assert SERVER.run(["json.tool", "missing.json"], str(tmp_path)).returncode == 2  # argparse's usage error
  missing = SERVER.run(["no_such_module_here"], str(tmp_path))
  assert missing.returncode == 1 and "No module named no_such_module_here" in missing.stderr
  with pytest.raises(ValueError, match="module"):
    SERVER.run(["--help"], str(tmp_path))
  slow = SERVER.run(["timeit", "-n", "1", "-r", "1", "import time; time.sleep(30)"], str(tmp_path), timeout=1)
  assert slow.returncode == -14  # killed by SIGALRM after `timeout` s (where subprocess.run would raise)
