"""Domain-adaptation terms: gradient reversal (DANN), MMD with multi-bandwidth Gaussian kernels, CORAL.

    h = grad_reverse(z, lam)            forward: h = z;   backward: dL/dz = -lam * dL/dh          (jax.custom_vjp)
    lam = dann_lambda(p)                2 / (1 + exp(-10 p)) - 1, p = training progress in [0, 1]  (Ganin et al.)
    mmd2(xs, xt, sigmas, ...)           squared MMD of two samples, kernel sum_k exp(-||a - b||^2 / (2 sigma_k^2))
    coral(xs, xt, ...)                  ||C_s - C_t||_F^2 / (4 D^2), C the (n - 1)-normalised covariances

Every term takes optional masks (bool [N]) so padded rows of a fixed-shape batch never count: a masked-out row
has no effect on the value or on any gradient. All are pure functions of arrays; the strategies in
`transfer_meta/strategies/align.py` apply them to encoder outputs of source vs target batches.

References: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML'15 (gradient reversal,
the lambda schedule); Gretton et al., "A Kernel Two-Sample Test", JMLR'12 (biased / unbiased MMD estimators);
Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML'15 (a sum of Gaussian kernels
whose bandwidths are multiples of a data-driven base); Sun & Saenko, "Deep CORAL", ECCV-W'16.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import chex
import jax
import jax.numpy as jnp

DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # DAN's kernel_mul=2, kernel_num=5, centred on the base bandwidth


@jax.custom_vjp
def grad_reverse(x: jax.Array, lam: jax.Array) -> jax.Array:
  """Identity forward; the backward pass multiplies the incoming gradient by -lam (lam gets no gradient).

  Args:
    x: any float array.
    lam: scalar reversal strength (>= 0 in DANN; a traced value, so a schedule may vary it per step).
  Returns:
    x unchanged.
  """
  return x


def _reverse_fwd(x, lam):
  return x, lam


def _reverse_bwd(lam, g):
  return (-lam * g).astype(g.dtype), jnp.zeros_like(lam)


grad_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def dann_lambda(progress: jax.Array, gamma: float = 10.0) -> jax.Array:
  """The DANN schedule lam(p) = 2 / (1 + exp(-gamma p)) - 1 (gamma = 10 in the paper): 0 at p = 0, -> 1.

  Args:
    progress: training progress p, clipped to [0, 1] (step / total steps).
    gamma: the schedule's steepness.
  """
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  return 2.0 / (1.0 + jnp.exp(-gamma * p)) - 1.0


def _mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """f32 [N] weights: mask as 0/1, or all ones."""
  chex.assert_rank(x, 2)
  if mask is None:
    return jnp.ones(x.shape[0], jnp.float32)
  chex.assert_shape(mask, (x.shape[0],))
  return mask.astype(jnp.float32)


def sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """f32 [N, M] squared Euclidean distances between the rows of a [N, D] and b [M, D] (clipped at 0)."""
  chex.assert_rank([a, b], 2)
  d = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
  return jnp.maximum(d, 0.0)


def base_bandwidth(
  xs: jax.Array, xt: jax.Array, mask_s: jax.Array | None = None, mask_t: jax.Array | None = None
) -> jax.Array:
  """sigma_0 = sqrt(mean squared distance / 2) over the distinct real pairs of the pooled sample, under
  stop_gradient (DAN's data-driven base, so that exp(-d^2 / (2 sigma_0^2)) = exp(-d^2 / mean d^2)).

  Args:
    xs f32 [N, D], xt f32 [M, D]: the two samples; mask_s [N], mask_t [M]: real rows (None: all real).
  Returns:
    f32 scalar > 0.
  """
  x = jnp.concatenate([xs, xt], 0)
  w = jnp.concatenate([_mask(xs, mask_s), _mask(xt, mask_t)])
  pair = w[:, None] * w[None, :] * (1.0 - jnp.eye(x.shape[0]))
  mean = jnp.sum(sq_dists(x, x) * pair) / jnp.maximum(jnp.sum(pair), 1.0)
  return jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(mean, 1e-12) / 2.0))


def gaussian_kernel(a: jax.Array, b: jax.Array, sigmas: jax.Array) -> jax.Array:
  """f32 [N, M]: sum over bandwidths sigma_k of exp(-||a_i - b_j||^2 / (2 sigma_k^2)). sigmas f32 [K]."""
  sigmas = jnp.atleast_1d(jnp.asarray(sigmas, jnp.float32))
  d = sq_dists(a, b)
  return jnp.sum(jnp.exp(-d[None] / (2.0 * jnp.square(sigmas))[:, None, None]), 0)


def mmd2(
  xs: jax.Array,
  xt: jax.Array,
  mask_s: jax.Array | None = None,
  mask_t: jax.Array | None = None,
  sigmas: jax.Array | Sequence[float] | None = None,
  factors: Sequence[float] = DEFAULT_FACTORS,
  unbiased: bool = False,
) -> jax.Array:
  """Squared maximum mean discrepancy between two masked samples, multi-bandwidth Gaussian kernel.

  Biased (V-statistic, `unbiased=False`): mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j),
  diagonal included: always >= 0, biased upwards by O(1/n). Unbiased (U-statistic): the two within-sample means
  exclude i = j (denominators n(n - 1), m(m - 1)); it can be slightly negative. Means run over real rows only.

  Args:
    xs: f32 [N, D] source representations; xt: f32 [M, D] target representations.
    mask_s, mask_t: bool [N], [M] real rows (None: all real).
    sigmas: f32 [K] bandwidths; None: `factors` times `base_bandwidth` of the pooled sample.
    factors: multiples of the base bandwidth when `sigmas` is None.
    unbiased: the U-statistic instead of the V-statistic (needs >= 2 real rows per sample to be defined).
  Returns:
    f32 scalar.
  """
  chex.assert_rank([xs, xt], 2)
  chex.assert_equal(xs.shape[1], xt.shape[1])
  ws, wt = _mask(xs, mask_s), _mask(xt, mask_t)
  if sigmas is None:
    sigmas = base_bandwidth(xs, xt, mask_s, mask_t) * jnp.asarray(factors, jnp.float32)
  kernel = partial(gaussian_kernel, sigmas=sigmas)

  def within(x, w):
    pair = w[:, None] * w[None, :]
    n = jnp.sum(w)
    if unbiased:
      pair = pair * (1.0 - jnp.eye(x.shape[0]))
      return jnp.sum(kernel(x, x) * pair) / jnp.maximum(n * (n - 1.0), 1.0)
    return jnp.sum(kernel(x, x) * pair) / jnp.maximum(n * n, 1.0)

  cross = jnp.sum(kernel(xs, xt) * ws[:, None] * wt[None, :]) / jnp.maximum(jnp.sum(ws) * jnp.sum(wt), 1.0)
  return within(xs, ws) + within(xt, wt) - 2.0 * cross


def masked_covariance(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """f32 [D, D] covariance of the real rows of x [N, D], normalised by (n - 1) (n: real rows)."""
  w = _mask(x, mask)
  n = jnp.sum(w)
  mean = jnp.sum(x * w[:, None], 0) / jnp.maximum(n, 1.0)
  centred = (x - mean) * w[:, None]
  return centred.T @ centred / jnp.maximum(n - 1.0, 1.0)


def coral(xs: jax.Array, xt: jax.Array, mask_s: jax.Array | None = None, mask_t: jax.Array | None = None) -> jax.Array:
  """Deep CORAL: ||C_s - C_t||_F^2 / (4 D^2) between the masked covariances of xs [N, D] and xt [M, D]."""
  chex.assert_rank([xs, xt], 2)
  chex.assert_equal(xs.shape[1], xt.shape[1])
  d = xs.shape[1]
  diff = masked_covariance(xs, mask_s) - masked_covariance(xt, mask_t)
  return jnp.sum(jnp.square(diff)) / (4.0 * d * d)


__all__ = [
  "DEFAULT_FACTORS",
  "base_bandwidth",
  "coral",
  "dann_lambda",
  "gaussian_kernel",
  "grad_reverse",
  "masked_covariance",
  "mmd2",
  "sq_dists",
]
