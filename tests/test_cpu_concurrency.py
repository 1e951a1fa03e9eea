"""experiments/cpu_concurrency.py: its variants compute the same rows as the whole batch, so their timings compare."""

import numpy as np
import pytest

from experiments import cpu_concurrency


def test_every_variant_computes_the_whole_batch_rows():
  x, w = cpu_concurrency.inputs(tasks=4, support=3, width=5)
  variants = cpu_concurrency.single_device_variants(x, w, depth=2)
  assert list(variants) == ["whole", "whole_summed", "half", "two_branches", "two_async_calls", "two_threads"]
  whole = cpu_concurrency.rows(variants["whole"]())
  xs, ws = np.asarray(x, np.float64), np.asarray(w, np.float64)
  for _ in range(2):  # the chain by hand, task by task
    xs = np.tanh(np.stack([xs[t] @ ws[t] for t in range(4)]))
  np.testing.assert_allclose(whole, xs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cpu_concurrency.rows(variants["whole_summed"]()), whole.sum(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(cpu_concurrency.rows(variants["half"]()), whole[:2])
  for name in ("two_branches", "two_async_calls", "two_threads"):
    np.testing.assert_allclose(cpu_concurrency.rows(variants[name]()), whole, rtol=1e-6, atol=1e-7, err_msg=name)
  assert cpu_concurrency.best_ms(variants["half"], calls=2, reps=2) > 0


def test_every_weight_gradient_form_computes_x_transpose_d():
  x, _ = cpu_concurrency.inputs(tasks=3, support=4, width=5)
  d = cpu_concurrency.inputs(tasks=3, support=4, width=2)[0]
  variants = cpu_concurrency.weight_grad_variants(x, d)
  assert list(variants) == ["einsum", "pretransposed", "inline_swapaxes", "barrier_transpose"]
  xs, ds = np.asarray(x, np.float64), np.asarray(d, np.float64)
  expected = np.stack([xs[t].T @ ds[t] for t in range(3)])  # [T, I, O], task by task
  for name, fn in variants.items():
    np.testing.assert_allclose(cpu_concurrency.rows(fn()), expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--tasks=3"], "even number"),
    (["--depth=0"], "even number"),
    (["--devices=3"], "divide --tasks=64"),
    (["--op_profile=-1"], "--op_profile: -1 must be >= 0"),
    (["--weight_grads", "--devices=2"], "one device"),
  ],
)
def test_bad_sizes_are_refused(argv, message, capsys):
  with pytest.raises(SystemExit):
    cpu_concurrency.parse_args(argv)
  assert message in capsys.readouterr().err
