"""The maths of the learners, in float64, against independent computations on a tiny problem.

"By hand" below means plain Python: an unrolled loop, a hand-written loss, and a mask applied to a
full gradient by parameter name — none of the learners' code (partition, lax.scan, losses.py).
"""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_learners import FAST_COMPILE, LEARNER_MODELS, S, make_task, tiny_model

from transfer_meta.learners import LEARNERS, get_learner
from transfer_meta.learners.inner import inner_sgd

LR = 0.05
ALL, DECISION, HEAD = ("body", "head", "context", "item_emb"), ("body", "head"), ("head",)
REGEX = {ALL: ".*", DECISION: "body|head", HEAD: "head"}
MODEL = tiny_model()
# Every program here is compiled with test_learners' fast options (its elemental fusion emitters compile faster and
# compute the same maths; the float64 tolerances below are orders of magnitude above any rounding difference).
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def params0(seed: int = 0):
  return MODEL.init(jax.random.key(seed), None, None)


def task(seed: int = 1, loss: str = "mse") -> dict:
  t = make_task(seed, n_support=S - 1, n_query=3)  # one padded support item, one padded query item
  if loss == "bce":  # clicks: rating >= 4
    for x in t.values():
      x["target"] = (x["target"] >= 4).astype(np.float32) * x["mask"]
  return t


# ---------------------------------------------------------------------------------------------
# Independent reference computations.


def hand_loss(params, x, context, loss="mse"):
  s = MODEL.apply(params, x, context)
  t, m = x["target"], x["mask"].astype(s.dtype)
  per = (s - t) ** 2 if loss == "mse" else jnp.log1p(jnp.exp(s)) - s * t
  return jnp.sum(m * per) / jnp.maximum(jnp.sum(m), 1.0)


def hand_sgd(params, loss_fn, lr, steps, adapted, stop=False):
  """Unrolled SGD on the full gradient, applied only to the top-level modules named in `adapted`.
  `lr` is a float or a dict {module: {name: rate}} (Meta-SGD). Callers jit it: eager op-by-op
  dispatch of the unrolled loop costs more CPU than compiling it."""
  p = params
  for _ in range(steps):
    g = jax.grad(loss_fn)(p)["params"]
    if stop:
      g = jax.lax.stop_gradient(g)
    new = {}
    for mod, leaves in p["params"].items():
      rate = lambda name, mod=mod: lr[mod][name] if isinstance(lr, dict) else lr
      new[mod] = {n: v - rate(n) * g[mod][n] if mod in adapted else v for n, v in leaves.items()}
    p = {"params": new}
  return p


def phi_by_hand(params, loss_fn, steps, adapted):
  return jit(lambda p: hand_sgd(p, loss_fn, LR, steps, adapted))(params)


def hand_maml_outer(params, t, steps, adapted, stop=False, loss="mse", lr=LR):
  s, q = t["support"], t["query"]
  phi = hand_sgd(params, lambda p: hand_loss(p, s, s, loss), lr, steps, adapted, stop)
  return hand_loss(phi, q, s, loss)


def hand_joint(params, t):
  s, q = t["support"], t["query"]
  n_s, n_q = s["mask"].sum(), q["mask"].sum()
  return (n_s * hand_loss(params, s, s) + n_q * hand_loss(params, q, s)) / (n_s + n_q)


def jacfwd_and_value(fn, params):
  """(forward-mode gradient, value) of a scalar reference `fn` at `params`, as ONE jitted program: the unrolled
  reference run eagerly would dispatch every op of its loop one by one."""
  return jit(lambda p: (jax.jacfwd(fn)(p), fn(p)))(params)


@functools.lru_cache
def jitted_learner(name, **kw):
  """(learner, jitted task_grad), cached so tests sharing a configuration compile it once."""
  learner = get_learner(name, MODEL, **kw)
  return learner, jit(learner.task_grad)


def task_grad(name, params, t, **kw):
  learner, grad_fn = jitted_learner(name, **kw)
  meta = learner.init(jax.random.key(0), params)
  state = (learner.init_state(jax.random.key(0), meta),) if learner.init_state else ()  # MAMO's memories
  return grad_fn(meta, t, jax.random.key(0), *state)


# ---------------------------------------------------------------------------------------------
# MAML.


@pytest.mark.parametrize("adapted,loss", [(ALL, "mse"), (DECISION, "bce"), (HEAD, "mse")])
def test_maml_meta_gradient_equals_forward_mode_of_hand_unrolled_loop(adapted, loss):
  params, t = params0(), task(loss=loss)
  grads, metrics = task_grad("maml", params, t, inner_steps=2, inner_lr=LR, adapt_regex=REGEX[adapted], loss=loss)
  want, want_loss = jacfwd_and_value(lambda p: hand_maml_outer(p, t, 2, adapted, loss=loss), params)
  chex.assert_trees_all_close(grads, want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(metrics["outer_loss"], want_loss, rtol=1e-12)


def test_maml_meta_gradient_equals_central_finite_differences():
  params, t = params0(), task()
  learner, grad_fn = jitted_learner("maml", inner_steps=2, inner_lr=LR)
  grads, _ = grad_fn(params, t, jax.random.key(0))
  flat, unravel = ravel_pytree(params)
  # The learner's own task_grad inside: a jit with compile options cannot be nested in another jit.
  outer = jit(lambda v: learner.task_grad(unravel(v), t, jax.random.key(0))[1]["outer_loss"])
  eps = 1e-6
  fd = np.array([(outer(flat.at[i].add(eps)) - outer(flat.at[i].add(-eps))) / (2 * eps) for i in range(flat.size)])
  np.testing.assert_allclose(ravel_pytree(grads)[0], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_is_stop_gradient_and_differs_from_second_order(steps):
  params, t = params0(), task()
  fo, _ = task_grad("fomaml", params, t, inner_steps=steps, inner_lr=LR)
  want = jit(jax.jacfwd(lambda p: hand_maml_outer(p, t, steps, ALL, stop=True)))(params)
  chex.assert_trees_all_close(fo, want, rtol=1e-9, atol=1e-12)
  so, _ = task_grad("maml", params, t, inner_steps=steps, inner_lr=LR)
  gap = np.max(np.abs(ravel_pytree(fo)[0] - ravel_pytree(so)[0]))
  assert gap > 1e-4, gap  # the Hessian term is real on this problem
  # First order: the meta-gradient is the query gradient at the adapted parameters.
  phi = phi_by_hand(params, lambda p: hand_loss(p, t["support"], t["support"]), steps, ALL)
  chex.assert_trees_all_close(fo, jax.grad(hand_loss)(phi, t["query"], t["support"]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "melu", "meta_sgd"])
def test_zero_inner_steps_is_the_plain_query_gradient(name):
  params, t = params0(), task()
  grads, metrics = task_grad(name, params, t, inner_steps=0)
  if name == "meta_sgd":
    np.testing.assert_array_equal(ravel_pytree(grads["inner_lr"])[0], 0.0)
    grads = grads["params"]
  want = jax.grad(hand_loss)(params, t["query"], t["support"])
  chex.assert_trees_all_close(grads, want, rtol=1e-10, atol=1e-13)
  support_loss = hand_loss(params, t["support"], t["support"])
  np.testing.assert_allclose([metrics["inner_loss_before"], metrics["inner_loss_after"]], support_loss, rtol=1e-12)


@pytest.mark.parametrize("name", ["maml", "meta_sgd"])
def test_remat_changes_nothing(name):
  params, t = params0(), task()
  plain = task_grad(name, params, t, inner_steps=3, remat=False)
  remat = task_grad(name, params, t, inner_steps=3, remat=True)
  chex.assert_trees_all_close(plain, remat, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_inner_sgd_vmapped_over_tasks_equals_a_loop_of_hand_sgd(steps):
  """`inner_sgd` runs its first step outside the scan (under `vmap` that step's parameters are the shared
  meta-initialisation); vmapped over tasks, its adapted parameters, metrics and second-order meta-gradients
  equal a Python loop over the tasks of the hand-unrolled SGD."""
  params = params0()
  tasks = [task(seed) for seed in (1, 2, 3)]
  batch = jax.tree.map(lambda *xs: np.stack(xs), *tasks)
  mask = {"params": {mod: {n: mod in DECISION for n in leaves} for mod, leaves in params["params"].items()}}

  def ours(p, t):
    s = t["support"]
    phi, metrics = inner_sgd(lambda q: hand_loss(q, s, s), p, mask, LR, steps)
    return hand_loss(phi, t["query"], s), (phi, metrics)

  def by_hand(p, t):
    s = t["support"]
    phi = hand_sgd(p, lambda q: hand_loss(q, s, s), LR, steps, DECISION)
    before, after = hand_loss(p, s, s), hand_loss(phi, s, s)
    return hand_loss(phi, t["query"], s), (phi, {"inner_loss_before": before, "inner_loss_after": after})

  got = jit(jax.vmap(jax.value_and_grad(ours, has_aux=True), in_axes=(None, 0)))(params, batch)
  loop = jit(lambda p: [jax.value_and_grad(by_hand, has_aux=True)(p, t) for t in tasks])(params)
  chex.assert_trees_all_close(got, jax.tree.map(lambda *xs: np.stack(xs), *loop), rtol=1e-10, atol=1e-13)


def test_inner_loss_metrics_are_support_losses_before_and_after():
  params, t = params0(), task()
  _, metrics = task_grad("melu", params, t, inner_steps=3, inner_lr=LR)
  phi = phi_by_hand(params, lambda p: hand_loss(p, t["support"], t["support"]), 3, DECISION)
  np.testing.assert_allclose(metrics["inner_loss_before"], hand_loss(params, t["support"], t["support"]), rtol=1e-12)
  np.testing.assert_allclose(metrics["inner_loss_after"], hand_loss(phi, t["support"], t["support"]), rtol=1e-12)
  assert metrics["inner_loss_after"] < metrics["inner_loss_before"]


@pytest.mark.parametrize(
  "name,adapted",
  [("anil", HEAD), ("melu", DECISION), ("head_only", HEAD), ("finetune", ALL), ("reptile", ALL), ("meta_sgd", ALL)],
)
def test_adapt_steps_exactly_the_adapt_set(name, adapted):
  params, t = params0(), task()
  learner = get_learner(name, MODEL, inner_steps=2, inner_lr=LR)
  meta = learner.init(jax.random.key(0), params)
  phi = jit(learner.adapt)(meta, t["support"], jax.random.key(0))
  for mod, leaves in params["params"].items():
    for n, v in leaves.items():
      if mod in adapted:
        assert np.max(np.abs(phi["params"][mod][n] - v)) > 0, (mod, n)
      else:
        np.testing.assert_array_equal(phi["params"][mod][n], v, err_msg=f"{mod}/{n} must not move")
  want = phi_by_hand(params, lambda p: hand_loss(p, t["support"], t["support"]), 2, adapted)
  chex.assert_trees_all_close(phi, want, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Meta-SGD.


def test_meta_sgd_learns_per_parameter_rates():
  params, t = params0(), task()
  learner = get_learner("meta_sgd", MODEL, inner_steps=2, inner_lr=LR, adapt_regex="body|head")
  meta = learner.init(jax.random.key(0), params)
  assert meta["inner_lr"]["params"]["item_emb"]["embedding"] is None  # rates only where adapted
  np.testing.assert_array_equal(meta["inner_lr"]["params"]["body"]["kernel"], np.full((3, 4), LR))
  rng = np.random.default_rng(0)  # distinct rates per entry, so a rate applied to the wrong entry shows
  meta["inner_lr"] = jax.tree.map(lambda r: r * rng.uniform(0.5, 1.5, r.shape), meta["inner_lr"])
  grads, _ = jit(learner.task_grad)(meta, t, jax.random.key(0))
  for leaf in jax.tree.leaves(grads["inner_lr"]):
    assert np.all(leaf != 0), "every adapted entry's rate gets a gradient"

  def hand(params, rates):
    return hand_maml_outer(params, t, 2, DECISION, lr=rates["params"])

  want_p, want_lr = jit(jax.jacfwd(hand, argnums=(0, 1)))(params, meta["inner_lr"])
  chex.assert_trees_all_close(grads["params"], want_p, rtol=1e-9, atol=1e-12)
  chex.assert_trees_all_close(grads["inner_lr"], want_lr, rtol=1e-9, atol=1e-12)


def test_meta_sgd_with_uniform_rates_is_maml():
  params, t = params0(), task()
  g_sgd, m_sgd = task_grad("meta_sgd", params, t, inner_steps=2, inner_lr=LR)
  g_maml, m_maml = task_grad("maml", params, t, inner_steps=2, inner_lr=LR)
  chex.assert_trees_all_close((g_sgd["params"], m_sgd), (g_maml, m_maml), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Reptile and the transfer baselines.


@pytest.mark.parametrize("use_query", [True, False])
def test_reptile_pseudo_gradient_is_meta_minus_phi(use_query):
  params, t = params0(), task()
  s, q = t["support"], t["query"]
  grads, metrics = task_grad("reptile", params, t, inner_steps=4, inner_lr=LR, use_query=use_query)
  data_loss = (lambda p: hand_joint(p, t)) if use_query else (lambda p: hand_loss(p, s, s))
  phi = phi_by_hand(params, data_loss, 4, ALL)
  chex.assert_trees_all_close(grads, jax.tree.map(lambda a, b: a - b, params, phi), rtol=1e-10, atol=1e-13)
  phi_support = phi_by_hand(params, lambda p: hand_loss(p, s, s), 4, ALL)
  np.testing.assert_allclose(metrics["outer_loss"], hand_loss(phi_support, q, s), rtol=1e-12)


def test_reptile_with_sgd_epsilon_interpolates_toward_phi():
  import optax

  params, t = params0(), task()
  grads, _ = task_grad("reptile", params, t, inner_steps=3, inner_lr=LR)
  opt = optax.sgd(0.25)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  phi = phi_by_hand(params, lambda p: hand_joint(p, t), 3, ALL)
  chex.assert_trees_all_close(new, jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, params, phi), rtol=1e-10)


@pytest.mark.parametrize("name,adapted", [("none", ()), ("finetune", ALL), ("head_only", HEAD)])
def test_transfer_pretrains_on_support_and_query(name, adapted):
  params, t = params0(), task()
  s, q = t["support"], t["query"]
  grads, metrics = task_grad(name, params, t, **({} if name == "none" else {"inner_steps": 2, "inner_lr": LR}))
  chex.assert_trees_all_close(grads, jax.grad(hand_joint)(params, t), rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(metrics["pretrain_loss"], hand_joint(params, t), rtol=1e-12)
  # hand_joint is the mean over the union of real interactions: check that against a direct mean.
  per_s = (MODEL.apply(params, s, s) - s["target"]) ** 2
  per_q = (MODEL.apply(params, q, s) - q["target"]) ** 2
  union = np.concatenate([per_s[s["mask"]], per_q[q["mask"]]])
  np.testing.assert_allclose(hand_joint(params, t), union.mean(), rtol=1e-12)
  phi = phi_by_hand(params, lambda p: hand_loss(p, s, s), 2, adapted)
  np.testing.assert_allclose(metrics["outer_loss"], hand_loss(phi, q, s), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Padding.


def _real_only(t):
  """The same task with its padding cut off (shapes [n_real])."""
  return {k: jax.tree.map(lambda a, m=x["mask"]: a[m], x) for k, x in t.items()}


def _shuffled(t, seed):
  """The same task with its items (real and padding) permuted, one permutation per split."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, x in t.items():
    perm = rng.permutation(x["mask"].shape[0])
    out[k] = jax.tree.map(lambda a, perm=perm: a[perm], x)
  return out


# Learners built for one backbone (TaNP) run on it, not on the tiny model: tests/test_tanp.py checks its padding.
@pytest.mark.parametrize("name", sorted(set(LEARNERS) - set(LEARNER_MODELS)))
def test_padding_changes_no_loss_and_no_gradient(name):
  params, t = params0(), task()
  factory = inspect.signature(LEARNERS[name]).parameters  # ridge_head has no inner loop, none no keywords
  kw = {k: v for k, v in {"inner_steps": 2, "inner_lr": LR}.items() if k in factory}
  padded = task_grad(name, params, _shuffled(t, 3), **kw)  # garbage padding, interleaved with real items
  exact = task_grad(name, params, _real_only(t), **kw)
  chex.assert_trees_all_close(padded, exact, rtol=1e-10, atol=1e-13)


def hand_clipped_outer(params, t, steps, adapted, clip):
  """MAML's outer loss with each inner gradient (over the adapted modules) scaled to global norm <= clip."""
  s, q = t["support"], t["query"]
  p = params
  for _ in range(steps):
    g = jax.grad(lambda p: hand_loss(p, s, s))(p)["params"]
    norm = jnp.sqrt(sum(jnp.sum(g[m][n] ** 2) for m in adapted for n in g[m]))
    scale = jnp.minimum(1.0, clip / norm)
    p = {
      "params": {
        m: {n: v - LR * scale * g[m][n] if m in adapted else v for n, v in lv.items()} for m, lv in p["params"].items()
      }
    }
  return hand_loss(p, q, s)


@pytest.mark.parametrize("adapted", [ALL, DECISION])
def test_inner_clip_is_clipped_sgd_and_its_meta_gradient(adapted):
  params, t = params0(), task()
  g0 = jax.grad(lambda p: hand_loss(p, t["support"], t["support"]))(params)["params"]
  norm0 = float(jnp.sqrt(sum(jnp.sum(g0[m][n] ** 2) for m in adapted for n in g0[m])))
  clip = norm0 / 3  # active: the first inner gradient is scaled by 1/3
  grads, metrics = task_grad("maml", params, t, inner_steps=2, inner_lr=LR, adapt_regex=REGEX[adapted], inner_clip=clip)
  want, want_loss = jacfwd_and_value(lambda p: hand_clipped_outer(p, t, 2, adapted, clip), params)
  chex.assert_trees_all_close(grads, want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(metrics["outer_loss"], want_loss, rtol=1e-12)
  unclipped, _ = task_grad("maml", params, t, inner_steps=2, inner_lr=LR, adapt_regex=REGEX[adapted])
  assert not np.allclose(ravel_pytree(grads)[0], ravel_pytree(unclipped)[0])  # the clip changed the update


def test_inner_clip_is_smooth_at_zero_and_validated():
  from transfer_meta.learners import inner

  zero = {"w": jnp.zeros(3)}
  d = jax.jacfwd(lambda v: inner.clip_inner_grads({"w": v}, 1.0)["w"])(zero["w"])
  np.testing.assert_array_equal(d, np.eye(3))  # below the clip: identity, finite derivative at 0
  big = inner.clip_inner_grads({"w": jnp.array([3.0, 4.0])}, 1.0)["w"]
  np.testing.assert_allclose(big, [0.6, 0.8])
  with pytest.raises(ValueError, match="inner_clip=-1"):
    get_learner("maml", MODEL, inner_clip=-1.0)
