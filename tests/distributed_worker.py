"""Worker of tests/test_distributed.py: a few of the trainer's meta-steps on a tiny synthetic problem.

    python tests/distributed_worker.py --process_id=P --num_processes=2 --port=PORT --out=DIR

joins a `jax.distributed` run on localhost (one CPU device per process, gloo CPU collectives), builds the
same deterministic batches as every other process, and trains with `train.meta_step_fn` + `jit_meta_step`
on the global 'tasks' mesh in two ways:
  - 'global': every process passes the whole batch to `sharding.shard_batch`, which hands each process's
    devices their slices (the trainer's contract: the batch order is a pure function of seed and step);
  - 'local': each process builds only its own slice of the task axis and the global array is assembled
    with `jax.make_array_from_process_local_data` (per-host input pipelines).
It writes DIR/process_P.npz with the final meta-params and per-step metrics of both. `run_single()` is the
single-process reference (mode 'single') the test computes in its own process.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

STEPS, T = 3, 8  # meta-steps; tasks per seed batch (seed 1's batches hold 5 real tasks + 3 padded)


def problem():
  """(learner, tx, example task, train keys [2], batches): identical in every process (all seeded)."""
  import jax
  import optax

  import transfer_meta as tm
  from transfer_meta import train
  from transfer_meta.data.examples import FeatureMatrices, FeatureSpec
  from transfer_meta.data.protocols import make_protocol
  from transfer_meta.data.tasks import TaskData
  from transfer_meta.learners import get_learner
  from transfer_meta.models import get_model

  data = tm.load_dataset("synthetic", n_users=80, n_items=60, ratings_per_user=(14, 30), seed=3)
  split = make_protocol("recbole_metarec", data, seed=0)
  feats, spec = FeatureMatrices.from_interactions(data), FeatureSpec.from_interactions(data)
  tasks = TaskData.from_split(data, split, "train", feats, buckets=(10, 32))
  model = get_model("melu", spec, emb_dim=4, hidden=(8, 8))
  learner = get_learner("maml", model, inner_steps=1, inner_lr=0.1)
  tx = optax.adam(1e-2)
  keys, _ = train.seed_keys([0, 1])
  batches = [
    train.stack_seed_batches([tasks.batch(np.arange(T) + T * i), tasks.batch(np.arange(5) + 5 * i, T)])
    for i in range(STEPS)
  ]
  first = tasks.batch(np.arange(1))
  example = {
    "support": jax.tree.map(lambda x: x[0], first["support"]),
    "query": jax.tree.map(lambda x: x[0], first["query"]),
  }
  return learner, tx, example, keys, batches


def train_steps(mesh, places: dict) -> dict:
  """For each `places[mode](batch)` (batch placement), STEPS meta-steps from the same init with ONE compiled
  step; returns numpy results {mode/outer_loss: [STEPS, 2], mode/<param path>: array}."""
  import jax

  from transfer_meta import train

  learner, tx, example, keys, batches = problem()
  init = train.make_init(learner, tx, example, mesh)[1]
  step = train.jit_meta_step(train.meta_step_fn(learner, tx), mesh)
  out = {}
  for mode, place in places.items():
    state, losses = init(keys), []
    for batch in batches:
      state, metrics = step(state, place(batch), keys)
      losses.append(np.asarray(jax.device_get(metrics["outer_loss"])))
    out[f"{mode}/outer_loss"] = np.stack(losses)
    for path, value in jax.tree_util.tree_flatten_with_path(jax.device_get(state["meta_params"]))[0]:
      out[f"{mode}/{jax.tree_util.keystr(path)}"] = np.asarray(value)
  return out


def run_single() -> dict:
  """The reference: one process, one device."""
  import jax

  from transfer_meta import sharding

  mesh = sharding.make_mesh(jax.devices()[:1])
  return train_steps(mesh, {"single": lambda b: sharding.shard_batch(b, mesh, 1)})


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default since jax 0.5.1; explicit
  jax.distributed.initialize(
    f"localhost:{args.port}", num_processes=args.num_processes, process_id=args.process_id, initialization_timeout=60
  )
  from transfer_meta import sharding

  assert jax.process_count() == args.num_processes and len(jax.local_devices()) == 1
  mesh = sharding.make_mesh()
  assert mesh.devices.size == args.num_processes
  per = T // args.num_processes
  lo = args.process_id * per

  def local(batch):
    s = sharding.task_sharding(mesh, 1)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(s, x[:, lo : lo + per]), batch)

  results = train_steps(mesh, {"global": lambda b: sharding.shard_batch(b, mesh, 1), "local": local})
  np.savez(os.path.join(args.out, f"process_{args.process_id}.npz"), **results)
  jax.distributed.shutdown()
  print(f"WORKER_OK {args.process_id}")


if __name__ == "__main__":
  main()
