"""transfer_meta's meta-step beside the strongest PyTorch alternative, `torch.func`, measured in one process.

    /work/benchenv/bin/python -m experiments.bench_torch            # the issue's cases at task batches 32, 256, 466
    /work/benchenv/bin/python -m experiments.bench_torch --cases=fo1:32,so5:466 --reps=3
    JAX_DEFAULT_MATMUL_PRECISION=highest python -m experiments.bench_torch --torch_device=cuda --chunk=0  # a GPU

torch is NOT a dependency of the library: run this from a separate environment (`requirements-bench.txt`).

Both sides run the same MeLU (embedding 16 per feature; decision 96-64-64-1; MeLU's adapt set: decision layers
and output, embeddings frozen in the inner loop) from the same initial weights, on the same batches of the 466
recbole_metarec ML-100K training tasks (supports padded to 100, queries 10), with the same inner lr (0.05) and
steps, mean-squared error, and one Adam update per step:

  ours    the trainer's own jitted step (`train.meta_step_fn` + `train.jit_meta_step`, one seed, a 1-device mesh);
          `--chunk=auto` (default) takes `chunking.auto_chunk_size` (tasks padded to a multiple of the chunk with
          masked tasks, which are counted as cost, never as throughput); `--chunk=0` the plain vmap.
  torch   `torch.func.functional_call` of an `nn.Module` + `torch.func.grad` over the inner loop (second order by
          differentiating through it; first order detaches the inner gradients) + `torch.func.vmap` over tasks,
          then `torch.optim.Adam`; timed with 1 thread (the issue's table) and optionally more
          (`--torch_threads=1,2`; `torch.set_num_threads`). Our step uses every core (XLA's thread pool).
          `--torch_device=cuda` runs torch.func on the GPU (timed to `torch.cuda.synchronize()`) beside ours on
          JAX's GPU; both must then compute f32 matmuls alike for the gradient check: torch's CUDA default is
          full f32, JAX's is TF32, so run ours with JAX_DEFAULT_MATMUL_PRECISION=highest (the row records it).

  grouped `--groups=2` (default; 0 for none) adds our length-grouped step (`transfer_meta.length_groups`: each
          batch's tasks sorted by support length into G fixed-size groups, each padded to its own multiple of 16;
          the trainer's path, `length_groups.step_parts`: one packed buffer per dtype, cut into groups in the step)
          AND torch.func given the same groups (one vmap per group, sums divided once), timed in the same
          interleaved repetitions; each G appends its own row (case 'fo1:32 groups=2'), with ratios against the
          issue's ungrouped torch.func and against torch.func grouped alike.

Before timing, the mean meta-gradient of one batch is computed by both and compared leaf by leaf: the case fails
unless the largest absolute difference is <= --grad_tol (1e-6). The three timings are interleaved repetition by
repetition, so machine load hits all of them alike; the load average, CPU model and cores are printed and land in
experiments/results/bench.csv (bench 'torch').
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from experiments import bench_common

VARIANTS = {"fo1": (True, 1), "so1": (False, 1), "so5": (False, 5)}  # name -> (first_order, inner_steps)
DEFAULT_CASES = "fo1:32,so1:32,so5:32,fo1:256,so1:256,so5:256,fo1:466,so1:466,so5:466"
ADAPTED = ("decision_0", "decision_1", "output")  # MeLU's adapt set (`models.melu.ADAPT_REGEX`)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default=DEFAULT_CASES, help="comma list of variant:batch (variants fo1, so1, so5)")
  p.add_argument("--reps", type=int, default=3, help="interleaved timed repetitions per case")
  p.add_argument("--steps", type=int, default=0, help="steps per repetition (0: about 512 tasks, 1..8 steps)")
  p.add_argument(
    "--torch_threads", default="1", help="comma list of torch thread counts timed, e.g. 1,2 ('all': every core)"
  )
  p.add_argument(
    "--torch_device",
    default="cpu",
    choices=("cpu", "cuda"),
    help="where torch.func runs (ours runs on JAX's default device)",
  )
  p.add_argument("--chunk", default="auto", help="our chunk size: 'auto', 0 (plain vmap) or a divisor of the batch")
  p.add_argument("--groups", default="2", help="comma list of length-group counts G also timed (0: none)")
  p.add_argument("--inner_lr", type=float, default=0.05)
  p.add_argument("--grad_tol", type=float, default=1e-6, help="largest allowed |meta-gradient difference|")
  p.add_argument("--no_csv", action="store_true", help="print only, append nothing to bench.csv")
  return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# The torch side.


def torch_melu(spec, emb_dim: int, hidden: tuple[int, ...]):
  """MeLU as a torch `nn.Module` with the same layout as `models.melu.MeLU` (user cat, item cat, item multi-hot)."""
  import torch
  from torch import nn

  class TorchMeLU(nn.Module):
    def __init__(self):
      super().__init__()
      self.user_cat = nn.ModuleList([nn.Embedding(n, emb_dim) for n in spec.user_cat_sizes])
      self.item_cat = nn.ModuleList([nn.Embedding(n, emb_dim) for n in spec.item_cat_sizes])
      self.item_multi = nn.Parameter(torch.zeros(spec.item_multi_dim, emb_dim))
      widths = [emb_dim * (len(spec.user_cat_sizes) + len(spec.item_cat_sizes) + 1), *hidden]
      self.decision_0 = nn.Linear(widths[0], widths[1])
      self.decision_1 = nn.Linear(widths[1], widths[2])
      self.output = nn.Linear(widths[2], 1)

    def forward(self, user_cat, item_cat, item_multi):
      parts = [e(user_cat[..., f]) for f, e in enumerate(self.user_cat)]
      parts += [e(item_cat[..., f]) for f, e in enumerate(self.item_cat)]
      parts.append(item_multi @ self.item_multi / item_multi.sum(-1, keepdim=True).clamp_min(1.0))
      h = torch.relu(self.decision_0(torch.cat(parts, -1)))
      h = torch.relu(self.decision_1(h))
      return self.output(h)[..., 0]

  if len(hidden) != 2 or spec.user_multi_dim or spec.user_dense_dim or spec.item_dense_dim:
    raise ValueError("torch_melu mirrors MeLU with two decision layers and ML-100K's feature layout only")
  return TorchMeLU()


def jax_to_torch_names(flat: dict) -> dict:
  """{flax path tuple: array} -> {torch parameter name: array} (Dense kernels transposed to Linear weights)."""
  out = {}
  for path, value in flat.items():
    value = np.asarray(value)
    _, module, *rest = path
    if module in ("user_features", "item_features"):
      side = module.split("_")[0]
      name = f"{side}_multi" if rest == ["multi"] else f"{side}_cat.{rest[0].split('_')[1]}.weight"
    else:
      name = f"{module}.{'weight' if rest == ['kernel'] else 'bias'}"
      value = value.T if rest == ["kernel"] else value
    out[name] = value
  return out


def torch_step_fn(model, first_order: bool, inner_steps: int, inner_lr: float):
  """(mean_grads(params, support, query) -> {name: grad}, step(support, query)) with torch.func."""
  import torch
  from torch.func import functional_call, grad, vmap

  def loss(params, x):
    scores = functional_call(model, params, (x["user_cat"], x["item_cat"], x["item_multi"]))
    mask = x["mask"]
    return torch.sum(torch.square(scores - x["target"]) * mask) / torch.clamp(mask.sum(), min=1.0)

  def outer_loss(params, support, query):
    adapted = {n: p for n, p in params.items() if n.split(".")[0] in ADAPTED}
    frozen = {n: p for n, p in params.items() if n not in adapted}
    for _ in range(inner_steps):
      g = grad(lambda a: loss({**frozen, **a}, support))(adapted)
      if first_order:
        g = {n: v.detach() for n, v in g.items()}
      adapted = {n: adapted[n] - inner_lr * g[n] for n in adapted}
    return loss({**frozen, **adapted}, query)

  per_task = vmap(grad(outer_loss), in_dims=(None, 0, 0))

  def mean_grads(params, support, query):
    return {n: g.mean(0) for n, g in per_task(params, support, query).items()}

  def grouped_mean_grads(params, groups):
    """The mean over every task of several groups [(support, query)], each vmapped at its own width."""
    sums = [{n: g.sum(0) for n, g in per_task(params, sup, qry).items()} for sup, qry in groups]
    count = sum(sup["mask"].shape[0] for sup, _ in groups)
    return {n: sum(g[n] for g in sums) / count for n in sums[0]}

  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  named = dict(model.named_parameters())

  def step(support, query=None):
    """One Adam step on a batch (support, query), or on a grouped batch given as a list of them."""
    params = {n: p.detach() for n, p in named.items()}
    grads = grouped_mean_grads(params, support) if query is None else mean_grads(params, support, query)
    for n, p in named.items():
      p.grad = grads[n]
    opt.step()

  return mean_grads, step, grouped_mean_grads


def to_torch(x: dict, device: str = "cpu") -> dict:
  """An examples dict [T, L, ...] (numpy) -> the torch tensors the model reads, on `device`."""
  import torch

  keys = ("user_cat", "item_cat", "item_multi", "target", "mask")
  out = {k: torch.from_numpy(np.ascontiguousarray(x[k])) for k in keys}
  out["mask"] = out["mask"].float()
  out["user_cat"], out["item_cat"] = out["user_cat"].long(), out["item_cat"].long()
  return {k: v.to(device) for k, v in out.items()}


def to_numpy(t) -> np.ndarray:
  """A torch tensor on any device -> numpy."""
  return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# One case.


def run_case(args: argparse.Namespace, case: str, shared: dict) -> dict:
  import jax
  import optax
  import torch
  from flax import traverse_util

  from transfer_meta import chunking, length_groups, sharding, train
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  variant, batch_size = case.split(":")
  batch_size = int(batch_size)
  if variant not in VARIANTS:
    raise SystemExit(f"unknown variant {variant!r}; valid: {sorted(VARIANTS)}")
  first_order, inner_steps = VARIANTS[variant]
  task_data, spec = shared["task_data"], shared["spec"]
  if not 1 <= batch_size <= len(task_data):
    raise SystemExit(
      f"batch {batch_size} must be in 1..{len(task_data)} (the training tasks, drawn without replacement)"
    )
  chunk, slots = chunking.resolve_chunk_size(args.chunk, batch_size)

  model = get_model("melu", spec, emb_dim=16, hidden=(64, 64))
  learner = get_learner("melu", model, inner_steps=inner_steps, inner_lr=args.inner_lr, first_order=first_order)
  tx = optax.adam(1e-3)
  rng = np.random.default_rng(0)
  n_batches = 1 if batch_size == len(task_data) else 3
  host = [task_data.batch(rng.permutation(len(task_data))[:batch_size], slots) for _ in range(n_batches)]
  host = [b for b in host if b["support"]["mask"].shape[1] == 100]  # the shape: supports padded to 100
  if not host:
    raise SystemExit(f"no batch of {batch_size} tasks reached support width 100")

  mesh = sharding.make_mesh(jax.devices()[:1])
  keys, _ = train.seed_keys([0])
  first = task_data.batch(np.arange(1))
  example = {
    "support": jax.tree.map(lambda x: x[0], first["support"]),
    "query": jax.tree.map(lambda x: x[0], first["query"]),
  }
  init = train.make_init(learner, tx, example, mesh)[1]
  state = init(keys)
  params0 = jax.tree.map(lambda x: np.asarray(x[0]), state["meta_params"])

  # torch: same weights, same batches (real tasks only).
  tmodel = torch_melu(spec, 16, (64, 64))
  weights = jax_to_torch_names(traverse_util.flatten_dict(params0))
  with torch.no_grad():
    for n, p in tmodel.named_parameters():
      p.copy_(torch.from_numpy(np.array(weights[n])))
  dev = args.torch_device
  tmodel.to(dev)  # before the optimiser is built: Adam's state follows the parameters' device
  mean_grads, torch_step, torch_grouped_grads = torch_step_fn(tmodel, first_order, inner_steps, args.inner_lr)
  real = lambda b, part: {k: v[b["task_mask"]] for k, v in b[part].items()}
  tbatches = [(to_torch(real(b, "support"), dev), to_torch(real(b, "query"), dev)) for b in host]
  group_counts = [int(g) for g in args.groups.split(",") if int(g)]
  # Length groups of the same batches: ours (every slot, padded ones masked) and torch's (real tasks only).
  grouped = {
    g: [length_groups.group_batch(b, length_groups.group_sizes(slots, g, chunk or 1)) for b in host]
    for g in group_counts
  }
  tgrouped = {
    g: [
      [(to_torch(real(p, "support"), dev), to_torch(real(p, "query"), dev)) for p in parts if p["task_mask"].any()]
      for parts in batches
    ]
    for g, batches in grouped.items()
  }

  # Meta-gradients of the first batch, both sides, at the same weights.
  b0 = host[0]
  task = {"support": b0["support"], "query": b0["query"]}
  task_keys = jax.random.split(jax.random.fold_in(keys[0], 0), slots)
  jgrads, _ = jax.jit(lambda p, t, k, m: chunking.mean_task_grads(learner.task_grad, p, t, k, m, chunk))(
    params0, task, task_keys, b0["task_mask"]
  )
  jflat = jax_to_torch_names(traverse_util.flatten_dict(jax.device_get(jgrads)))
  tgrads = mean_grads({n: p.detach() for n, p in tmodel.named_parameters()}, *tbatches[0])
  tgrads = {n: to_numpy(g) for n, g in tgrads.items()}
  diff = max(float(np.max(np.abs(jflat[n] - tgrads[n]))) for n in jflat)
  scale = max(float(np.max(np.abs(jflat[n]))) for n in jflat)
  if not diff <= args.grad_tol:
    raise SystemExit(f"{case}: meta-gradients differ by {diff:.3g} > {args.grad_tol} (largest |grad| {scale:.3g})")
  group_diff = {}
  for g in group_counts:  # our grouped gradient and torch's grouped one, each against torch's ungrouped
    ggrads, _ = jax.jit(length_groups.grouped_batch_grad_fn(learner, chunk))(
      params0, {"groups": grouped[g][0]}, jax.random.fold_in(keys[0], 0)
    )
    gflat = jax_to_torch_names(traverse_util.flatten_dict(jax.device_get(ggrads)))
    tg = torch_grouped_grads({n: p.detach() for n, p in tmodel.named_parameters()}, tgrouped[g][0])
    tg = {n: to_numpy(v) for n, v in tg.items()}
    group_diff[g] = max(
      max(float(np.max(np.abs(gflat[n] - tgrads[n]))), float(np.max(np.abs(tg[n] - tgrads[n])))) for n in gflat
    )
    if not group_diff[g] <= args.grad_tol:
      raise SystemExit(f"{case} groups={g}: grouped meta-gradients differ by {group_diff[g]:.3g} > {args.grad_tol}")

  # Timed steps, interleaved.
  step = train.jit_meta_step(train.meta_step_fn(learner, tx, chunk), mesh)
  placed = [sharding.shard_batch(train.stack_seed_batches([b]), mesh, 1) for b in host]
  box = {"state": state}
  steps = args.steps or int(np.clip(512 // batch_size, 1, 8))

  def ours():
    s = box["state"]
    for i in range(steps):
      s, _ = step(s, placed[i % len(placed)], keys)
    box["state"] = jax.block_until_ready(s)

  def ours_grouped(g):
    gfn, gbuild, _ = length_groups.step_parts(learner, tx, chunk, 1, slots, g)  # the trainer's packed path
    gstep = train.jit_meta_step(gfn, mesh)
    gplaced = [sharding.shard_batch(gbuild([b]), mesh, 1) for b in host]

    def run():
      s = box["state"]
      for i in range(steps):
        s, _ = gstep(s, gplaced[i % len(gplaced)], keys)
      box["state"] = jax.block_until_ready(s)

    return run

  def torch_run(threads, batches):
    def run():
      torch.set_num_threads(threads)
      for i in range(steps):
        b = batches[i % len(batches)]
        torch_step(*b) if isinstance(b, tuple) else torch_step(b)
      if dev != "cpu":
        torch.cuda.synchronize()  # the steps ran asynchronously on the GPU: time them to completion

    return run

  cores = bench_common.cores()
  threads = [cores if t == "all" else int(t) for t in args.torch_threads.split(",")]
  runners = {"ours": ours, **{f"torch_{t}": torch_run(t, tbatches) for t in threads}}
  for g in group_counts:
    runners[f"ours_g{g}"] = ours_grouped(g)
    runners.update({f"torchg{g}_{t}": torch_run(t, tgrouped[g]) for t in threads})
  for run in runners.values():
    run()  # compile / warm up
  load0 = bench_common.load_avg()
  times = {name: [] for name in runners}
  for _ in range(args.reps):
    for name, run in runners.items():
      t0 = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t0)
  rate = {name: batch_size * steps / float(np.median(t)) for name, t in times.items()}
  best = max((k for k in rate if k.startswith("torch_")), key=rate.get)
  figures = {
    "ours_tasks_per_s": rate["ours"],
    **{f"{k}_threads_tasks_per_s": v for k, v in rate.items() if k.startswith("torch_")},
    "ratio_vs_best_torch": rate["ours"] / rate[best],
    "best_torch": best,
    "grad_max_abs_diff": diff,
    "grad_max_abs": scale,
    "task_slots": slots,
    "steps_per_rep": steps,
    "load_avg_1m_start": load0,
  }
  params = {
    "variant": variant,
    "batch": batch_size,
    "chunk": chunk,
    "inner_steps": inner_steps,
    "first_order": first_order,
    "inner_lr": args.inner_lr,
    "torch": torch.__version__,
    "torch_device": dev,
    "jax_device": str(jax.devices()[0].device_kind),
    "matmul_precision": bench_common.matmul_precision(),
    "data": "ml-100k recbole_metarec train (466 tasks), supports padded to 100",
  }
  torch_rates = "  ".join(f"{k.split('_')[1]} thr {v:7.0f}" for k, v in rate.items() if k.startswith("torch_"))
  print(
    f"{case:>8}  ours {rate['ours']:8.0f} tasks/s  torch.func ({dev}) {torch_rates} tasks/s  ratio vs best torch "
    f"{figures['ratio_vs_best_torch']:5.2f}x  chunk {chunk} of {slots} slots  |dgrad| {diff:.1e} (|grad| <= "
    f"{scale:.2g})  load {load0} -> {bench_common.load_avg()}",
    flush=True,
  )
  if not args.no_csv:
    bench_common.append_row("torch", case, figures["ratio_vs_best_torch"], "x torch.func", figures, params)
  for g in group_counts:
    best_g = max((k for k in rate if k.startswith(f"torchg{g}_")), key=rate.get)
    gfig = {
      "ours_tasks_per_s": rate[f"ours_g{g}"],
      "ours_ungrouped_tasks_per_s": rate["ours"],
      **{f"{k}_threads_tasks_per_s": v for k, v in rate.items() if k.startswith(("torch_", f"torchg{g}_"))},
      "ratio_vs_best_torch": rate[f"ours_g{g}"] / rate[best],
      "ratio_vs_best_torch_grouped": rate[f"ours_g{g}"] / rate[best_g],
      "best_torch": best,
      "best_torch_grouped": best_g,
      "grad_max_abs_diff": group_diff[g],
      "mean_group_widths": np.mean([[p["support"]["mask"].shape[1] for p in parts] for parts in grouped[g]], axis=0)
      .round(1)
      .tolist(),
      "task_slots": slots,
      "steps_per_rep": steps,
      "load_avg_1m_start": load0,
    }
    print(
      f"{case + f' g{g}':>11}  ours {rate[f'ours_g{g}']:8.0f} tasks/s  vs ungrouped torch.func "
      f"{gfig['ratio_vs_best_torch']:5.2f}x  vs torch.func grouped alike ({rate[best_g]:7.0f} tasks/s) "
      f"{gfig['ratio_vs_best_torch_grouped']:5.2f}x  group widths {gfig['mean_group_widths']}  |dgrad| "
      f"{group_diff[g]:.1e}",
      flush=True,
    )
    if not args.no_csv:
      bench_common.append_row(
        "torch", f"{case} groups={g}", gfig["ratio_vs_best_torch"], "x torch.func", gfig, {**params, "groups": g}
      )
  return figures


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  import transfer_meta as tm
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
  from transfer_meta.data.protocols import make_protocol
  from transfer_meta.data.tasks import TaskData

  data = tm.load_dataset("ml-100k")
  split = make_protocol("recbole_metarec", data, seed=0)
  shared = {
    "task_data": TaskData.from_split(data, split, "train", FeatureMatrices.from_interactions(data)),
    "spec": FeatureSpec.from_interactions(data),
  }
  m = bench_common.machine()
  print(
    f"ours (jax {jax.__version__}) vs torch.func on {m['cpu']}, {m['cores']} cores, load {bench_common.load_avg()} "
    f"(pid {os.getpid()})",
    flush=True,
  )
  failed = 0
  for case in args.cases.split(","):
    try:
      run_case(args, case, shared)
    except SystemExit as e:
      print(e, flush=True)
      failed += 1
  return int(failed > 0)


if __name__ == "__main__":
  sys.exit(main())
