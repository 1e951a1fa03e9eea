"""Smoke-sized `train_and_evaluate` for code the tests run as written: the README's Python snippets
(tests/test_readme.py) and the tutorial notebooks (tests/test_notebooks.py).

What those tests check is that the code runs as a user would run it, cell by cell or line by line, not how long it
trains. `install()`, called in the interpreter that then runs the code unchanged (a prelude before `runpy`, or the
notebook kernel's launcher before the kernel starts), replaces `transfer_meta.train_and_evaluate` (and
`transfer_meta.train.train_and_evaluate`) by a wrapper that sets `OVERRIDES` on a copy of each config it is given:
one seed, 2 steps, no comparison learners, no plots (no snippet or notebook reads the PNGs; test_run_outputs checks
them, and each run would spend ~1-4 CPU-s drawing them).

With `donors=FILE` (a list of workdirs, one a line, shared by the interpreters of one test module), each run reuses
a learner an earlier run listed there trained identically (`train_and_evaluate(..., reuse_from=...)`,
`transfer_meta.learner_reuse`: the same results bit for bit) and then lists its own workdir: README snippets that
train the same smoke learner before their own step (a strategy, serving) train it once.
"""

from __future__ import annotations

# The point overrides of every `train_and_evaluate` call of the code run as written (and of test_readme's smoke form
# of the README commands that write the `runs/<name>` a snippet reads).
OVERRIDES = {"seeds": 1, "num_steps": 2, "compare_learners": (), "compare_kwargs": {}, "plots": False}


def install(overrides: dict | None = None, donors: str | None = None) -> None:
  """Makes every later `train_and_evaluate` call (through `transfer_meta` or `transfer_meta.train`) run its config
  with `overrides` (default `OVERRIDES`) set, on a copy: the caller's config is left as it is.

  Args:
    overrides: top-level config fields and their values (default `OVERRIDES`).
    donors: None, or a file listing finished workdirs (one a line; need not exist yet): a call that passes no
      `reuse_from` of its own reuses their learners, and its workdir is appended once it has finished.
  """
  import os  # noqa: PLC0415

  import transfer_meta  # noqa: PLC0415 (imported where the code will run, not where the tests import this)
  from transfer_meta import train  # noqa: PLC0415

  overrides = dict(OVERRIDES if overrides is None else overrides)
  full = train.train_and_evaluate
  if getattr(full, "shrunk_overrides", None) is not None:
    raise RuntimeError("shrunk_runs.install() called twice in one interpreter")

  def shrunk(config, workdir, data=None, reuse_from=None):
    config = config.copy_and_resolve_references()
    with config.unlocked():
      for name, value in overrides.items():
        setattr(config, name, value)
    if donors is None or reuse_from is not None:
      return full(config, workdir, data, reuse_from)
    listed = open(donors).read().split("\n") if os.path.exists(donors) else []
    results = full(config, workdir, data, [d for d in listed if d])
    with open(donors, "a") as f:
      f.write(os.path.abspath(workdir) + "\n")
    return results

  shrunk.shrunk_overrides = overrides
  transfer_meta.train_and_evaluate = train.train_and_evaluate = shrunk
