"""Data sources. Every source returns `Interactions`; `load_dataset` dispatches by name."""

from __future__ import annotations

from transfer_meta.data.interactions import Interactions
from transfer_meta.registry import lookup


def _ml100k(**kw):
  from transfer_meta.data.movielens import load_ml100k

  return load_ml100k(**kw)


def _ml1m(**kw):
  from transfer_meta.data.movielens_1m import load_ml1m

  return load_ml1m(**kw)


def _ml1m_ml100k(**kw):
  from transfer_meta.data.movielens_cdr import load_ml1m_ml100k

  return load_ml1m_ml100k(**kw)


def _synthetic(**kw):
  from transfer_meta.data.synthetic import generate

  return generate(**kw)


def _csv(**kw):
  from transfer_meta.data.csv_source import load_csv

  return load_csv(**kw)


# Name -> loader(**kwargs) -> Interactions. "tfds:<name>" is dispatched by prefix below.
DATASETS = {"ml-100k": _ml100k, "ml-1m": _ml1m, "ml-1m+ml-100k": _ml1m_ml100k, "synthetic": _synthetic, "csv": _csv}


def load_dataset(
  name: str,
  /,
  text_features: bool = False,
  text_template: str = "{title}",
  text_finetune_last_layer: bool = False,
  **kwargs,
) -> Interactions:
  """Loads a dataset by name: 'ml-100k', 'ml-1m', 'ml-1m+ml-100k' (two domains, `movielens_cdr`), 'synthetic',
  'csv', or 'tfds:movielens/<variant>-ratings'.

  `name` is positional-only, so a loader's own `name=` keyword (the csv dataset's name) passes through.
  `text_features=True` adds a MiniLM embedding of each item's `text_template` as dense item feature
  'text_minilm' (cached; needs the `text` extra; see `transfer_meta.text.item_features`).
  `text_finetune_last_layer` is read by the model builder (`transfer_meta.text.last_layer`); here it only
  requires `text_features`.
  """
  if text_finetune_last_layer and not text_features:
    raise ValueError("text_finetune_last_layer=True needs text_features=True (it fine-tunes that feature)")
  if name.startswith("tfds:"):
    from transfer_meta.data.tfds_source import load_tfds

    data = load_tfds(name[len("tfds:") :], **kwargs)
  else:
    data = lookup(DATASETS, name, "dataset")(**kwargs)
  if text_features:
    from transfer_meta.text.item_features import with_text_features

    data = with_text_features(data, text_template, cache_dir=kwargs.get("cache_dir"))
  return data
