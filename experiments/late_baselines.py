"""References added to finished runs: a baseline scored on each run's own splits after the runs are done.

    python -m experiments.ablate --config=cross_domain_ml1m_to_ml100k --sweep=cmf+coral \
      --late_baselines=source_item_support_offset --compare=item_user_offset,source_item_user_offset

A baseline needs no training, so a reference defined after a sweep's runs finished is scored without rerunning
them (adding it to `config.baselines` would change the config, and a finished run is reused only for an equal
config). For every run and seed the split is rebuilt from the run's config (`train.seed_split`) and its manifest
hash checked against the run's `manifest_hashes`, so the reference is scored on exactly the users and rows the run
was scored on; then it is evaluated as the trainer evaluates its baselines (`baselines.evaluate_baselines`, the
same seed and shrinkage) and added to the run's baselines in memory. The ablate .json lists it under the run's
`late_baselines`; the run directories are not written.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence

import ml_collections

from transfer_meta import baselines, evaluate
from transfer_meta.data import categorical, load_dataset
from transfer_meta.train import seed_list, seed_split


def _check(config: ml_collections.ConfigDict, names: Sequence[str], label: str) -> None:
  unknown = [n for n in names if n not in baselines.BASELINES]
  if unknown:
    raise ValueError(f"late baselines {unknown} are not baselines; valid: {list(baselines.BASELINES)}")
  if tuple(config.eval_ranking) != ("query",):
    raise ValueError(
      f"run {label!r} ranks beyond the query (eval_ranking={tuple(config.eval_ranking)}); late baselines score "
      "the query only"
    )


def late_values(
  config: ml_collections.ConfigDict,
  names: Sequence[str],
  hashes: Sequence[str],
  data,
  label: str,
  cache: MutableMapping | None = None,
):
  """{name: {scenario: {metric: {'mean', 'std', 'per_seed'}}}} of baselines `names` on a run's seeds.

  Args:
    config: the run's config; names: keys of `baselines.BASELINES`; hashes: the run's `manifest_hashes`, one
      per seed of `config.seeds`; data: the run's interactions (before `config.ordinal_features`); label: the
      run's name in errors.
    cache: {(manifest hash, seed, support cap, names): one seed's values}, shared by runs on the same splits.
  Raises:
    ValueError when a rebuilt split's manifest hash differs from the run's (the run used other splits).
  """
  _check(config, names, label)
  cache = {} if cache is None else cache
  seeds = seed_list(config)
  if len(hashes) != len(seeds):
    raise ValueError(f"run {label!r}: {len(hashes)} manifest hashes for seeds {list(seeds)}")
  if config.ordinal_features:
    data = categorical.ordinal_as_dense(data, tuple(config.ordinal_features))
  per_seed = []
  for seed, want in zip(seeds, hashes):
    key = (want, seed, int(config.support_cap), tuple(names))  # the manifest is made before the support cap
    if key not in cache:
      split = seed_split(config, data, seed)
      if split.manifest["hash"] != want:
        raise ValueError(
          f"run {label!r}, seed {seed}: the rebuilt split's manifest hash {split.manifest['hash']} is not the "
          f"run's {want}; the data or the protocol changed since the run, so a late baseline would score other users"
        )
      cache[key] = baselines.evaluate_baselines(data, split, names, seed=seed)
    per_seed.append(cache[key])
  return {n: evaluate.summarize([r[n] for r in per_seed]) for n in names}


def data_key(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """What identifies a run's interactions: the dataset name and its keywords (runs with equal keys share data)."""
  return config.dataset_name, json.dumps(config.dataset.to_dict(), sort_keys=True, default=str)


def add_late_baselines(
  records: Sequence[MutableMapping],
  configs: Sequence[ml_collections.ConfigDict],
  names: Sequence[str],
  data_cache: MutableMapping | None = None,
) -> None:
  """Adds baselines `names` to each run record's results (in place) where the run lacks them.

  Args:
    records: `ablate.ablate(...)["runs"]` (label, results each); configs: each run's config, in the same order.
    names: keys of `baselines.BASELINES`; a run that already has one keeps its own values.
    data_cache: {`data_key`: interactions} already loaded (filled in as datasets are loaded).
  """
  cache = {} if data_cache is None else data_cache
  values: dict = {}  # runs on the same splits (equal manifest hashes) share one evaluation
  for record, config in zip(records, configs, strict=True):
    res = record["results"]
    missing = [n for n in names if n not in res.get("baselines", {})]
    _check(config, names, record["label"])
    if not missing:
      continue
    key = data_key(config)
    if key not in cache:
      cache[key] = load_dataset(config.dataset_name, **config.dataset.to_dict())
    added = late_values(config, missing, res["manifest_hashes"], cache[key], record["label"], values)
    res.setdefault("baselines", {}).update(added)
    record["late_baselines"] = missing
