"""Serving: adapt a trained meta-initialisation to a new user's few ratings and score the whole catalogue.

    import transfer_meta as tm
    bundle = tm.load_meta_params("runs/melu_ml100k")             # meta-init only (+ config.json, the dataset)
    out = tm.adapt(bundle, items=[50, 172, 181], ratings=[5, 4, 5],   # raw item ids, as in the source files
                   user_features={"age": "25-34", "gender": "F", "occupation": "engineer"})
    top = out.item_ids[np.argsort(-out.scores)[:10]]              # best 10 items (raw ids)

`load_meta_params` restores only the `best_meta_params` item (the meta-initialisation selected on the
validation metric; `item="meta_params"` gives the last one) of the run's main learner, rebuilds model and
learner from `config.json` and precomputes the catalogue's item features on the device. `adapt` runs the
learner's inner loop on the ratings (support padded to a bucket, so a few compiled shapes serve every user)
and scores every item with the adapted parameters in one jitted call. A run that fine-tuned MiniLM's last layer
(`text_finetune_last_layer`) with a learner that does not adapt it is served through that layer's output for the
whole catalogue, computed once per bundle (`served_params`); each request then reads rows of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transfer_meta import baselines, learner_state
from transfer_meta.checkpoint import abstract_tree, restore_item
from transfer_meta.data import categorical, load_dataset
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.data.interactions import UNKNOWN, DataError, Interactions
from transfer_meta.data.protocols import make_protocol
from transfer_meta.data.tasks import DEFAULT_BUCKETS, PRIOR, bucket
from transfer_meta.learners import get_learner
from transfer_meta.learners.base import Learner
from transfer_meta.train import _cap, build_model, seed_list

_ITEM_KEYS = ("item", "item_cat", "item_multi", "item_dense")


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A loaded meta-initialisation ready to adapt."""

  config: ml_collections.ConfigDict
  data: Interactions
  learner: Learner
  meta_params: Any  # pytree of one seed's meta-parameters
  step: int  # checkpoint step it came from
  seed: int
  catalogue: dict  # item-side example arrays on device: item int32 [I], item_cat [I, Fi], ...[, prior f32 [I]]
  item_index: Mapping  # raw item id -> dense id
  user_maps: tuple | None = None  # per user categorical feature, value id -> OOV-remapped id (oov_min_count runs)
  item_maps: tuple | None = None  # the same per item categorical feature (a brand-new item's codes go through it)
  new_item_prior: float | None = None  # residual runs: the reference of an item without training rows (their mean)
  # `served_params`' result, computed at the first call (not an init field: `dataclasses.replace` starts afresh).
  _served: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)


class Adapted(NamedTuple):
  task_params: Any  # the model parameters adapted to this user
  scores: np.ndarray  # f32 [I]: predicted rating (or click logit) of every catalogue item, dense-id order
  item_ids: np.ndarray  # object [I]: raw item id of each score


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the --workdir of a finished run?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_meta_params(
  workdir: str, seed_index: int = 0, item: str = "best_meta_params", data: Interactions | None = None
) -> Bundle:
  """Loads one seed's meta-initialisation of a run's main learner, and what adapting it needs.

  Args:
    workdir: the run's --workdir (holds config.json and checkpoints/<learner>/).
    seed_index: which of the run's seeds (position in `config.seeds`).
    item: 'best_meta_params' (selected on validation) or 'meta_params' (latest).
    data: the run's dataset if already loaded (else loaded from config.json's dataset fields).
  Returns:
    A `Bundle` for `adapt`.
  """
  if item not in ("best_meta_params", "meta_params"):
    raise ValueError(f"item must be 'best_meta_params' or 'meta_params', got {item!r}")
  config = _read_config(workdir)
  seeds = list(seed_list(config))
  if not 0 <= seed_index < len(seeds):
    raise ValueError(f"seed_index={seed_index} out of range for the run's {len(seeds)} seeds")
  data = load_dataset(config.dataset_name, **config.dataset.to_dict()) if data is None else data
  data, feats, spec, maps, prior, new_prior = _protocol_inputs(config, data, seeds[seed_index])
  model = build_model(config, spec, data)  # as trained: keywords, compute dtype, residual
  # A stateful learner (MAMO) is served as the bundle of its meta-params and state (`learner_state`).
  learner = learner_state.eval_learner(get_learner(config.learner_name, model, **config.learner.to_dict()))
  example = make_examples(feats, np.zeros(1, np.int32), np.zeros(1, np.int32))
  if prior is not None:
    example[PRIOR] = prior[:1]

  def init(key):
    return learner.init(key, model.init(key, example, example))

  one = jax.eval_shape(init, jax.random.key(0))
  stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(seeds), *x.shape), x.dtype), one)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  step, params = restore_item(
    os.path.join(workdir, "checkpoints", config.learner_name), item, abstract_tree(stacked, device)
  )
  catalogue = {
    k: jnp.asarray(v)
    for k, v in make_examples(feats, np.zeros(data.n_items, np.int32), np.arange(data.n_items, dtype=np.int32)).items()
    if k in _ITEM_KEYS
  }
  if prior is not None:
    catalogue[PRIOR] = jnp.asarray(prior)
  item_index = {_key(r): i for i, r in enumerate(data.item_raw_ids)}
  return Bundle(
    config,
    data,
    learner,
    jax.tree.map(lambda x: x[seed_index], params),
    step,
    seeds[seed_index],
    catalogue,
    item_index,
    maps["user"] if maps else None,
    maps["item"] if maps else None,
    new_prior,
  )


def _protocol_inputs(config: ml_collections.ConfigDict, data: Interactions, seed: int) -> tuple:
  """What issue 8's training-protocol fields change at serving time, rebuilt from the run's split of `seed`:
  (data with ordinal columns, feature matrices with OOV remapping, spec, OOV maps {"user", "item"} or None,
  per-item reference prior f32 [I] or None, the prior of an item with no training rows or None)."""
  if config.get("ordinal_features", ()):
    data = categorical.ordinal_as_dense(data, tuple(config.ordinal_features))
  feats, spec = FeatureMatrices.from_interactions(data), FeatureSpec.from_interactions(data)
  residual, min_count = config.get("residual", ""), config.get("oov_min_count", 0)
  if not (residual or min_count):
    return data, feats, spec, None, None, None
  split = make_protocol(config.protocol_name, data, seed=seed, **config.protocol.to_dict())
  split = _cap(split, config.get("support_cap", 0))
  if split.task_kind != "user":
    raise ValueError(f"serving adapts to a user; the run's protocol {config.protocol_name!r} has item tasks")
  maps = None
  if min_count:
    maps = categorical.oov_maps(data, split, min_count)
    feats = categorical.with_oov(feats, data, split, min_count)
    spec = categorical.oov_spec(spec)
  if not residual:
    return data, feats, spec, maps, None, None
  prior = baselines.entity_prior(residual, data, split, config.residual_lam)
  # An item without training rows: the shrunk mean of zero rows, i.e. the training mean, for every reference.
  new_prior = baselines.global_mean(split)
  return data, feats, spec, maps, prior, new_prior


def _key(raw) -> str:
  return str(raw)


def user_row(data: Interactions, user: int | None = None, user_features: Mapping | None = None) -> dict:
  """The user-side example fields of one user: {user int32 [], user_cat int32 [Fu], user_multi f32 [Vu],
  user_dense f32 [Du]} (a new user gets dense id 0).

  Args:
    data: the dataset (its user feature vocabularies).
    user: a known user's raw id (their stored features are used), or None for a new user.
    user_features: a new user's features: categorical name -> vocabulary label (e.g. {"gender": "F"}),
      multi-hot name -> list of labels, dense name -> vector. Missing categoricals are unknown (id 0).
  """
  table = data.user_features
  if user is not None:
    index = {_key(r): i for i, r in enumerate(data.user_raw_ids)}
    if _key(user) not in index:
      raise DataError(f"unknown user id {user!r} (not in {data.name}); pass user=None and user_features")
    u = index[_key(user)]
    return {
      "user": np.int32(u),
      "user_cat": table.cat_matrix()[u],
      "user_multi": table.multi_matrix()[u],
      "user_dense": table.dense_matrix()[u],
    }
  given = dict(user_features or {})
  known = set(table.categorical) | set(table.multi_hot) | set(table.dense)
  unknown = sorted(set(given) - known)
  if unknown:
    raise DataError(f"unknown user feature(s) {unknown}; {data.name} has {sorted(known)}")
  cat = []
  for name in table.categorical:
    label = given.get(name, UNKNOWN)
    vocab = table.vocab[name]
    if str(label) not in vocab:
      raise DataError(f"user feature {name!r}: {label!r} not in its vocabulary {list(vocab)}")
    cat.append(vocab.index(str(label)))
  multi = []
  for name in table.multi_hot:
    labels, vocab = given.get(name, []), table.vocab[name]
    bad = [x for x in labels if str(x) not in vocab]
    if bad:
      raise DataError(f"user feature {name!r}: labels {bad} not in its vocabulary {list(vocab)}")
    multi.append(np.isin(np.asarray(vocab), [str(x) for x in labels]).astype(np.float32))
  dense = []
  for name, arr in table.dense.items():
    vec = np.asarray(given.get(name, np.zeros(arr.shape[1])), np.float32)
    if vec.shape != (arr.shape[1],) or not np.isfinite(vec).all():
      raise DataError(f"user feature {name!r}: want {arr.shape[1]} finite values, got {vec.shape}")
    dense.append(vec)
  return {
    "user": np.int32(0),
    "user_cat": np.asarray(cat, np.int32),
    "user_multi": np.concatenate(multi) if multi else np.zeros(0, np.float32),
    "user_dense": np.concatenate(dense) if dense else np.zeros(0, np.float32),
  }


def _dense_items(bundle: Bundle, items: Sequence, dense_ids: bool) -> np.ndarray:
  if dense_ids:
    ids = np.asarray(items, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= bundle.data.n_items):
      raise DataError(f"dense item ids must be in [0, {bundle.data.n_items})")
    return ids.astype(np.int32)
  missing = [x for x in items if _key(x) not in bundle.item_index]
  if missing:
    raise DataError(f"unknown item id(s) {missing[:5]} (not in the {bundle.data.name} catalogue)")
  return np.asarray([bundle.item_index[_key(x)] for x in items], np.int32)


def _adapt_and_score(learner: Learner, meta_params, catalogue: dict, user: dict, items, target, mask, key):
  """Inner loop on the support (items/target/mask [S]), then scores of every catalogue item -> (params, f32 [I])."""

  def examples(idx, tgt, msk):
    n = idx.shape[0]
    x = {k: v[idx] for k, v in catalogue.items()}
    return {**x, "target": tgt, "mask": msk, **{k: jnp.broadcast_to(v, (n, *v.shape)) for k, v in user.items()}}

  support = examples(items, target, mask)
  n_items = catalogue["item"].shape[0]
  query = examples(jnp.arange(n_items), jnp.zeros(n_items, jnp.float32), jnp.ones(n_items, bool))
  task_params = learner.adapt(meta_params, support, key)
  return task_params, learner.model.apply(task_params, query, support)


_jitted = jax.jit(_adapt_and_score, static_argnums=0)


SHARE_PARAMS = "share_params"  # the model hook's name (`text.last_layer.SHARE_PARAMS`; the text extra is optional)


def _share_catalogue(learner: Learner, meta_params, catalogue: dict, user: dict, key):
  """The model's `share_params` hook (`text.catalogue_tail`) on a one-slot support of a one-task batch: it reads
  only shapes from the support (whether the learner adapts the hooked parameters), so any support width serves."""
  support = {k: v[:1] for k, v in catalogue.items()}
  support |= {k: jnp.asarray(v)[None] for k, v in user.items()}
  support |= {"target": jnp.zeros(1, jnp.float32), "mask": jnp.ones(1, bool)}
  one_task = jax.tree.map(lambda a: a[None], support)
  return learner.model.aux[SHARE_PARAMS](learner, meta_params, one_task, key)


def served_params(bundle: Bundle) -> Any:
  """`bundle.meta_params` as `adapt` reads them: for a model with a `share_params` hook (MiniLM's fine-tuned last
  layer, `text.last_layer.with_text_tail`) whose learner does not adapt the hooked parameters, the tail's output
  for the whole catalogue precomputed once per bundle (`catalogue_tail.share_params`, as evaluation does once per
  evaluation), so each request reads rows of it instead of running the layer over every catalogue item; otherwise
  `bundle.meta_params` itself. Computed at the first call and kept in the bundle.
  """
  if SHARE_PARAMS not in (bundle.learner.model.aux or {}):
    return bundle.meta_params
  if "params" not in bundle._served:
    row = user_row(bundle.data, None, {})
    key = jax.random.key(0)  # shapes only
    # Called eagerly: the hook runs its catalogue table as its own program (no host callback: cacheable).
    out = _share_catalogue(bundle.learner, bundle.meta_params, bundle.catalogue, row, key)
    # Unchanged (the learner adapts the hooked parameters: per-slot path): keep the bundle's own arrays.
    same = jax.tree.structure(out) == jax.tree.structure(bundle.meta_params)
    bundle._served["params"] = bundle.meta_params if same else out
  return bundle._served["params"]


def adapt(
  bundle: Bundle | str,
  items: Sequence,
  ratings: Sequence[float],
  user: Any = None,
  user_features: Mapping | None = None,
  dense_ids: bool = False,
  key: jax.Array | None = None,
) -> Adapted:
  """Adapts the meta-initialisation to one user's ratings and scores the whole catalogue.

  Args:
    bundle: from `load_meta_params`, or a run's workdir (loaded on the fly).
    items: the rated items' raw ids (as in the source), or dense ids with `dense_ids=True`. May be empty.
    ratings: their ratings (targets: 0/1 clicks in a click setting).
    user: a known user's raw id (their stored features and id), or None for a new user described by
      `user_features` (models that embed user ids then see id 0's row: serve them known users only).
    user_features: see `user_row`.
    key: PRNG key for stochastic learners (default: fixed).
  Returns:
    `Adapted(task_params, scores f32 [I], item_ids object [I])`.
  """
  if isinstance(bundle, str):
    bundle = load_meta_params(bundle)
  return _adapt(bundle, served_params(bundle), items, ratings, user, user_features, dense_ids, key)


def _adapt(bundle: Bundle, params, items, ratings, user, user_features, dense_ids: bool, key) -> Adapted:
  """`adapt` with the meta-parameters given (`served_params(bundle)`, or those extended by `score_new_items`)."""
  dense = _dense_items(bundle, items, dense_ids)
  ratings = np.asarray(ratings, np.float32)
  if ratings.shape != dense.shape or not np.isfinite(ratings).all():
    raise DataError(f"need one finite rating per item: {dense.shape[0]} items, ratings shape {ratings.shape}")
  row = user_row(bundle.data, user, user_features)
  if bundle.user_maps is not None:
    row["user_cat"] = categorical.remap(row["user_cat"], bundle.user_maps)
  width = bucket(max(dense.shape[0], 1), tuple(bundle.config.get("buckets", DEFAULT_BUCKETS)))
  pad = width - dense.shape[0]
  key = jax.random.key(0) if key is None else key
  task_params, scores = _jitted(
    bundle.learner,
    params,
    bundle.catalogue,
    row,
    np.concatenate([dense, np.zeros(pad, np.int32)]),
    np.concatenate([ratings, np.zeros(pad, np.float32)]),
    np.arange(width) < dense.shape[0],
    key,
  )
  return Adapted(task_params, np.asarray(scores), bundle.data.item_raw_ids)


def score_new_items(
  bundle: Bundle | str,
  new_items: Sequence[Mapping],
  items: Sequence = (),
  ratings: Sequence[float] = (),
  user: Any = None,
  user_features: Mapping | None = None,
  dense_ids: bool = False,
  key: jax.Array | None = None,
) -> np.ndarray:
  """Zero-shot scores of brand-new items (not in the catalogue, no ratings) from their text, for one user.

  The run must have been trained with item text features (`config.dataset.text_features=True`); each new item
  is embedded with the same MiniLM model and text template (`transfer_meta.text.zero_shot`), then scored by the
  meta-initialisation adapted to the user's ratings (none given: the meta-initialisation itself). A run that
  fine-tuned the encoder's last layer (`text_finetune_last_layer`) scores them through that trained layer.

  Args:
    bundle: from `load_meta_params`, or a run's workdir.
    new_items: one dict per new item, e.g. {"title": "Heat"} or {"title": ..., "genre": ["Crime"]}.
    items, ratings, user, user_features, dense_ids, key: the user and their support, as in `adapt`.
  Returns:
    f32 [len(new_items)]: predicted rating (or click logit) of each new item.
  """
  from transfer_meta.text.zero_shot import new_item_rows

  if isinstance(bundle, str):
    bundle = load_meta_params(bundle)
  model_kw = bundle.config.model
  if model_kw.get("use_item_ids") or model_kw.get("use_ids"):  # a new item has no trained id row
    raise ValueError("zero-shot scoring of new items needs a model without item ids (config.model.use_item_ids=False)")
  template = bundle.config.dataset.get("text_template", "{title}")
  rows = new_item_rows(bundle.data, new_items, template)
  params, extra = served_params(bundle), {}
  if bundle.config.dataset.get("text_finetune_last_layer", False):  # the new items go through the trained layer
    params, extra = _new_items_tail(bundle, params, new_items, template, rows)
  if bundle.item_maps is not None:  # codes unseen or rare in training read the trained OOV row, as in evaluation
    rows["item_cat"] = categorical.remap(rows["item_cat"], bundle.item_maps)
  if bundle.new_item_prior is not None:
    rows[PRIOR] = np.full(len(new_items), bundle.new_item_prior, np.float32)
  # The new items join the catalogue for one call: `adapt` scores every catalogue row, the last n are theirs.
  catalogue = {k: jnp.concatenate([bundle.catalogue[k], jnp.asarray(rows[k])]) for k in bundle.catalogue}
  catalogue |= {k: jnp.asarray(v) for k, v in extra.items()}
  bundle = dataclasses.replace(bundle, catalogue=catalogue)
  out = _adapt(bundle, params, items, ratings, user, user_features, dense_ids, key)
  return out.scores[-len(new_items) :]


def _new_items_tail(bundle: Bundle, params, new_items: Sequence[Mapping], template: str, rows: dict) -> tuple:
  """A fine-tuned text tail's view of the new items: (params, extra catalogue fields); updates `rows["item"]`.

  With the catalogue's tail output precomputed (`served_params`: the learner does not adapt the layer), the new
  items' outputs through the trained layer are appended to that table and the new rows read them by their ids
  I..I+n-1. Otherwise (a learner that adapts the layer) every catalogue row and new item brings its own layer
  inputs (`zero_shot.tail_catalogue`), which the adapted layer reads per row.
  """
  from transfer_meta.text import catalogue_tail, zero_shot

  cache_dir = bundle.config.dataset.get("cache_dir")
  paths = [p for p in catalogue_tail.tail_paths(params) if catalogue_tail.TABLE in catalogue_tail.get_path(params, p)]
  if not paths:
    return params, zero_shot.tail_catalogue(bundle.data, new_items, template, cache_dir)
  (path,) = paths
  layer = catalogue_tail.get_path(bundle.meta_params, path)
  feats = zero_shot.new_item_tail_features(bundle.data, new_items, template, layer, cache_dir)
  table = catalogue_tail.get_path(params, path)[catalogue_tail.TABLE]
  rows["item"] = np.arange(table.shape[0], table.shape[0] + len(new_items), dtype=np.int32)
  table = jnp.concatenate([table, jnp.asarray(feats, table.dtype)])
  return catalogue_tail.set_path(params, path, {catalogue_tail.TABLE: table}), {}
