"""Device mesh and shardings: tasks are spread over a 'tasks' mesh axis, parameters are replicated.

One mesh over every device of every process (`jax.devices()` after `jax.distributed.initialize()` on
multi-host), one axis named `tasks`. A task batch leaf carries its task axis at position `task_axis`
(0 for a plain batch `[T, ...]`, 1 for a seed-stacked batch `[N, T, ...]`); that axis is split over
the devices, everything else (meta-parameters, optimiser state, metrics) is replicated. `jax.jit` with
these `NamedSharding`s inserts the cross-device mean of the task gradients itself: no hand-written psum.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

TASK_AXIS = "tasks"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'tasks' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (TASK_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of meta-parameters, optimiser state, keys and metrics: a full copy on every device."""
  return NamedSharding(mesh, P())


def task_sharding(mesh: Mesh, task_axis: int = 0) -> NamedSharding:
  """Sharding of a batch leaf whose axis `task_axis` indexes tasks: that axis split over 'tasks'."""
  return NamedSharding(mesh, P(*([None] * task_axis), TASK_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Raises ValueError unless `batch_size` tasks split evenly over the mesh's devices."""
  n = mesh.devices.size
  if batch_size < 1 or batch_size % n:
    raise ValueError(
      f"{what}={batch_size} tasks per step must be a positive multiple of the device count {n} "
      f"(tasks are split over the '{TASK_AXIS}' mesh axis); e.g. {what}={max(n, batch_size // n * n)}"
    )


def batch_shardings(batch, mesh: Mesh, task_axis: int = 0):
  """A pytree of shardings matching `batch`: every leaf is split on its task axis."""
  return jax.tree.map(lambda _: task_sharding(mesh, task_axis), batch)


def shard_batch(batch, mesh: Mesh, task_axis: int = 0):
  """Places a host (numpy) batch on the mesh, its task axis split over the devices.

  Every process holds the same global batch (task order is a pure function of the seed and the step), so on
  multi-host each process just hands its own devices their slices (`make_array_from_callback`); on one
  process this is a `device_put`.
  """
  sharding = task_sharding(mesh, task_axis)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, batch)


def replicate(tree, mesh: Mesh):
  """Places a pytree (host or device arrays) replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
