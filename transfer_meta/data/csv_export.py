"""Writes a dataset as the CSV files `load_csv` reads: a ready example of one's own data, and a round trip.

    python -m transfer_meta.data.csv_export --dataset=synthetic --out=runs/my_data

writes `ratings.csv` (user,item,rating,timestamp), `users.csv` (user + categorical features) and `items.csv`
(item, year, categorical features, multi-hot features joined with '|', text). `load_csv` on them with the
keywords `csv_keywords` returns gives back the same interactions (tested). The example files in
`examples/csv/` that `configs/csv.py` reads by default were written by (tested to be what it writes):

    python -m transfer_meta.data.csv_export --out=examples/csv --kwargs='{"n_users": 300, "n_items": 200}'
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from transfer_meta.data.interactions import UNKNOWN, DataError, FeatureTable, Interactions

MULTI_SEP = "|"


def _feature_frame(ids: np.ndarray, table: FeatureTable, id_col: str) -> pd.DataFrame:
  cols = {id_col: ids}
  for name, codes in table.categorical.items():
    vocab = np.asarray(table.vocab[name], dtype=object)
    values = vocab[codes]
    cols[name] = np.where(values == UNKNOWN, "", values)
  for name, mat in table.multi_hot.items():
    vocab = table.vocab[name]
    cols[name] = [MULTI_SEP.join(vocab[j] for j in np.flatnonzero(row)) for row in mat]
  for name, text in table.text.items():
    cols[name] = text
  return pd.DataFrame(cols)


def write_csv(data: Interactions, directory: str | os.PathLike) -> dict:
  """Writes `data` into `directory` as ratings.csv, users.csv and items.csv.

  Returns:
    The `load_csv` keywords that read them back (paths, feature columns, multi-hot separators, year column).
  """
  if data.domain is not None:  # the CSV source reads no domain column: refuse rather than drop the domains
    raise DataError(f"{data.name}: write_csv does not write domains ({data.domains}); the csv source cannot read them")
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(str(directory), name)  # noqa: E731
  pd.DataFrame(
    {
      "user": data.user_raw_ids[data.user],
      "item": data.item_raw_ids[data.item],
      "rating": data.rating,
      "timestamp": data.timestamp,
    }
  ).to_csv(path("ratings.csv"), index=False)
  users = _feature_frame(data.user_raw_ids, data.user_features, "user")
  items = _feature_frame(data.item_raw_ids, data.item_features, "item")
  if data.item_year is not None:
    items["year"] = data.item_year
  users.to_csv(path("users.csv"), index=False)
  items.to_csv(path("items.csv"), index=False)
  return csv_keywords(data, directory)


def csv_keywords(data: Interactions, directory: str | os.PathLike) -> dict:
  """`load_csv` keywords for the files `write_csv(data, directory)` writes."""
  path = lambda name: os.path.join(str(directory), name)  # noqa: E731
  multi = {
    kind: {n: MULTI_SEP for n in table.multi_hot}
    for kind, table in (("users", data.user_features), ("items", data.item_features))
    if table.multi_hot
  }
  return {
    "interactions": path("ratings.csv"),
    "users": path("users.csv"),
    "items": path("items.csv"),
    "user_categorical": tuple(data.user_features.categorical),
    "item_categorical": tuple(data.item_features.categorical),
    "multi_hot": multi,
    "item_year_column": "year" if data.item_year is not None else None,
    "item_text": tuple(data.item_features.text),
    "rating_scale": tuple(data.rating_scale),
    "name": data.name,
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="synthetic", help="a tm.load_dataset name (default: synthetic)")
  parser.add_argument("--out", required=True, help="directory for ratings.csv, users.csv, items.csv")
  parser.add_argument("--kwargs", default="{}", help="JSON object of the dataset's loader keywords")
  args = parser.parse_args(argv)
  from transfer_meta.data import load_dataset

  keywords = write_csv(load_dataset(args.dataset, **json.loads(args.kwargs)), args.out)
  print(f"wrote {keywords['interactions']}, {keywords['users']}, {keywords['items']}")
  for key in ("user_categorical", "item_categorical", "multi_hot", "item_year_column"):
    print(f"  {key}: {keywords[key]}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
