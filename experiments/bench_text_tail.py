"""Fine-tuning MiniLM's last layer with the recommender: seconds per meta-step and peak RSS, per-slot vs shared tail.

    python -m experiments.bench_text_tail                                   # cases shared:8,shared:32,per_slot:8
    python -m experiments.bench_text_tail --cases=per_slot:32 --steps=1     # the old path at the config's batch
    python -m experiments.bench_text_tail --learner=none --no_csv

The run's own pieces on ML-100K's melu protocol (`configs/melu_ml100k.py` with the pre-issue-8 fields of the
text table: no residual, fixed training splits, no item ids, no OOV rows), `dataset.text_features=True` and
`dataset.text_finetune_last_layer=True`, one seed: `train.build_experiment`, `train.meta_step_fn` +
`train.jit_meta_step` on a 1-device mesh, `evaluate.make_eval_step`. A case is path:tasks_per_batch:

  per_slot  the model without its shared-tail hooks (`model.aux` dropped): every task slot of every inner step
            runs the layer on its item's cached states (padded to the catalogue's longest title, 32 tokens).
  shared    the model as the trainer builds it: the layer runs once per meta-step for the catalogue
            (`text.catalogue_tail`, items in length groups), the tasks read rows of that table.

Reported per case (each in its own process, so peak RSS is its own): the first step (compile + run), the median
of `--steps` further steps on the same batch (a new support width would compile again), one evaluation pass over
the 36 validation tasks (compile + run) and a second, compiled one. Both paths compute the same function
(tests/test_text.py checks gradients and metrics equal to 1e-5); the losses of the timed steps are printed for
both so a reader can compare them. CPU model, cores and the 1-minute load average before and after land in the
CSV row: on the shared 2-core box a figure measured at load 8 is worth far less than one measured idle.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from experiments import bench_common

PRE_ISSUE_8 = {
  "residual": "",
  "resample_train": False,
  "model.use_item_ids": False,
  "oov_min_count": 0,
  "ordinal_features": (),
}
PATHS = ("per_slot", "shared")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default="shared:8,shared:32,per_slot:8", help="path:tasks_per_batch, comma-separated")
  p.add_argument("--case", default="", help="(internal) run one case in this process")
  p.add_argument("--learner", default="melu", help="learner name (its kwargs: the config's inner loop)")
  p.add_argument("--steps", type=int, default=3, help="timed meta-steps after the first")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def parse_case(case: str) -> tuple[str, int]:
  path, _, tasks = case.partition(":")
  if path not in PATHS or not tasks.isdigit() or int(tasks) < 1:
    raise ValueError(f"case {case!r}: want <{'|'.join(PATHS)}>:<tasks per batch>, e.g. shared:32")
  return path, int(tasks)


def run_case(args: argparse.Namespace, case: str) -> dict:
  import jax

  from experiments import runner
  from transfer_meta import evaluate, sharding, train
  from transfer_meta.data.tasks import eval_batches
  from transfer_meta.learners import get_learner
  from transfer_meta.step import jit_meta_step, make_init, make_optimizer, meta_step_fn, seed_keys, stack_seed_batches

  path, tasks = parse_case(case)
  sets = PRE_ISSUE_8 | {"seeds": 1, "batch_size": tasks, "progress": False}
  sets |= {"dataset.text_features": True, "dataset.text_finetune_last_layer": True}
  config = runner.apply_overrides(runner.load_config("melu_ml100k"), sets)
  load_before = bench_common.load_avg()
  t0 = time.perf_counter()
  exp = train.build_experiment(config)
  t_build = time.perf_counter() - t0
  model = exp.model if path == "shared" else exp.model._replace(aux=None)
  kwargs = config.learner.to_dict() if args.learner == config.learner_name else {}
  if args.learner not in (config.learner_name, "none"):
    kwargs = {k: config.learner[k] for k in ("inner_steps", "inner_lr")}
  learner = get_learner(args.learner, model, **kwargs)
  tx = make_optimizer(config)
  st = exp.seeds[0]
  train_keys, eval_keys = seed_keys([st.seed])
  first = st.tasks["train"].batch(np.arange(1))
  example = {
    "support": jax.tree.map(lambda x: x[0], first["support"]),
    "query": jax.tree.map(lambda x: x[0], first["query"]),
  }
  _, init = make_init(learner, tx, example, exp.mesh)
  state = init(train_keys)
  step = jit_meta_step(meta_step_fn(learner, tx), exp.mesh)
  rng = np.random.default_rng(0)
  n_train = len(st.tasks["train"])

  # One batch for every step: a batch's support width is its bucket, and a new width would compile the step again.
  b = st.tasks["train"].batch(rng.choice(n_train, size=tasks, replace=tasks > n_train))
  b = sharding.shard_batch(stack_seed_batches([b]), exp.mesh, 1)
  width = int(b["support"]["mask"].shape[2])
  t0 = time.perf_counter()
  state, metrics = step(state, b, train_keys)
  jax.block_until_ready(metrics)
  t_first = time.perf_counter() - t0
  times, losses = [], [float(metrics["outer_loss"][0])]
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, b, train_keys)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics["outer_loss"][0]))
  eval_step = evaluate.make_eval_step(learner, st.split.metrics, None, exp.mesh)
  params = jax.tree.map(lambda x: x[0], state["meta_params"])
  valid = list(eval_batches(st.tasks["valid"], config.eval_batch_size))
  t0 = time.perf_counter()
  first_eval = evaluate.evaluate_tasks(eval_step, params, valid, eval_keys[0], exp.mesh)
  t_eval_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  again = evaluate.evaluate_tasks(eval_step, params, valid, eval_keys[0], exp.mesh)
  t_eval = time.perf_counter() - t0
  if again != first_eval:
    raise AssertionError(f"evaluation is not deterministic: {first_eval} vs {again}")
  step_s = float(np.median(times)) if times else float("nan")
  figures = {
    "build_s": t_build,
    "first_step_s": t_first,
    "step_s": step_s,
    "steps_timed": len(times),
    "support_width": width,
    "eval_first_s": t_eval_first,
    "eval_s": t_eval,
    "outer_loss": losses,
    "valid_mae": first_eval["mae"],
    "peak_rss_mib": bench_common.peak_rss_mib(),
    "load_avg_before": load_before,
  }
  params_row = {
    "path": path,
    "tasks_per_batch": tasks,
    "learner": args.learner,
    "config": "melu_ml100k (pre-issue-8 fields)",
    "inner": {k: config.learner[k] for k in ("inner_steps", "inner_lr")},
  }
  m = bench_common.machine()
  print(
    f"{case} ({args.learner}): machine {m['cpu']}, {m['cores']} cores, load {load_before} -> {bench_common.load_avg()}"
  )
  print(
    f"  first step {t_first:.1f} s, then {step_s:.2f} s/step (median of {len(times)}), eval {t_eval_first:.1f} s "
    f"first / {t_eval:.2f} s compiled, peak RSS {figures['peak_rss_mib']:.0f} MiB, losses {np.round(losses, 4)}"
  )
  if not args.no_csv:
    bench_common.append_row("text_tail", case, step_s, "s/step", figures, params_row)
  return figures


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.case:
    run_case(args, args.case)
    return 0
  cases = args.cases.split(",")
  for c in cases:
    parse_case(c)  # fail before running anything
  return bench_common.run_cases_isolated("experiments.bench_text_tail", cases, drop=("--cases",), argv=argv)


if __name__ == "__main__":
  sys.exit(main())
