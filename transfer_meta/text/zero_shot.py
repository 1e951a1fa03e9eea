"""Brand-new items at serving time: item-side example rows built from an item's text (and any features given).

    rows = new_item_rows(data, [{"title": "Titanic"}, {"title": "Heat", "genre": ["Crime"]}], template="{title}")

Each new item is a dict of field values, named as the dataset's item fields: text fields (`title`) as strings,
categorical features (`release_year`) as a vocabulary label, multi-hot features (`genre`) as a list of labels.
Anything not given is unknown (categorical id 0, empty multi-hot set, empty text). The text embedding is the
same MiniLM embedding of the same `template` the model was trained with, so a model trained with text
features scores an item that has no ratings, no id and nothing but a title. The item id is 0 (models that
embed item ids see row 0's id vector: serve new items with models built with `use_ids=False`, the default).

A run that fine-tuned MiniLM's last layer (`text_finetune_last_layer`) scores a new item through its trained
layer: `new_item_tail_features` runs the new items' own layer inputs (the frozen first layers' token states)
through it, rows that serving appends to the catalogue's precomputed tail output (`serving.served_params`); for a
learner that adapts the layer per user, `tail_catalogue` gives every catalogue row and every new item its own
layer inputs, which the adapted tail reads instead of the cached states of the row's item id.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from transfer_meta.data import categorical
from transfer_meta.data.interactions import UNKNOWN, DataError, FeatureTable, Interactions
from transfer_meta.text import item_features, minilm


def _encoder(cache_dir=None) -> minilm.TextEncoder:
  return minilm.shared_encoder(cache_dir)


def new_item_table(data: Interactions, new_items: Sequence[Mapping]) -> FeatureTable:
  """The new items' features in the dataset's vocabularies (dense features left out: see `new_item_rows`).

  Raises:
    DataError: a field the dataset's items do not have, or a label outside a feature's vocabulary.
  """
  table = data.item_features
  known = set(table.text) | set(table.categorical) | set(table.multi_hot)
  for i, item in enumerate(new_items):
    unknown = sorted(set(item) - known)
    if unknown:
      raise DataError(f"new item {i}: unknown field(s) {unknown}; {data.name} items have {sorted(known)}")
  cat, multi = {}, {}
  for name, vocab in ((n, table.vocab[n]) for n in table.categorical):
    labels = [str(item.get(name, UNKNOWN)) for item in new_items]
    bad = [(i, x) for i, x in enumerate(labels) if x not in vocab]
    if bad:
      raise DataError(f"new items: {name!r} labels {bad[:3]} (item, label) not in its vocabulary {list(vocab)[:12]}")
    cat[name] = np.asarray([vocab.index(x) for x in labels], np.int32)
  for name in table.multi_hot:
    vocab = table.vocab[name]
    rows = []
    for i, item in enumerate(new_items):
      labels = [str(x) for x in item.get(name, [])]
      bad = [x for x in labels if x not in vocab]
      if bad:
        raise DataError(f"new item {i}: {name!r} labels {bad} not in its vocabulary {list(vocab)}")
      rows.append(np.isin(np.asarray(vocab), labels).astype(np.float32))
    multi[name] = np.stack(rows) if rows else np.zeros((0, len(vocab)), np.float32)
  text = {name: np.asarray([str(item.get(name, "")) for item in new_items], dtype=object) for name in table.text}
  vocab = {n: table.vocab[n] for n in (*table.categorical, *table.multi_hot)}
  return FeatureTable(n=len(new_items), categorical=cat, multi_hot=multi, text=text, vocab=vocab)


def new_item_rows(
  data: Interactions, new_items: Sequence[Mapping], template: str, encoder: minilm.TextEncoder | None = None
) -> dict:
  """Item-side example fields of brand-new items: {item int32 [n] (zeros), item_cat [n, Fi], item_multi [n, Vi],
  item_dense [n, Di]} in the dataset's layout, the text embedding in the `item_features.FEATURE` columns.

  Args:
    data: the training dataset, with the text feature (`load_dataset(..., text_features=True)`).
    new_items: one dict of field values per new item (module docstring).
    template: the text template the dataset's embedding was built with.
    encoder: the MiniLM encoder (loaded once per process when None).
  Raises:
    DataError: the dataset has no text feature, or has other dense item features a new item cannot supply.
  """
  dense = data.item_features.dense
  if item_features.FEATURE not in dense:
    raise DataError(
      f"{data.name} has no item text feature {item_features.FEATURE!r}: train with config.dataset.text_features=True"
    )
  suffix = categorical.NUMERIC_SUFFIX
  ordinal = {k for k in dense if k.endswith(suffix) and k[: -len(suffix)] in data.item_features.categorical}
  others = sorted(set(dense) - {item_features.FEATURE} - ordinal)
  if others:
    raise DataError(f"{data.name}: new items cannot supply the dense item feature(s) {others}")
  if not new_items:
    raise DataError("new_items is empty")
  table = new_item_table(data, new_items)
  texts = item_features.render_table(table, template, f"{data.name} (new items)")
  emb = minilm.embed_texts(encoder or _encoder(), texts, batch_size=min(64, len(texts)))
  columns = [  # in the dataset's dense order: the text embedding, ordinal features as numbers (config.ordinal_features)
    emb
    if k == item_features.FEATURE
    else categorical.numeric_column(data.item_features, k[: -len(suffix)], table.categorical[k[: -len(suffix)]])
    for k in dense
  ]
  return {
    "item": np.zeros(table.n, np.int32),
    "item_cat": table.cat_matrix(),
    "item_multi": table.multi_matrix(),
    "item_dense": np.concatenate(columns, axis=1).astype(np.float32),
  }


def tail_catalogue(
  data: Interactions,
  new_items: Sequence[Mapping],
  template: str,
  cache_dir=None,
  encoder: minilm.TextEncoder | None = None,
) -> dict:
  """Per-row last-layer inputs of the catalogue followed by the new items, for a `text_finetune_last_layer` run.

  Args:
    data: the training dataset (its cached layer inputs, `last_layer.item_tail_table`, are reused).
    new_items: one dict of field values per new item (module docstring), as given to `new_item_rows`.
    template: the text template the run was trained with.
    cache_dir: the run's text cache directory (`config.dataset.cache_dir`; None: the default).
    encoder: the MiniLM encoder (loaded once per process when None).
  Returns:
    {last_layer.STATES: f32 [I + n, L, H], last_layer.STATES_MASK: bool [I + n, L]}: rows in catalogue order, then
    the new items; L the longer of the two paddings (padding never changes the layer's pooled output).
  """
  from transfer_meta.text import last_layer

  encoder = encoder or _encoder(cache_dir)
  cached = last_layer.item_tail_table(data, template, cache_dir, encoder)
  texts = item_features.render_table(new_item_table(data, new_items), template, f"{data.name} (new items)")
  states, mask = last_layer.layer_inputs(encoder, texts, batch_size=min(64, len(texts)))
  L = max(states.shape[1], cached.states.shape[1])
  pad = lambda a, n: np.pad(a, [(0, 0), (0, n - a.shape[1])] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
  return {
    last_layer.STATES: np.concatenate([pad(cached.states, L), pad(states, L)]),
    last_layer.STATES_MASK: np.concatenate([pad(cached.mask, L), pad(mask.astype(bool), L)]),
  }


def new_item_tail_features(
  data: Interactions,
  new_items: Sequence[Mapping],
  template: str,
  tail_params,
  cache_dir=None,
  encoder: minilm.TextEncoder | None = None,
) -> np.ndarray:
  """The new items' text feature through a trained last encoder layer, as the model's tail computes it.

  Args:
    data: the training dataset (its item vocabularies).
    new_items: one dict of field values per new item (module docstring).
    template: the text template the run was trained with.
    tail_params: the trained last layer's parameters (the meta-parameters' `last_layer.TAIL` entry).
    cache_dir: the run's text cache directory (where the encoder is cached; None: the default).
    encoder: the MiniLM encoder (loaded once per process when None).
  Returns:
    f32 [n, H]: the layer over each item's own layer inputs, masked mean pooled and L2-normalised
    (`last_layer.tail_feature`), row i = new item i.
  """
  from transfer_meta.text import last_layer

  encoder = encoder or _encoder(cache_dir)
  texts = item_features.render_table(new_item_table(data, new_items), template, f"{data.name} (new items)")
  states, mask = last_layer.layer_inputs(encoder, texts, batch_size=min(64, len(texts)))
  return np.asarray(_tail_feature(tail_params, encoder.config, states, mask.astype(bool)))


@functools.partial(jax.jit, static_argnums=(1,))
def _tail_feature(tail_params, config, states, mask):
  from transfer_meta.text import last_layer

  return last_layer.tail_feature(tail_params, config, states, mask)
