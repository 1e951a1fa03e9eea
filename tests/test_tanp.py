"""TaNP (models/tanp.py, learners/tanp.py): the encoder's invariances, the Student-t assignment and clustering loss
against numpy, FiLM/gating against the hand formula, the batch-level gradient, and a short real run that stays
finite (RecBole-MetaRec's TaNP produces NaN from step 3)."""

from __future__ import annotations

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_learners import SMALL, SPEC, examples, make_task, tiny_batch, tiny_model

from transfer_meta import chunking, learner_state
from transfer_meta import step as step_lib
from transfer_meta.learners import get_learner
from transfer_meta.learners.tanp import cluster_loss, gaussian_kl, target_distribution
from transfer_meta.models import get_model
from transfer_meta.models.tanp import Z_KEY, film, gating, student_t_log_assign


def _model(modulation: str = "film"):
  model = get_model("tanp", SPEC, **{**SMALL["tanp"], "modulation": modulation})
  support = make_task(0)["support"]
  return model, model.init(jax.random.key(0), support, support)


def _permute(x: dict, order: np.ndarray) -> dict:
  return {k: v[order] for k, v in x.items()}


def test_encoder_is_permutation_invariant_and_ignores_padding():
  model, params = _model()
  rng = np.random.default_rng(3)
  support = examples(rng, 4, 6, user=1)  # 4 real rows, 2 padded rows carrying garbage
  other_padding = {k: v.copy() for k, v in support.items()}
  other_padding["item"][4:] = (other_padding["item"][4:] + 3) % 7
  other_padding["target"][4:] = -50.0
  order = np.array([5, 2, 0, 4, 3, 1])
  for fn in ("embed", "latent", "assign"):
    want = model.aux[fn](params, support)
    chex.assert_trees_all_close(model.aux[fn](params, _permute(support, order)), want, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(model.aux[fn](params, other_padding), want, rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(want)
  query = examples(rng, 3, 4, user=1)
  scores = model.apply(params, query, support)
  chex.assert_trees_all_close(model.apply(params, query, _permute(other_padding, order)), scores, rtol=1e-6)
  # The rows do matter: dropping a real one changes the embedding.
  fewer = {**support, "mask": support["mask"] & (np.arange(6) != 0)}
  assert float(jnp.max(jnp.abs(model.aux["embed"](params, fewer) - model.aux["embed"](params, support)))) > 1e-4


def test_explicit_latent_mean_equals_default_scoring():
  model, params = _model()
  task = make_task(1)
  mu, _ = model.aux["latent"](params, task["support"])
  with_z = model.apply(params, task["query"], {**task["support"], Z_KEY: mu})
  chex.assert_trees_all_close(with_z, model.apply(params, task["query"], task["support"]), rtol=1e-6)
  other = model.apply(params, task["query"], {**task["support"], Z_KEY: mu + 1.0})
  assert float(jnp.max(jnp.abs(other - with_z))) > 1e-4  # the decoder reads z


def _np_log_assign(r, centers, alpha):
  d2 = ((r[None, :] - centers) ** 2).sum(-1)
  k = (1 + d2 / alpha) ** (-(alpha + 1) / 2)
  return np.log(k / k.sum())


def test_student_t_assignment_and_clustering_loss_match_numpy():
  rng = np.random.default_rng(0)
  T, K, R, alpha = 5, 3, 4, 1.5
  r, centers = rng.normal(size=(T, R)), rng.normal(size=(K, R))
  mask = np.array([True, True, False, True, True])
  log_q = np.stack([_np_log_assign(r[t], centers, alpha) for t in range(T)])
  got = jax.vmap(student_t_log_assign, in_axes=(0, None, None))(jnp.asarray(r), jnp.asarray(centers), alpha)
  np.testing.assert_allclose(got, log_q, rtol=1e-5, atol=1e-6)
  q = np.exp(log_q)
  f = (q * mask[:, None]).sum(0)  # cluster frequencies over the real tasks only
  p = q**2 / f
  p /= p.sum(1, keepdims=True)
  kl = (p * (np.log(p) - np.log(q))).sum(1)
  want = kl[mask].mean()
  np.testing.assert_allclose(np.exp(target_distribution(jnp.asarray(log_q), mask))[mask], p[mask], rtol=1e-5)
  np.testing.assert_allclose(cluster_loss(jnp.asarray(log_q), jnp.asarray(mask)), want, rtol=1e-5)
  assert want > 1e-4  # a fixture where the loss is not trivially 0
  # One task alone: P == Q and the loss vanishes, which is why it is a batch-level term.
  np.testing.assert_allclose(cluster_loss(jnp.asarray(log_q[:1]), jnp.ones(1, bool)), 0.0, atol=1e-6)
  # No real task: 0 and finite.
  assert float(cluster_loss(jnp.asarray(log_q), jnp.zeros(T, bool))) == 0.0


def test_film_and_gating_equal_the_hand_formula():
  h = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], np.float32)
  gamma, beta = np.array([0.2, -0.4, 1.0], np.float32), np.array([0.1, 0.3, -0.7], np.float32)
  eta, delta = np.array([-0.6, 0.8, 0.0], np.float32), np.array([0.0, 2.0, -1.0], np.float32)
  th = np.tanh
  np.testing.assert_allclose(film(h, gamma, beta), th(gamma) * h + th(beta), rtol=1e-6)
  d = 1 / (1 + np.exp(-delta))
  g2, b2 = th(gamma) * d + th(eta) * (1 - d), th(beta) * d + th(eta) * (1 - d)
  np.testing.assert_allclose(gating(h, gamma, beta, eta, delta), g2 * h + b2, rtol=1e-6)
  # Element 0: d = 0.5, so gamma' = (tanh 0.2 + tanh -0.6) / 2 by hand.
  assert math.isclose(float(g2[0]), (math.tanh(0.2) + math.tanh(-0.6)) / 2, rel_tol=1e-6)


def test_gating_variant_has_its_gates_and_scores():
  film_model, film_params = _model("film")
  gate_model, gate_params = _model("gating")
  n_mods = lambda p: len([k for k in p["params"] if k.startswith("modulators_")])  # noqa: E731
  assert (n_mods(film_params), n_mods(gate_params)) == (2, 4)  # (gamma, beta) vs (gamma, beta, eta, delta) x 1 layer
  task = make_task(2)
  chex.assert_tree_all_finite(gate_model.apply(gate_params, task["query"], task["support"]))
  with pytest.raises(ValueError, match="modulation"):
    get_model("tanp", SPEC, modulation="film2")


def test_gaussian_kl_matches_closed_form():
  mu_q, s_q, mu_p, s_p = np.array([0.3, -1.0]), np.array([0.5, 1.2]), np.array([0.0, 0.5]), np.array([1.0, 0.8])
  want = np.sum(np.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5)
  np.testing.assert_allclose(gaussian_kl(mu_q, s_q, mu_p, s_p), want, rtol=1e-6)
  assert float(gaussian_kl(mu_q, s_q, mu_q, s_q)) == pytest.approx(0.0, abs=1e-7)


def test_learner_refuses_another_model():
  with pytest.raises(ValueError, match="needs model 'tanp'"):
    get_learner("tanp", tiny_model())


def test_batch_loss_gradient_is_added_to_the_mean_task_gradient():
  model, params = _model()
  learner = get_learner("tanp", model, cluster_weight=0.7)
  batch = {**tiny_batch(4), "task_mask": np.array([True, True, True, False])}
  key = jax.random.key(5)
  grads, metrics, outputs = jax.jit(learner_state.batch_grad_fn(learner))(params, None, batch, key)
  # Independently: the plain mean of the per-task gradients, plus the gradient of the clustering term of the
  # supports' assignments, written out here without the trainer.
  keys = jax.random.split(key, 4)
  task = {"support": batch["support"], "query": batch["query"]}

  def term(p):
    log_q = jax.vmap(model.aux["assign"], in_axes=(None, 0))(p, batch["support"])
    return 0.7 * cluster_loss(log_q, batch["task_mask"])

  def reference(p):  # jitted as one program: op-by-op it cost 9.4 CPU-s of compiles, jitted 1.7
    mean_grads, _ = chunking.mean_task_grads(learner.task_grad, p, task, keys, batch["task_mask"])
    term_grads = jax.grad(term)(p)
    return jax.tree.map(jnp.add, mean_grads, term_grads), term(p), term_grads

  want, want_loss, term_grads = jax.jit(reference)(params)
  chex.assert_trees_all_close(grads, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["batch_loss"], want_loss, rtol=1e-5)
  assert float(jnp.abs(term_grads["params"]["clusters"]).max()) > 0  # the term reaches the centres
  assert outputs["log_q"].shape == (4, SMALL["tanp"]["n_clusters"])


def test_meta_step_with_batch_loss_only_adds_its_gradient():
  """With sgd(1), the trainer's step moves the params by exactly the summed gradient; no state appears."""
  model, _ = _model()
  learner = get_learner("tanp", model)
  tx = optax.sgd(1.0)
  example = {"support": make_task(0)["support"], "query": make_task(0)["query"]}
  state = step_lib.make_init(learner, tx, example)[1](jax.random.split(jax.random.key(0), 2))
  assert set(state) == {"meta_params", "opt_state", "step"}
  batch = {**tiny_batch(3), "task_mask": np.array([True, True, False]), "task_id": np.arange(3)}
  batch = step_lib.stack_seed_batches([batch, batch])
  keys = jax.random.split(jax.random.key(1), 2)
  before = jax.tree.map(np.asarray, state["meta_params"])
  new, metrics = jax.jit(step_lib.meta_step_fn(learner, tx))(state, batch, keys)
  grad_fn = jax.jit(learner_state.batch_grad_fn(learner))
  for n in range(2):
    one = step_lib.unstack(before, n)
    g, _, _ = grad_fn(one, None, step_lib.unstack(batch, n), jax.random.fold_in(keys[n], 0))
    want = optax.apply_updates(one, jax.tree.map(jnp.negative, g))
    chex.assert_trees_all_close(step_lib.unstack(new["meta_params"], n), want, rtol=1e-5, atol=1e-6)
  assert metrics["cluster_kl"].shape == (2,) and np.all(np.isfinite(metrics["batch_loss"]))


def test_short_real_run_stays_finite(tmp_path, ml100k):
  """TaNP on ML-100K (melu protocol, smoke size) trains finitely and is not the constant scorer."""
  from test_configs import _module  # noqa: PLC0415

  from transfer_meta.train import train_and_evaluate  # noqa: PLC0415

  config = _module("melu_ml100k").get_config("smoke")
  with config.unlocked():
    config.learner_name, config.model_name = "tanp", "tanp"
    config.learner, config.model = type(config.learner)(), type(config.model)(dict(emb_dim=8, dec_hidden=(16,)))
    config.compare_learners, config.compare_kwargs = (), type(config.compare_kwargs)()
    config.seeds, config.num_steps, config.eval_every, config.checkpoint_every, config.log_every = 1, 12, 6, 12, 1
    config.baselines, config.eval_ranking, config.progress = ("constant", "item_user_offset"), ("query",), False
    config.plots = False  # no check reads the PNGs (tests/test_run_outputs.py checks them)
  results = train_and_evaluate(config, str(tmp_path), data=ml100k)
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  losses = [x["train/outer_loss"] for x in lines if "train/outer_loss" in x]
  assert len(losses) == 12 and np.all(np.isfinite(losses))
  assert all(np.isfinite(x["train/cluster_kl"]) for x in lines if "train/cluster_kl" in x)
  mae = results["metrics"]["new_user"]["mae"]["mean"]
  constant = results["baselines"]["constant"]["new_user"]["mae"]["mean"]
  assert np.isfinite(mae) and mae != constant
