"""Cross-domain methods: their maths against independent computations (EMCDR's mapped scores and mapping loss,
CMF's weighted loss, PTUPCDR's attention-pooled bridge, the DANN/MMD/CORAL objectives with the reversed
gradient), the domain streams on a genre split of the synthetic data, and poisoning: the cold users' target
ratings set to 1000 leave every trained parameter bitwise unchanged. The end-to-end run of every cross-domain
strategy is the shared smoke test in tests/test_strategies.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfer_meta import programs, runlog, stages, train
from transfer_meta.data import domain_streams, load_dataset
from transfer_meta.data.cross_domain import SOURCE, TARGET
from transfer_meta.data.domains import with_domains
from transfer_meta.data.examples import FeatureSpec, make_examples
from transfer_meta.data.interactions import DataError
from transfer_meta.data.streams import training_rows
from transfer_meta.domain_adapt import coral, dann_lambda, mmd2
from transfer_meta.losses import bce
from transfer_meta.models.mf import mf
from transfer_meta.strategies import CROSS_DOMAIN, NEEDS_SHARED_USERS, check_kwargs, get_strategy
from transfer_meta.strategies.align import Discriminator, FeatureNet, align_model, align_objective
from transfer_meta.strategies.emcdr import MFVectors, cmf_objective, emcdr_model, mapping_objective
from transfer_meta.strategies.ptupcdr import Bridge, ptupcdr_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, B, H = 4, 6, 5


def load_config(arg: str) -> object:
  path = os.path.join(ROOT, "configs", "cross_domain_synthetic.py")
  spec = importlib.util.spec_from_file_location("cfg_cross_domain_synthetic", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def exp():
  config = load_config("emcdr,tiny")
  config.unlock()
  config.seeds = 1
  return train.build_experiment(config)


def _x(exp, n: int = B, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  users, items = rng.integers(exp.data.n_users, size=n), rng.integers(exp.data.n_items, size=n)
  x = make_examples(exp.feats, users, items, rng.uniform(1, 5, n).astype(np.float32), rng.random(n) < 0.8)
  x["mask"][0] = True
  return x


def _randomise(params, seed: int, scale: float = 0.3):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def test_mf_vectors_reproduce_the_mf_scores(exp):
  x = _x(exp)
  params = _randomise(mf(exp.spec, dim=D).init(jax.random.key(0), x), 1)
  u, bu, v, bi, g = MFVectors(exp.spec, D).apply(params, x)
  np.testing.assert_allclose(np.sum(u * v, -1) + bu + bi + g, mf(exp.spec, dim=D).apply(params, x), rtol=1e-5)


@pytest.mark.parametrize("mapping", ["linear", "mlp"])
def test_emcdr_scores_every_user_through_the_mapping_of_their_source_vector(exp, mapping):
  x = _x(exp)
  model = emcdr_model(exp.spec, D, mapping, hidden=3)
  params = _randomise(model.init(jax.random.key(0), x), 2)
  parts = MFVectors(exp.spec, D)
  u_s, b_s, *_ = _np(parts.apply(params["source"], x))
  _, _, v_t, b_i, g = _np(parts.apply(params["target"], x))
  m = _np(params["map"]["params"])
  z = np.concatenate([u_s, b_s[:, None]], 1)
  if mapping == "linear":
    z = z @ m["linear"]["kernel"] + m["linear"]["bias"]
  else:
    z = np.tanh(z @ m["hidden"]["kernel"] + m["hidden"]["bias"]) @ m["out"]["kernel"] + m["out"]["bias"]
  a = _np(params["adapt"])
  want = np.sum((z[:, :D] + a["user_delta"]) * v_t, 1) + z[:, D] + a["user_bias_delta"] + b_i + g
  np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-4, atol=1e-5)
  # The target MF's own user side (ids, features, deltas) is never read: a cold user needs only the mapping.
  moved = dict(params, target=jax.tree_util.tree_map_with_path(
    lambda p, v: v + 1.0 if "user" in jax.tree_util.keystr(p) else v, params["target"]
  ))  # fmt: skip
  np.testing.assert_array_equal(model.apply(moved, x), model.apply(params, x))
  fresh = model.init(jax.random.key(0), x)["map"]["params"]
  if mapping == "linear":  # the linear map starts at the identity
    np.testing.assert_array_equal(fresh["linear"]["kernel"], np.eye(D + 1))


def test_emcdr_mapping_loss_is_the_mean_squared_error_of_user_vectors(exp):
  x = _x(exp)
  model = emcdr_model(exp.spec, D, "linear")
  params = _randomise(model.init(jax.random.key(0), x), 3)
  loss, _ = mapping_objective(exp.spec, D, "linear", 64)(params, x, None)
  parts = MFVectors(exp.spec, D)
  u_s, b_s, *_ = _np(parts.apply(params["source"], x))
  u_t, b_t, *_ = _np(parts.apply(params["target"], x))
  m = _np(params["map"]["params"]["linear"])
  z = np.c_[u_s, b_s] @ m["kernel"] + m["bias"]
  err = np.sum((z - np.c_[u_t, b_t]) ** 2, 1)
  np.testing.assert_allclose(loss, err[x["mask"]].mean(), rtol=1e-5)
  grads = jax.grad(lambda p: mapping_objective(exp.spec, D, "linear", 64)(p, x, None)[0])(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["target"]))  # the regression targets are constants


def test_cmf_loss_weights_the_two_rating_matrices(exp):
  part = mf(exp.spec, dim=D)
  s, t = _x(exp, seed=1), _x(exp, seed=2)
  params = _randomise(part.init(jax.random.key(0), s), 4)
  loss, metrics = cmf_objective(part, 0.3)(params, {"source": s, "target": t}, None)
  mse = lambda x: np.mean((np.asarray(part.apply(params, x), np.float64) - x["target"])[x["mask"]] ** 2)  # noqa: E731
  np.testing.assert_allclose(metrics["source_loss"], mse(s), rtol=1e-5)
  np.testing.assert_allclose(metrics["target_loss"], mse(t), rtol=1e-5)
  np.testing.assert_allclose(loss, 0.3 * mse(s) + 0.7 * mse(t), rtol=1e-5)
  with pytest.raises(ValueError, match="alpha"):
    cmf_objective(part, 1.5)


def test_ptupcdr_bridge_is_attention_pooling_then_a_personal_matrix():
  rng = np.random.default_rng(0)
  e = rng.normal(size=(B, H, D)).astype(np.float32)
  mask = rng.random((B, H)) < 0.7
  mask[:, 0], mask[-1] = True, False  # the last user has no history
  bridge = Bridge(D, hidden=3)
  params = _randomise(bridge.init(jax.random.key(0), e, mask), 5)
  w, beta = bridge.apply(params, e, mask)
  p = _np(params["params"])
  lin = lambda h, name: h @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
  logits = lin(np.maximum(lin(e, "att_hidden"), 0), "att_out")[..., 0]
  a = np.where(mask, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
  a = a / np.maximum(a.sum(1, keepdims=True), 1e-30)
  pooled = np.einsum("nh,nhd->nd", a, e)
  h = np.maximum(lin(pooled, "bridge_hidden"), 0)
  want_w = np.eye(D) + lin(h, "bridge_out").reshape(B, D, D)
  np.testing.assert_allclose(w, want_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(beta, lin(h, "bias_out")[:, 0], rtol=1e-4, atol=1e-5)
  garbage = np.where(mask[..., None], e, 99.0).astype(np.float32)  # padded history entries change nothing
  for got, want in zip(bridge.apply(params, garbage, mask), (w, beta)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  w0, beta0 = bridge.apply(bridge.init(jax.random.key(1), e, mask), e, mask)  # zero-initialised outputs
  np.testing.assert_array_equal(w0, np.broadcast_to(np.eye(D), (B, D, D)))
  np.testing.assert_array_equal(beta0, np.zeros(B))


def test_ptupcdr_scores_with_the_bridged_source_vector(exp):
  x = _x(exp)
  hist_items = np.random.default_rng(1).integers(exp.data.n_items, size=(exp.data.n_users, H))
  hist_mask = np.ones((exp.data.n_users, H), bool)
  users = np.broadcast_to(np.arange(exp.data.n_users)[:, None], hist_items.shape)
  history = make_examples(exp.feats, users, hist_items, None, hist_mask)
  model = ptupcdr_model(exp.spec, history, D, hidden=3)
  params = _randomise(model.init(jax.random.key(0), x), 6)
  parts = MFVectors(exp.spec, D)
  u_s, b_s, *_ = parts.apply(params["source"], x)
  _, _, v_t, b_i, g = parts.apply(params["target"], x)
  hist = jax.tree.map(lambda a: a[x["user"]], history)
  e = parts.apply(params["source"], hist)[2]
  w, beta = Bridge(D, 3).apply(params["meta"], e, hist["mask"])
  a = params["adapt"]
  u = np.einsum("nd,nde->ne", u_s, w) + a["user_delta"]
  want = np.sum(u * v_t, -1) + b_s + beta + a["user_bias_delta"] + b_i + g
  np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-4, atol=1e-5)


def test_history_items_keep_the_newest_source_items_per_user(exp):
  data = exp.data
  split = exp.seeds[0].split
  src = split.source_rows
  users = np.unique(data.user[src])[:5]
  items, mask = domain_streams.history_items(data, src, np.r_[users, data.n_users - 1], max_len=3)
  for n, u in enumerate(users):
    rows = src[data.user[src] == u]
    rows = rows[np.lexsort((-rows, -data.timestamp[rows]))][:3]
    np.testing.assert_array_equal(items[n, : rows.size], data.item[rows])
    assert mask[n].sum() == rows.size and not mask[n, rows.size :].any()
  with pytest.raises(ValueError, match="max_len"):
    domain_streams.history_items(data, src, users, 0)


@pytest.mark.parametrize("method", ["dann", "mmd", "coral"])
def test_alignment_objective_adds_the_term_on_encoder_outputs(exp, method):
  s, t = _x(exp, 8, seed=3), _x(exp, 8, seed=4)
  steps = 10
  batch = {"source": s, "target": t, "step": np.full(8, 4, np.int32)}
  model = align_model(exp.spec, method, 4, (6, 5))
  params = _randomise(jax.jit(model.init)(jax.random.key(0), s), 7, 0.1)
  plain = align_objective(exp.spec, method, steps, weight=0.0, target_weight=0.25, emb_dim=4, hidden=(6, 5))
  full = align_objective(exp.spec, method, steps, weight=2.0, target_weight=0.25, emb_dim=4, hidden=(6, 5))
  net = FeatureNet(exp.spec, 4, (6, 5))
  enc = lambda p, x: net.apply(p, x, method=FeatureNet.encode)  # noqa: E731

  def term(p_net, p_disc):  # the alignment term WITHOUT gradient reversal
    a, b = enc(p_net, s), enc(p_net, t)
    if method == "mmd":
      return mmd2(a, b, s["mask"], t["mask"])
    if method == "coral":
      return coral(a, b, s["mask"], t["mask"])
    logits = Discriminator().apply(p_disc, jnp.concatenate([a, b]))
    return bce(logits, jnp.r_[jnp.zeros(8), jnp.ones(8)], jnp.r_[s["mask"], t["mask"]])

  def everything(params):  # one jitted program (op by op, every primitive compiled on its own cost ~4x more)
    return {
      "plain": plain(params, batch, None),
      "full": full(params, batch, None),
      "scores": (net.apply(params["net"], s), net.apply(params["net"], t)),
      "z": (enc(params["net"], s), enc(params["net"], t)),
      "term": term(params["net"], params.get("disc")),
      "g_full": jax.grad(lambda p: full(p, batch, None)[0])(params),
      "g_plain": jax.grad(lambda p: plain(p, batch, None)[0])(params),
      "g_term": jax.grad(term, argnums=(0, 1))(params["net"], params.get("disc")),
    }

  out = jax.jit(everything)(params)
  loss0, m = out["plain"]
  mse = lambda x, score: np.mean((np.asarray(score, np.float64) - x["target"])[x["mask"]] ** 2)  # noqa: E731
  np.testing.assert_allclose(loss0, 0.75 * mse(s, out["scores"][0]) + 0.25 * mse(t, out["scores"][1]), rtol=1e-5)
  zs, zt = out["z"]
  loss, metrics = out["full"]
  np.testing.assert_allclose(metrics["align_loss"], out["term"], rtol=1e-5)
  np.testing.assert_allclose(loss, loss0 + 2.0 * metrics["align_loss"], rtol=1e-5)
  # Gradients: the alignment part of the full objective is weight * d(term) for MMD/CORAL; for DANN the encoder
  # gets -lam * weight * d(term) (reversal) while the discriminator gets +weight * d(term).
  g_full, g_plain, g_term = out["g_full"], out["g_plain"], out["g_term"]
  lam = float(dann_lambda(4 / steps)) if method == "dann" else -1.0
  np.testing.assert_allclose(float(metrics.get("lambda", -1.0)), lam, rtol=1e-6)
  sign = -lam if method == "dann" else 1.0
  enc_paths = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}  # noqa: E731
  full_net, plain_net, term_net = enc_paths(g_full["net"]), enc_paths(g_plain["net"]), enc_paths(g_term[0])
  for k in full_net:
    if "head" in k or "global_bias" in k:
      continue  # the head does not see the alignment term
    np.testing.assert_allclose(full_net[k] - plain_net[k], sign * 2.0 * term_net[k], rtol=2e-3, atol=1e-6, err_msg=k)
  assert any(np.any(term_net[k]) for k in term_net if "encoder" in k)
  if method == "dann":
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 2.0 * b, rtol=1e-4, atol=1e-7), g_full["disc"], g_term[1])
  assert zs.shape == zt.shape == (8, 5)


def test_align_model_refuses_data_without_side_features_and_unknown_methods(exp):
  bare = FeatureSpec(10, 10, (), (), 0, 0, 0, 0)
  with pytest.raises(ValueError, match="no input"):
    align_model(bare, "mmd")
  with pytest.raises(ValueError, match="valid methods"):
    align_model(exp.spec, "adda")


def test_domain_streams_draw_only_training_rows_of_the_right_domain_and_resume(exp):
  st = exp.seeds[0]
  split = st.split
  src, tgt = set(split.source_rows.tolist()), set(split.target_train_rows().tolist())
  assert tgt == set(training_rows(split).tolist())
  held = set(np.concatenate([split.tasks[n].all_rows() for n in ("valid", *split.scenarios)]).tolist())
  data = exp.data
  key = lambda x: set(zip(x["user"][x["mask"]].tolist(), x["item"][x["mask"]].tolist()))  # noqa: E731
  pairs = lambda rows: set(zip(data.user[list(rows)].tolist(), data.item[list(rows)].tolist()))  # noqa: E731
  it = domain_streams.paired_stream(data, split, exp.feats, 64, st.seed)
  for n in range(4):
    b = next(it)
    assert (b["step"] == n).all()
    assert key(b["source"]) <= pairs(src) and key(b["target"]) <= pairs(tgt)
    assert not key(b["target"]) & pairs(held)
  saved = it.state()
  ahead = next(it)
  again = domain_streams.paired_stream(data, split, exp.feats, 64, st.seed)
  again.restore(saved)
  jax.tree.map(np.testing.assert_array_equal, ahead, next(again))
  assert (split.row_domain[split.source_rows] == SOURCE).all()
  carriers = domain_streams.overlap_user_rows(data, split)
  assert np.array_equal(np.sort(data.user[carriers]), np.unique(data.user[carriers]))  # one row per user
  assert set(data.user[carriers].tolist()) == set(split.roles["train"].tolist()) & set(data.user[list(tgt)].tolist())
  assert (split.row_domain[carriers] == TARGET).all() and set(carriers.tolist()) <= tgt
  rows = domain_streams.overlap_target_rows(data, split)
  assert set(rows.tolist()) <= tgt and set(data.user[rows].tolist()) <= set(split.roles["train"].tolist())


def test_cross_domain_streams_refuse_single_domain_splits():
  config = load_config("emcdr,tiny")
  config.unlock()
  config.protocol_name, config.protocol, config.seeds = "melu", {"n_query": 5, "min_support": 3}, 1
  plain = train.build_experiment(config)
  with pytest.raises(ValueError, match="cross-domain split"):
    domain_streams.paired_stream(plain.data, plain.seeds[0].split, plain.feats, 8, 0)


def _poisoned(exp) -> object:
  """The experiment's data with every cold user's target ratings set to 1000 (the split is unchanged)."""
  split = exp.seeds[0].split
  cold = np.isin(exp.data.user, split.roles["cold_target"]) & (split.row_domain == TARGET)
  assert cold.sum() > 0
  rating = np.where(cold, np.float32(1000.0), exp.data.rating).astype(np.float32)
  return dataclasses.replace(exp.data, rating=rating, rating_scale=(1.0, 1000.0))


@pytest.mark.parametrize("name", ["emcdr", "ptupcdr", "cmf", "meta_source"])
def test_cold_users_target_ratings_never_reach_a_stage(name):
  """Every stream kind (source rows, target rows, overlapping users and their rows, domain pairs, source tasks)."""
  config = load_config(f"{name},tiny")
  config.unlock()
  config.seeds = 1
  clean = train.build_experiment(config)
  poisoned = train.build_experiment(config, data=_poisoned(clean))
  a, b = clean.seeds[0].split, poisoned.seeds[0].split  # the same users and rows (the hash also covers ratings)
  for n in a.tasks:
    np.testing.assert_array_equal(a.tasks[n].all_rows(), b.tasks[n].all_rows())
  assert not np.array_equal(a.target, b.target)
  out, built = [], []
  for exp in (clean, poisoned):
    strategy = get_strategy(name, exp.model, config, exp.spec, exp=exp, **config.strategy)
    workdir = tempfile.mkdtemp()
    mlog = runlog.MetricsLog(os.path.join(workdir, "metrics.jsonl"), [strategy.name])
    misses = programs.STATS["misses"]
    trained, _ = stages.run_strategy(exp, strategy, workdir, mlog)
    built.append(programs.STATS["misses"] - misses)
    out.append(jax.device_get(trained.selection.params))
  # The poisoned strategy closes over nothing the ratings changed (`programs.fingerprint`): it runs the clean
  # run's programs (no trace: 8.7 -> ~5 CPU-s for emcdr's pair of runs), so any difference below is the data's.
  assert built[1] == 0, built
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_ptupcdr_needs_the_experiment(exp):
  with pytest.raises(ValueError, match="needs the experiment"):
    get_strategy("ptupcdr", exp.model, exp.config, exp.spec)


def _ml100k_module():
  import sys

  sys.path.insert(0, ROOT)
  from experiments.runner import config_module

  return config_module("cross_domain_ml100k")[0]


def test_smoke_shrinks_each_cross_domain_strategys_own_steps_and_injects_no_keyword():
  """experiments.strategies --smoke on the ML-100K methods table: every row keeps exactly its keywords, its stage
  lengths capped at SMOKE_STEPS (per-task inner steps kept), and its builder takes them; a keyword the builder does
  not take (pretrain_steps to emcdr) fails before any model is built, naming it and the valid ones."""
  import sys

  sys.path.insert(0, ROOT)
  from experiments import strategies as table

  module = _ml100k_module()
  cells = table.grid("cross_domain_ml100k", ["beta05"], {"seeds": 1}, smoke=True)
  assert [r for _, r, _ in cells] == list(module.STRATEGY_KWARGS)
  assert set(CROSS_DOMAIN) <= set(module.STRATEGY_KWARGS)
  for _, row, c in cells:
    full, got = module.STRATEGY_KWARGS[row], c.strategy.to_dict()
    assert c.strategy_name == row and set(got) == set(full), row
    stage = [k for k in full if k.endswith("steps") and k != "inner_steps"]
    assert stage and all(got[k] == min(full[k], table.SMOKE_STEPS) < full[k] for k in stage), (row, got)
    assert got.get("inner_steps") == full.get("inner_steps")
    check_kwargs(row, got)
    small = module.get_config(f"{row},smoke").strategy.to_dict()  # the config's own smoke variant
    check_kwargs(row, small)
    assert all(small[k] < full[k] for k in stage), (row, small)
  with pytest.raises(ValueError, match=r"'emcdr' takes no keyword\(s\) \['pretrain_steps'\].*'mf_steps'"):
    check_kwargs("emcdr", {"pretrain_steps": 20, "mf_steps": 20})
  with pytest.raises(ValueError, match="pretrain_steps"):
    get_strategy("cmf", None, None, None, pretrain_steps=20)
  with pytest.raises(ValueError, match="valid"):
    check_kwargs("no_such_strategy", {})


def test_ml100k_config_args_cap_the_held_out_queries_and_pick_the_dataset():
  module = _ml100k_module()
  c = module.get_config("beta08,cap200,ml1m,cmf")
  assert (c.protocol.beta, c.protocol.max_query, c.dataset_name, c.strategy_name) == (0.8, 200, "ml-1m", "cmf")
  plain = module.get_config()
  assert (plain.protocol.beta, plain.protocol.max_query, plain.dataset_name) == (0.5, None, "ml-100k")
  for bad in ("cap0", "capx", "cap-3", "beta05,ml20m"):
    with pytest.raises(ValueError, match="unknown config arg"):
      module.get_config(bad)
  # the config's protocol fields are the protocol's keywords: the cap reaches every held-out query, users unchanged
  from transfer_meta.data import load_dataset
  from transfer_meta.data.protocols import make_protocol

  data = load_dataset("ml-100k")
  capped = make_protocol("genre_split", data, seed=0, **module.get_config("beta08,cap200").protocol.to_dict())
  full = make_protocol("genre_split", data, seed=0, **module.get_config("beta08").protocol.to_dict())
  for name in ("valid", "cold_target"):
    a, b = capped.tasks[name], full.tasks[name]
    np.testing.assert_array_equal(a.task_ids, b.task_ids)
    np.testing.assert_array_equal(a.query_sizes(), np.minimum(b.query_sizes(), 200))
  assert full.tasks["cold_target"].query_sizes().max() > 200  # the cap binds on this split


@pytest.fixture(scope="module")
def user_disjoint():
  """The synthetic data as two user-disjoint domains (users < 100: 'a', the rest 'b'; items shared), cut by the
  item-overlap protocol `ml1m_to_ml100k`."""
  config = load_config("emcdr,tiny")
  data = load_dataset("synthetic", **config.dataset)
  data = with_domains(data, (data.user >= data.n_users // 2).astype(np.int8), ("a", "b"))
  config.unlock()
  config.seeds, config.protocol_name = 1, "ml1m_to_ml100k"
  config.protocol = {"beta": 0.3, "n_support": 3, "min_query": 6, "n_query": 5, "valid_fraction": 0.2}
  config.protocol.update(source="a", target="b")
  return config, train.build_experiment(config, data=data)


@pytest.mark.parametrize("name", NEEDS_SHARED_USERS)
def test_user_vector_maps_refuse_user_disjoint_splits_before_any_stage(name, user_disjoint):
  config, exp = user_disjoint
  split = exp.seeds[0].split
  assert split.shared_users.size == 0 and split.roles["train"].size == 0 and split.shared_items.size > 0
  kwargs = load_config(f"{name},tiny").strategy
  with pytest.raises(
    DataError, match=rf"'{name}' maps user vectors .* share 0 users and {split.shared_items.size} items"
  ):
    get_strategy(name, exp.model, config, exp.spec, exp=exp, **kwargs)
  # The methods that transfer through items or side features build on the same experiment.
  for other in ("cmf", "dann", "meta_source"):
    assert get_strategy(other, exp.model, config, exp.spec, exp=exp, **load_config(f"{other},tiny").strategy).stages
