"""Fine-tuning the text encoder's last layer with the recommender: cached states, a model-side tail.

    table = item_tail_table(data, "{title}")            # states entering layer 5, cached like the embedding
    model = with_text_tail(get_model("melu", spec), table, column)
    params = model.init(key, x, context)                 # {..., "text_tail": layer 5's pretrained params}

The encoder's first `layers - 1` layers stay frozen: the token states entering the last layer are computed
once per dataset (f32 [I, L, H] plus the bool [I, L] token mask, L the longest item text rounded up to
`minilm.PAD_MULTIPLE`) and cached beside the embedding (same key, suffix "layer<k>"). The model-side tail runs
that last layer (`bert.Layer`, the encoder's own code), masked mean pooling and L2 normalisation from the
cached states of the batch's items only, and writes the result over the frozen text columns of `item_dense`
before the backbone reads them. Its parameters start as the pretrained layer's, so at step 0 the feature is
the frozen embedding; they live under the top-level key `TAIL` of the model's params and are trained by the
outer loop. The layer's parameter names avoid the words adapt regexes use ("output", "head", ...), so the
inner loop adapts them only when a regex names `text_tail`.

The states stay in host memory and reach the device through `jax.pure_callback` (one gather of the batch's
item ids): closed over as a constant, a [1682, 40, 384] table would be embedded in every compiled program. A table
of at most `catalogue_tail.INLINE_BYTES` is compiled in as a constant instead (no host round trip, and programs
jax's persistent compilation cache can keep, which it never does for host callbacks). The trainer's meta-step,
when the learner does not adapt the tail, takes the catalogue's inputs as arguments instead (`STEP_INPUTS`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfer_meta.data import wheel_files
from transfer_meta.data.interactions import DataError, Interactions
from transfer_meta.models.base import Model
from transfer_meta.step import STEP_INPUTS  # the model.aux hook the jitted meta-step reads
from transfer_meta.text import catalogue_tail, item_features
from transfer_meta.text.bert import BertConfig, Layer, mean_pool, states_before
from transfer_meta.text.catalogue_tail import TABLE, TAIL

log = logging.getLogger(__name__)

# TAIL: top-level key of the tail's parameters in the wrapped model's params; params[TAIL] = {TABLE: [I, H]} is the
# tail's output precomputed for the catalogue (`catalogue_tail`: once per meta-step / evaluation).
SHARE_GRAD, SHARE_PARAMS = "share_grad", "share_params"  # model.aux hooks the trainer and evaluation call
# Optional example fields: the rows' own last-layer inputs f32 [..., L, H] / bool [..., L], read instead of the
# cached states of x["item"] (`zero_shot.tail_catalogue`: brand-new items at serving time).
STATES, STATES_MASK = "text_states", "text_states_mask"


class TailTable(NamedTuple):
  """What the tail needs: the encoder's sizes, its last layer's pretrained parameters and the cached states."""

  config: BertConfig
  params: Any  # pytree of `bert.Layer(config)` parameters (the pretrained last layer)
  states: np.ndarray  # f32 [I, L, H] token states entering the last layer, per item (dense-id order)
  mask: np.ndarray  # bool [I, L] True = real token


# One jit for every call (a jit made per call re-traces the frozen layers each time: serving calls this per request).
_states_before = jax.jit(states_before, static_argnums=(1, 4))


def layer_inputs(enc, texts, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Token states entering `enc`'s last layer for each text, padded to one length.

  Args:
    enc: a `minilm.TextEncoder`.
    texts: n strings.
    batch_size: texts per forward pass.
  Returns:
    (states f32 [n, L, H], mask bool [n, L]); L = the longest token list rounded up to `minilm.PAD_MULTIPLE`.
  """
  from transfer_meta.text import minilm

  token_ids = [e.ids for e in enc.tokenizer.encode_batch(list(texts))]
  ids, mask = minilm.pad_batch(token_ids, len(token_ids))
  states = np.zeros((*ids.shape, enc.config.hidden), np.float32)
  for idx in minilm.length_batches([len(t) for t in token_ids], batch_size):
    b_ids, b_mask = minilm.pad_batch([token_ids[i] for i in idx], batch_size)
    out = np.asarray(_states_before(enc.params, enc.config, b_ids, b_mask, enc.config.layers - 1))
    states[idx, : out.shape[1]] = out[: len(idx)]
  return states, mask


def item_tail_table(
  data: Interactions,
  template: str = item_features.DEFAULT_TEMPLATE,
  cache_dir: str | os.PathLike | None = None,
  encoder=None,
  batch_size: int = 64,
) -> TailTable:
  """The items' last-layer inputs, from the cache or computed once and cached, with the pretrained last layer.

  The cache file is the embedding's (`item_features`: key over dataset, template, model checksum and texts)
  with suffix "-layer<k>.npz"; a file whose shapes disagree with the dataset is recomputed.
  """
  from transfer_meta.text import minilm

  encoder = minilm.shared_encoder(cache_dir) if encoder is None else encoder
  last = encoder.config.layers - 1
  texts = item_features.render_texts(data, template)
  key = item_features.cache_key(data.name, template, encoder.checksum, texts)
  emb_path = item_features._cache_path(cache_dir, data.name, key)
  path = emb_path.with_name(f"{emb_path.stem}-layer{last}.npz")
  states = mask = None
  if path.is_file():
    with np.load(path) as f:
      states, mask = f["states"], f["mask"]
    ok = states.ndim == 3 and states.shape[0] == data.n_items and mask.shape == states.shape[:2]
    if not (ok and states.dtype == np.float32 and np.isfinite(states).all()):
      log.warning("%s: cached layer inputs %s are %s %s; recomputing", data.name, path, states.dtype, states.shape)
      states = mask = None
  if states is None:
    states, mask = layer_inputs(encoder, texts, batch_size)
    buf = io.BytesIO()
    np.savez(buf, states=states, mask=mask)
    wheel_files.write_atomic(path, buf.getvalue())
    meta = dict(dataset=data.name, template=template, model=minilm.NAME, key=key, layer=last)
    wheel_files.write_atomic(path.with_suffix(".json"), json.dumps(meta | {"shape": list(states.shape)}).encode())
    log.info("%s: last-layer inputs %s cached at %s", data.name, states.shape, path)
  params = jax.tree.map(np.asarray, encoder.params[f"layer_{last}"])
  return TailTable(encoder.config, params, states, mask.astype(bool))


def text_column(data: Interactions, feature: str = item_features.FEATURE) -> int:
  """First column of dense item feature `feature` in `item_dense` (features concatenated in dict order)."""
  dense = data.item_features.dense
  if feature not in dense:
    raise DataError(f"{data.name}: no dense item feature {feature!r} to fine-tune (have {sorted(dense)})")
  names = list(dense)
  return int(sum(dense[n].shape[1] for n in names[: names.index(feature)]))


def gather(table: TailTable, items: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(states f32 [..., L, H], mask bool [..., L]) of item ids `items` [...].

  A small table (`catalogue_tail.inlined`) is read in the program itself, where an id outside [0, I) reads NaN
  states (so a NaN feature, never a neighbour's); a larger one is gathered on the host, where such an id raises.
  """
  n, L, H = table.states.shape
  if catalogue_tail.inlined(table.states, table.mask):
    ids = jnp.asarray(items, jnp.int32)
    states = jnp.take(table.states, ids, axis=0, mode="fill", fill_value=jnp.nan)
    return jax.lax.optimization_barrier((states, jnp.take(table.mask, ids, axis=0, mode="fill", fill_value=False)))

  def host(ids):
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
      raise ValueError(f"text tail: item ids must be in [0, {n}), got {ids.min()}..{ids.max()}")
    return table.states[ids], table.mask[ids]

  shapes = (jax.ShapeDtypeStruct((*items.shape, L, H), jnp.float32), jax.ShapeDtypeStruct((*items.shape, L), bool))
  return jax.pure_callback(host, shapes, items.astype(jnp.int32), vmap_method="expand_dims")


def tail_feature(tail_params, config: BertConfig, states: jax.Array, mask: jax.Array) -> jax.Array:
  """The last layer, masked mean pooling and L2 norm: f32 [..., H] from states [..., L, H] and mask [..., L]."""
  lead, (L, H) = states.shape[:-2], states.shape[-2:]
  flat_s, flat_m = states.reshape(-1, L, H), mask.reshape(-1, L)
  out = mean_pool(Layer(config).apply({"params": tail_params}, flat_s, flat_m), flat_m)
  return out.reshape(*lead, H)


# Backward passes recompute the layer from the states instead of storing its [N, L, 4H] activations per task
# (and per inner step under MAML): memory grows with the batch's item tokens, not with the layer's width.
_tail_remat = jax.checkpoint(tail_feature, static_argnums=(1,))


def with_text_tail(model: Model, table: TailTable, column: int) -> Model:
  """`model` reading its text feature from a trainable last encoder layer instead of the frozen embedding.

  Args:
    model: a backbone whose params are a dict (Flax variables) and whose examples carry `item` ids and
      `item_dense` with the frozen text embedding at columns [column, column + H).
    table: `item_tail_table`'s states and pretrained layer.
    column: where the text feature starts in `item_dense` (`text_column`).
  Returns:
    A `Model` with params {**model's, TAIL: the layer's params}; same name, adapt and head regexes. Its `aux`
    adds SHARE_GRAD / SHARE_PARAMS (`catalogue_tail.share_grad` / `share_params` bound to the table): the
    trainer and evaluation call them to run the tail once per meta-step / evaluation for the whole
    catalogue when the learner does not adapt it; `apply` then reads rows of params[TAIL][TABLE]. And
    STEP_INPUTS (`catalogue_fn`'s `step_inputs`): the jitted meta-step takes the catalogue's inputs as arguments.
  """
  H = table.config.hidden
  groups = catalogue_tail.length_groups(table.mask)
  tail_fn = lambda p, s, m: _tail_remat(p, table.config, s, m)  # noqa: E731

  catalogue = catalogue_tail.catalogue_fn(tail_fn, table.states, table.mask, groups)

  def checked(x: Mapping | None):
    if x is not None and "item_dense" in x and x["item_dense"].shape[-1] < column + H:
      raise ValueError(f"text tail: item_dense has width {x['item_dense'].shape[-1]}, need {column + H}")
    return x if x is None else {k: v for k, v in x.items() if k not in (STATES, STATES_MASK)}

  def swap(tail, x: Mapping | None):
    if x is None or "item_dense" not in x:
      return x
    checked(x)
    if STATES in x:  # each row brings its own layer inputs (zero-shot serving of items outside the catalogue)
      if TABLE in tail:
        raise ValueError("text tail: rows with their own text states need the layer's params, not the catalogue table")
      feat = _tail_remat(tail, table.config, x[STATES], x[STATES_MASK])
    elif TABLE in tail:  # precomputed for the catalogue: a row lookup (an id outside it reads NaN, never a neighbour)
      feat = jnp.take(tail[TABLE], x["item"], axis=0, mode="fill", fill_value=jnp.nan)
    else:
      feat = _tail_remat(tail, table.config, *gather(table, x["item"]))
    dense = x["item_dense"]
    new = jnp.concatenate([dense[..., :column], feat.astype(dense.dtype), dense[..., column + H :]], axis=-1)
    return {**{k: v for k, v in x.items() if k not in (STATES, STATES_MASK)}, "item_dense": new}

  def init(key, x, context=None):
    tail = jax.tree.map(jnp.asarray, table.params)
    # The inputs as they are: at init the tail is the pretrained layer, whose output is the frozen embedding
    # already in item_dense, and a backbone's init reads only their shapes (no gather, so no host callback).
    params = model.init(key, checked(x), checked(context))
    if not isinstance(params, Mapping) or TAIL in params:
      raise ValueError(f"text tail: the model's params must be a dict without key {TAIL!r}")
    return {**params, TAIL: tail}

  def apply(params, x, context=None):
    tail = params[TAIL]
    inner = {k: v for k, v in params.items() if k != TAIL}
    return model.apply(inner, swap(tail, x), swap(tail, context))

  aux = _Hooks(model.aux or {})
  aux[SHARE_GRAD] = lambda learner, grad_fn: catalogue_tail.share_grad(learner, catalogue, grad_fn)
  aux[SHARE_PARAMS] = lambda learner, *a: catalogue_tail.share_params(learner, catalogue, *a)
  aux[STEP_INPUTS] = catalogue.step_inputs
  return model._replace(init=init, apply=apply, aux=aux)


class _Hooks(dict):
  """`model.aux` compared and hashed by identity, as its functions are: a learner over the model stays a valid
  static argument of `jax.jit` (serving's `_jitted`), which a plain dict is not."""

  __hash__ = object.__hash__

  def __eq__(self, other):
    return self is other

  def __ne__(self, other):
    return self is not other


def with_dataset_tail(model: Model, data: Interactions | None, template: str, cache_dir=None) -> Model:
  """`with_text_tail` for a dataset loaded with text features (`config.dataset.text_finetune_last_layer`)."""
  if data is None:
    raise ValueError("text_finetune_last_layer needs the dataset to build the model (pass data=)")
  return with_text_tail(model, item_tail_table(data, template, cache_dir), text_column(data))
