"""Run files written by process 0 only: the metrics log (metrics.jsonl) and atomic text writes.

metrics.jsonl is rewound to the restored step on resume, so its content matches an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import jax


def is_writer() -> bool:
  """Only process 0 writes run files and prints (every process computes the same replicated values)."""
  return jax.process_index() == 0


def atomic_write(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename (a kill never leaves a torn file)."""
  if not is_writer():
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_file(path: str) -> Iterator[str]:
  """Copies every log record (INFO and up) and Python warning to `path` (appended) while the block runs.

  Only process 0 writes the file. Yields `path`.
  """
  if not is_writer():
    yield path
    return
  handler = logging.FileHandler(path)
  handler.setLevel(logging.INFO)
  handler.setFormatter(logging.Formatter(LOG_FORMAT))
  root = logging.getLogger()
  old_level, captured = root.level, logging.getLogger("py.warnings")
  root.addHandler(handler)
  root.setLevel(min(old_level or logging.WARNING, logging.INFO))
  logging.captureWarnings(True)
  captured.addHandler(handler)
  try:
    yield path
  finally:
    logging.captureWarnings(False)
    captured.removeHandler(handler)
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


class MetricsLog:
  """Appends one JSON object per logged step to `path`; records carry 'learner' and 'step'."""

  def __init__(self, path: str, order: Sequence[str]):
    self.path = path
    self.order = list(order)

  def rewind(self, learner: str, step: int) -> None:
    """Drops `learner`'s records after `step` (written after its restored checkpoint) and a torn last line,
    and puts the records in canonical order (learners in training order, steps ascending)."""
    self._rewrite(lambda rec: not (rec.get("learner") == learner and rec.get("step", 0) > step))

  def canonicalize(self) -> None:
    """Orders the records canonically (a fallback past a corrupt checkpoint appends out of order)."""
    self._rewrite(lambda rec: True)

  def write(self, record: dict) -> None:
    if not is_writer():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()

  def _rewrite(self, keep: Callable[[dict], bool]) -> None:
    if not os.path.exists(self.path):
      return
    records = []
    with open(self.path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a kill mid-write
    rank = lambda rec: (
      self.order.index(rec["learner"]) if rec.get("learner") in self.order else len(self.order),
      rec.get("step", 0),
    )
    records = sorted((r for r in records if keep(r)), key=rank)
    atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in records))
