"""Domain-adaptation terms against independent computations: gradient reversal's two passes, the DANN schedule,
MMD (biased and unbiased, multi-bandwidth) and CORAL against plain numpy loops, and padding that changes
neither a value nor a gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfer_meta.domain_adapt import base_bandwidth, coral, dann_lambda, grad_reverse, masked_covariance, mmd2

N, M, D = 7, 5, 3


def _samples(seed: int = 0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(N, D)).astype(np.float32), (rng.normal(size=(M, D)) * 1.5 + 0.7).astype(np.float32)


def _np_mmd2(xs, xt, sigmas, unbiased):
  """Loops over pairs in float64."""

  def k(a, b):
    return sum(np.exp(-np.sum((a - b) ** 2) / (2 * s * s)) for s in sigmas)

  xs, xt = xs.astype(np.float64), xt.astype(np.float64)
  n, m = len(xs), len(xt)

  def within(x):
    total = sum(k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if not (unbiased and i == j))
    return total / (len(x) * (len(x) - 1) if unbiased else len(x) ** 2)

  cross = sum(k(a, b) for a in xs for b in xt) / (n * m)
  return within(xs) + within(xt) - 2 * cross


def test_grad_reverse_is_identity_forward_and_minus_lambda_g_backward():
  x = jnp.array([[1.0, -2.0], [0.5, 3.0]])
  lam = jnp.float32(0.3)
  np.testing.assert_array_equal(grad_reverse(x, lam), x)
  g = jnp.array([[2.0, 1.0], [-1.0, 4.0]])  # the incoming cotangent
  out, vjp = jax.vjp(grad_reverse, x, lam)
  dx, dlam = vjp(g)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_allclose(dx, -0.3 * g, rtol=1e-6)
  assert float(dlam) == 0.0
  # Through a loss: d/dx sum(w * grad_reverse(x)) = -lam * w, while the unreversed gradient is +w.
  w = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  got = jax.grad(lambda x: jnp.sum(w * grad_reverse(x, lam)))(x)
  np.testing.assert_allclose(got, -0.3 * w, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(lambda x, l: jnp.sum(grad_reverse(x, l) ** 2)))(x, lam), -0.3 * 2 * x)


def test_dann_lambda_is_the_papers_schedule():
  p = np.array([0.0, 0.1, 0.5, 1.0, 2.0, -1.0], np.float32)
  want = 2.0 / (1.0 + np.exp(-10.0 * np.clip(p, 0, 1))) - 1.0
  np.testing.assert_allclose(dann_lambda(p), want, rtol=1e-6, atol=1e-7)
  assert float(dann_lambda(0.0)) == 0.0 and float(dann_lambda(1.0)) == pytest.approx(0.9999092, abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd2_equals_a_numpy_double_loop(unbiased):
  xs, xt = _samples()
  sigmas = (0.5, 1.0, 2.0)
  got = mmd2(jnp.asarray(xs), jnp.asarray(xt), sigmas=sigmas, unbiased=unbiased)
  np.testing.assert_allclose(float(got), _np_mmd2(xs, xt, sigmas, unbiased), rtol=1e-4, atol=1e-6)


def test_mmd2_default_bandwidths_are_factors_of_the_pooled_mean_distance():
  xs, xt = _samples(1)
  pooled = np.concatenate([xs, xt]).astype(np.float64)
  d2 = [np.sum((a - b) ** 2) for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j]
  base = np.sqrt(np.mean(d2) / 2)
  np.testing.assert_allclose(float(base_bandwidth(xs, xt)), base, rtol=1e-5)
  want = _np_mmd2(xs, xt, [f * base for f in (0.25, 0.5, 1.0, 2.0, 4.0)], unbiased=False)
  np.testing.assert_allclose(float(mmd2(xs, xt)), want, rtol=1e-4)
  assert float(mmd2(xs, xs)) == pytest.approx(0.0, abs=1e-5)  # identical samples: zero (biased estimator)
  assert float(mmd2(xs, xt)) > 0.05  # shifted and scaled target: clearly positive


def test_coral_equals_numpy_covariances():
  xs, xt = _samples(2)
  cs, ct = np.cov(xs.astype(np.float64), rowvar=False), np.cov(xt.astype(np.float64), rowvar=False)  # (n - 1)
  want = np.sum((cs - ct) ** 2) / (4 * D * D)
  np.testing.assert_allclose(float(coral(xs, xt)), want, rtol=1e-5)
  np.testing.assert_allclose(masked_covariance(jnp.asarray(xs)), cs, rtol=1e-5, atol=1e-6)


def test_padding_changes_neither_values_nor_gradients():
  xs, xt = _samples(3)
  rng = np.random.default_rng(9)
  pad_s = np.concatenate([xs, rng.normal(size=(3, D)).astype(np.float32) * 50])  # garbage rows
  pad_t = np.concatenate([xt, rng.normal(size=(2, D)).astype(np.float32) * 50])
  ms = np.r_[np.ones(N, bool), np.zeros(3, bool)]
  mt = np.r_[np.ones(M, bool), np.zeros(2, bool)]
  terms = {
    "mmd_biased": lambda a, b, ma, mb: mmd2(a, b, ma, mb),
    "mmd_unbiased": lambda a, b, ma, mb: mmd2(a, b, ma, mb, unbiased=True),
    "coral": coral,
  }
  for name, f in terms.items():

    def both(xs, xt, pad_s, pad_t, f=f):  # one jitted program per term (op by op, each primitive compiles alone)
      plain = jax.value_and_grad(lambda a, b: f(a, b, None, None), argnums=(0, 1))(xs, xt)
      return plain, jax.value_and_grad(lambda a, b: f(a, b, ms, mt), argnums=(0, 1))(pad_s, pad_t)

    (plain, (gs, gt)), (padded, (ps, pt)) = jax.jit(both)(xs, xt, pad_s, pad_t)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(ps[:N], gs, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(pt[:M], gt, rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.any(ps[N:]) and not np.any(pt[M:]), name  # padding gets no gradient


def test_shape_mismatch_fails():
  xs, xt = _samples()
  with pytest.raises(AssertionError):
    mmd2(xs, xt[:, :2])
  with pytest.raises(AssertionError):
    coral(xs, xt, mask_s=np.ones(N + 1, bool))
