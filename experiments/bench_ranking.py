"""Cost of full-catalogue and sampled-negative evaluation as the catalogue grows (synthetic data, CPU).

    python -m experiments.bench_ranking                      # catalogues of 1,682, 3,706 and 59,047 items
    python -m experiments.bench_ranking --sizes=59k --tasks=256 --chunk=2048

Each size runs in its own process (so its peak RSS is its own): synthetic data with `--users` users and the
size's item count, the melu protocol, and the first `--tasks` new-user tasks evaluated by
`ranking_eval.evaluate_set` with protocols query + catalogue + sampled (99 negatives) for a MeLU network
(embedding 16, MLP 64-64) under second-order MAML, 1 inner step, at its initialisation: adaptation, catalogue
scoring `--chunk` items per step, tie-aware metrics over every candidate, top-k lists and beyond-accuracy metrics.
Reported: wall seconds (first call, compilation included, and a second call), tasks/s, peak RSS. Appends a row per
size to experiments/results/bench.csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from experiments import bench_common

SIZES = {"1.7k": 1682, "3.7k": 3706, "59k": 59_047}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default=",".join(SIZES))
  p.add_argument("--case", default=None, help="run one size in this process")
  p.add_argument("--users", type=int, default=1500)
  p.add_argument("--tasks", type=int, default=128, help="new-user tasks evaluated")
  p.add_argument("--batch", type=int, default=64, help="tasks per scoring call")
  p.add_argument("--chunk", type=int, default=1024, help="catalogue items scored per step")
  p.add_argument("--no_csv", action="store_true")
  return p.parse_args(argv)


def run_size(args, size: str) -> dict:
  import jax
  import ml_collections
  import optax

  import transfer_meta as tm
  from transfer_meta import ranking_eval, train
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
  from transfer_meta.data.tasks import TaskData
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  t0 = time.perf_counter()
  data = tm.load_dataset("synthetic", n_users=args.users, n_items=SIZES[size], ratings_per_user=(20, 100), seed=0)
  split = tm.make_protocol("melu", data, seed=0)
  ts = split.tasks["new_user"]
  n = min(args.tasks, len(ts))
  split = dataclasses.replace(split, tasks={**split.tasks, "new_user": ts.subset(np.arange(n))})
  feats = FeatureMatrices.from_interactions(data)
  task_data = TaskData.from_split(data, split, "new_user", feats)
  model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=16, hidden=(64, 64))
  learner = get_learner("maml", model, inner_steps=1, inner_lr=0.1)
  first = task_data.batch(np.arange(1))
  example = {"support": train.unstack(first["support"], 0), "query": train.unstack(first["query"], 0)}
  params, _ = train.init_one(learner, optax.sgd(0.1), example, jax.random.key(0))
  setup = time.perf_counter() - t0
  config = train.default_config()
  config.eval_ranking = ("query", "catalogue", "sampled")
  config.ranking = ml_collections.ConfigDict(dict(config.ranking.to_dict(), chunk=args.chunk))
  cfg = ranking_eval.RankingConfig.from_config(config)
  scorer = ranking_eval.learner_scorer(learner, "user", args.chunk, feats, params, jax.random.key(1))
  walls = []
  for _ in range(2):
    t0 = time.perf_counter()
    res = ranking_eval.evaluate_set(data, split, "new_user", task_data, scorer, cfg, 0, args.batch)
    walls.append(time.perf_counter() - t0)
  cat = res.metrics["new_user/catalogue"]
  return {
    "items": SIZES[size],
    "tasks": n,
    "setup_s": setup,
    "first_s": walls[0],
    "second_s": walls[1],
    "tasks_per_s": n / walls[1],
    "recall@10": cat["recall@10"],
    "coverage@10": cat["coverage@10"],
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.case is None:
    return bench_common.run_cases_isolated(
      "experiments.bench_ranking", args.sizes.split(","), drop=("--sizes",), argv=argv
    )
  figures = run_size(args, args.case)
  params = {k: getattr(args, k) for k in ("users", "tasks", "batch", "chunk")}
  peak = bench_common.peak_rss_mib()
  print(
    f"{args.case}: " + ", ".join(f"{k} {bench_common._round(v)}" for k, v in figures.items()) + f", peak RSS {peak} MiB"
  )
  if not args.no_csv:
    bench_common.append_row("ranking", args.case, figures["tasks_per_s"], "tasks/s", figures, params)
  return 0


if __name__ == "__main__":
  sys.exit(main())
