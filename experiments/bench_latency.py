"""New-user latency: adapt MeLU on K support ratings, then score the whole ML-100K catalogue (1,682 items).

    python -m experiments.bench_latency                       # K = 5,10,20; inner steps 1,5; 300 calls each
    python -m experiments.bench_latency --ks=10 --inner_steps=2 --calls=1000 --batch_users=256

The path timed is `transfer_meta/serving.py`'s own: a `serving.Bundle` is built in memory (fresh meta-params:
latency does not depend on their values, so no trained workdir is needed) and
  serve    `serving.adapt(bundle, items, ratings, user_features=...)` for a NEW user described by features:
           host preparation (feature lookup, support padded to its bucket), the jitted
           `serving._adapt_and_score` (inner loop on the support, then one apply over all items), and the
           scores copied back to numpy. p50 / p99 over `--calls` calls (different users and items each call).
  device   the same jitted `serving._adapt_and_score` on inputs already on the device, to block_until_ready:
           what the host preparation costs is serve - device.
  batch    `jax.vmap` of `serving._adapt_and_score` over `--batch_users` users at once: users/s.
Model: MeLU at the peer's size (embedding 16, MLP 64-64), learner `melu` (decision layers + output adapted).
Each (K, inner steps) case appends a row to experiments/results/bench.csv.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import numpy as np

from experiments import bench_common


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ks", default="5,10,20", help="support sizes K (comma list)")
  p.add_argument("--inner_steps", default="1,5", help="inner SGD steps (comma list)")
  p.add_argument("--calls", type=int, default=300)
  p.add_argument("--batch_users", type=int, default=64)
  p.add_argument("--emb_dim", type=int, default=16)
  p.add_argument("--hidden", default="64,64")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def make_bundle(data, learner, meta_params):
  """A `serving.Bundle` built in memory, as `serving.load_meta_params` builds it from a checkpoint."""
  import jax.numpy as jnp
  import ml_collections

  from transfer_meta import serving
  from transfer_meta.data.examples import FeatureMatrices, make_examples
  from transfer_meta.data.tasks import DEFAULT_BUCKETS

  feats = FeatureMatrices.from_interactions(data)
  examples = make_examples(feats, np.zeros(data.n_items, np.int32), np.arange(data.n_items, dtype=np.int32))
  catalogue = {k: jnp.asarray(v) for k, v in examples.items() if k in serving._ITEM_KEYS}
  config = ml_collections.ConfigDict({"buckets": DEFAULT_BUCKETS})
  index = {str(r): i for i, r in enumerate(data.item_raw_ids)}
  return serving.Bundle(config, data, learner, meta_params, 0, 0, catalogue, index)


def percentiles_ms(seconds: np.ndarray) -> dict:
  return {
    "p50_ms": float(np.percentile(seconds, 50) * 1e3),
    "p99_ms": float(np.percentile(seconds, 99) * 1e3),
    "mean_ms": float(seconds.mean() * 1e3),
  }


def run_case(args, data, k: int, inner_steps: int) -> dict:
  import jax
  import jax.numpy as jnp

  from transfer_meta import serving
  from transfer_meta.data.examples import FeatureSpec
  from transfer_meta.data.tasks import DEFAULT_BUCKETS, bucket
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  hidden = tuple(int(h) for h in args.hidden.split(","))
  model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=args.emb_dim, hidden=hidden)
  learner = get_learner("melu", model, inner_steps=inner_steps, inner_lr=0.05)
  bundle = make_bundle(data, learner, None)
  rng = np.random.default_rng(k * 100 + inner_steps)
  table = data.user_features

  def random_user() -> dict:
    return {name: table.vocab[name][rng.integers(1, len(table.vocab[name]))] for name in table.categorical}

  def random_support():
    return rng.choice(data.n_items, k, replace=False), rng.integers(1, 6, k).astype(np.float32)

  # meta-params shaped by the model on one catalogue example (values do not matter for latency)
  row = serving.user_row(data, None, random_user())
  width = bucket(k, DEFAULT_BUCKETS)
  one = {
    **{kk: v[:1] for kk, v in bundle.catalogue.items()},
    "target": jnp.zeros(1),
    "mask": jnp.ones(1, bool),
    **{kk: jnp.asarray(v)[None] for kk, v in row.items()},
  }
  meta = learner.init(jax.random.key(0), model.init(jax.random.key(0), one, one))
  bundle = make_bundle(data, learner, meta)

  # serve: the public path, host work included
  t0 = time.perf_counter()
  items, ratings = random_support()
  out = serving.adapt(bundle, items, ratings, user_features=random_user(), dense_ids=True)
  compile_s = time.perf_counter() - t0
  assert out.scores.shape == (data.n_items,) and np.isfinite(out.scores).all()
  serve = np.empty(args.calls)
  for c in range(args.calls):
    items, ratings, feats = *random_support(), random_user()
    t0 = time.perf_counter()
    serving.adapt(bundle, items, ratings, user_features=feats, dense_ids=True)
    serve[c] = time.perf_counter() - t0

  # device: the same jitted function, inputs already placed
  def placed_args(items, ratings, feats):
    pad = width - k
    row = serving.user_row(data, None, feats)
    return jax.device_put(
      (
        row,
        np.concatenate([items, np.zeros(pad, np.int64)]).astype(np.int32),
        np.concatenate([ratings, np.zeros(pad, np.float32)]),
        np.arange(width) < k,
      )
    )

  inputs = [placed_args(*random_support(), random_user()) for _ in range(16)]
  key = jax.random.key(0)
  device = np.empty(args.calls)
  for c in range(args.calls + 5):
    row, it, tg, mk = inputs[c % len(inputs)]
    t0 = time.perf_counter()
    jax.block_until_ready(serving._jitted(learner, meta, bundle.catalogue, row, it, tg, mk, key))
    if c >= 5:
      device[c - 5] = time.perf_counter() - t0

  # batch: many new users at once
  b = args.batch_users
  many = [placed_args(*random_support(), random_user()) for _ in range(b)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *many)
  keys = jax.random.split(key, b)
  batched = jax.jit(jax.vmap(functools.partial(serving._adapt_and_score, learner), (None, None, 0, 0, 0, 0, 0)))
  call = lambda: jax.block_until_ready(batched(meta, bundle.catalogue, *stacked, keys))
  batch_s = float(np.median(bench_common.time_calls(call, 5, warmup=1)))

  figures = {
    **{f"serve_{n}": v for n, v in percentiles_ms(serve).items()},
    **{f"device_{n}": v for n, v in percentiles_ms(device).items()},
    "batch_users_per_s": b / batch_s,
    "batch_ms": batch_s * 1e3,
    "compile_s": compile_s,
    "peak_rss_mib": bench_common.peak_rss_mib(),
  }
  params = {
    "k": k,
    "support_bucket": width,
    "inner_steps": inner_steps,
    "n_items": data.n_items,
    "batch_users": b,
    "calls": args.calls,
    "emb_dim": args.emb_dim,
    "hidden": args.hidden,
    "path": "serving.adapt (serve) / serving._jitted (device) / vmap(serving._adapt_and_score) (batch)",
  }
  print(
    f"K={k:3d} steps={inner_steps}  serve p50 {figures['serve_p50_ms']:6.2f} ms  p99 {figures['serve_p99_ms']:6.2f}"
    f" ms  device p50 {figures['device_p50_ms']:6.2f} ms  p99 {figures['device_p99_ms']:6.2f} ms  batch of {b}: "
    f"{figures['batch_users_per_s']:7.0f} users/s  load {bench_common.load_avg()}",
    flush=True,
  )
  if not args.no_csv:
    bench_common.append_row(
      "latency", f"K={k} inner_steps={inner_steps}", figures["serve_p50_ms"], "ms p50", figures, params
    )
  return figures


def main(argv=None) -> int:
  import transfer_meta as tm

  args = parse_args(argv)
  data = tm.load_dataset("ml-100k")
  print(f"new-user adapt + score {data.n_items} items; {args.calls} calls per case", flush=True)
  for steps in (int(s) for s in args.inner_steps.split(",")):
    for k in (int(x) for x in args.ks.split(",")):
      run_case(args, data, k, steps)
  return 0


if __name__ == "__main__":
  sys.exit(main())
