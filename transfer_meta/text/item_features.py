"""Item text features: a cached [num_items, 384] MiniLM embedding of each item's text, as a dense item feature.

    data = tm.load_dataset("ml-100k", text_features=True)        # adds item dense feature "text_minilm"
    data.item_features.dense["text_minilm"]                       # f32 [1682, 384], unit rows

The text of an item is `template` filled from its features: a text field by name (`{title}`), a categorical
feature as its value (`{release_year}`, "" when unknown) and a multi-hot feature as its labels joined by ", "
(`{genre}`). The embedding is computed once (progress bar) and cached as `<cache>/text_features/<name>-<key>.npy`
with a JSON sidecar; the key hashes the dataset name, the template, the model checksum and the rendered texts,
so a changed loader or template never reuses a stale file. The encoder is frozen by default: models learn only
the projection 384 -> d (`models.features.SideFeatures`' dense block), like any dense feature;
`config.dataset.text_finetune_last_layer=True` also trains its last layer (`text.last_layer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import string
from collections.abc import Sequence

import numpy as np

from transfer_meta.data import wheel_files
from transfer_meta.data.interactions import UNKNOWN, DataError, FeatureTable, Interactions

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{title}"
FEATURE = "text_minilm"  # name of the dense item feature


def template_fields(items: FeatureTable) -> dict[str, Sequence[str]]:
  """Field name -> one string per item, for every field a template may use (text, categorical, multi-hot)."""
  fields = {name: [str(t) for t in col] for name, col in items.text.items()}
  for name, ids in items.categorical.items():
    vocab = np.asarray(["" if v == UNKNOWN else str(v) for v in items.vocab[name]], dtype=object)
    fields[name] = list(vocab[ids])
  for name, hot in items.multi_hot.items():
    labels = np.asarray(items.vocab[name], dtype=object)
    fields[name] = [", ".join(labels[row > 0]) for row in hot]
  return fields


def render_texts(data: Interactions, template: str = DEFAULT_TEMPLATE) -> list[str]:
  """One text per item (dense-id order): `template` with each `{field}` filled from that item's features.

  Raises:
    DataError: the template names a field the dataset's items do not have (the message lists those they do).
  """
  return render_table(data.item_features, template, data.name)


def render_table(items: FeatureTable, template: str, name: str) -> list[str]:
  """`render_texts` over a `FeatureTable` (`name` labels errors): one text per row."""
  fields_used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  if not fields_used:
    raise DataError(f"{name}: text template {template!r} names no item field, so every item gets one text")
  fields = template_fields(items)
  unknown = [f for f in fields_used if f not in fields]
  if unknown:
    raise DataError(f"{name}: text template {template!r} uses {unknown}; item fields are {sorted(fields)}")
  return [template.format_map({f: fields[f][i] for f in fields_used}) for i in range(items.n)]


def cache_key(dataset: str, template: str, model_checksum: str, texts: Sequence[str]) -> str:
  """Hex SHA-256 over the dataset name, the template, the model checksum and the rendered texts."""
  h = hashlib.sha256()
  for part in (dataset, template, model_checksum, *texts):
    h.update(part.encode("utf-8") + b"\0")
  return h.hexdigest()


def _cache_path(cache_dir, dataset: str, key: str):
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
  return wheel_files.cache_root(cache_dir) / "text_features" / f"{safe}-{key[:16]}.npy"


def item_text_embedding(
  data: Interactions,
  template: str = DEFAULT_TEMPLATE,
  cache_dir: str | os.PathLike | None = None,
  encoder=None,
  batch_size: int = 64,
  progress: bool = True,
) -> np.ndarray:
  """The items' text embedding, from the cache or computed once and cached.

  Args:
    data: the dataset (its item fields fill `template`).
    template: item text template (see the module docstring).
    cache_dir: cache root (default $TRANSFER_META_CACHE or ~/.cache/transfer_meta).
    encoder: a `minilm.TextEncoder`; loaded (lazily, only on a cache miss) when None.
    batch_size: texts per forward pass.
    progress: show a progress bar while computing.
  Returns:
    f32 [I, H] unit-norm rows (H = 384 for MiniLM), dense item-id order.
  """
  from transfer_meta.text import minilm

  texts = render_texts(data, template)
  checksum = encoder.checksum if encoder is not None else minilm.SHA256["model.safetensors"]
  key = cache_key(data.name, template, checksum, texts)
  path = _cache_path(cache_dir, data.name, key)
  if path.is_file():
    emb = np.load(path)
    if emb.shape[0] == data.n_items and emb.dtype == np.float32 and np.isfinite(emb).all():
      log.info("%s: item text embedding from %s", data.name, path)
      return emb
    log.warning("%s: cached text embedding %s is %s %s; recomputing", data.name, path, emb.dtype, emb.shape)
  encoder = minilm.load_minilm(cache_dir) if encoder is None else encoder
  emb = minilm.embed_texts(encoder, texts, batch_size=batch_size, progress=progress)
  buf = io.BytesIO()
  np.save(buf, emb)
  wheel_files.write_atomic(path, buf.getvalue())
  meta = dict(dataset=data.name, template=template, model=minilm.NAME, model_sha256=checksum, key=key)
  wheel_files.write_atomic(path.with_suffix(".json"), json.dumps(meta | {"shape": list(emb.shape)}).encode())
  log.info("%s: item text embedding %s cached at %s", data.name, emb.shape, path)
  return emb


def with_text_features(
  data: Interactions, template: str = DEFAULT_TEMPLATE, cache_dir: str | os.PathLike | None = None, **kw
) -> Interactions:
  """`data` with the item text embedding added as dense item feature `FEATURE` (kw: `item_text_embedding`'s)."""
  if FEATURE in data.item_features.dense:
    raise DataError(f"{data.name}: items already have a dense feature {FEATURE!r}")
  emb = item_text_embedding(data, template, cache_dir, **kw)
  items = dataclasses.replace(data.item_features, dense={**data.item_features.dense, FEATURE: emb})
  return dataclasses.replace(data, item_features=items)
