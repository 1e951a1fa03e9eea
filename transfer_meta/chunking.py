"""Task chunking: the masked mean over tasks of a learner's `task_grad`, computed C tasks at a time.

    grads, metrics = mean_task_grads(learner.task_grad, meta_params, task, keys, task_mask)                # vmap
    grads, metrics = mean_task_grads(learner.task_grad, meta_params, task, keys, task_mask, chunk_size=64)  # scan

The plain path vmaps `task_grad` over all T tasks and reduces: it holds T per-task gradients (and T inner-loop
unrolls for second-order MAML) at once, which for large task batches and big embedding tables is what runs out
of memory. The chunked path `lax.scan`s over T / C chunks, vmaps each chunk, and carries only the running sums
of gradients and metrics (one meta-parameter tree), dividing by the real-task count at the end: peak memory
is C tasks' worth, the result equal to the plain path up to float summation order.

Chunk c holds the tasks c, c + T/C, c + 2T/C, ... (a strided reshape [T] -> [C, T/C] -> [T/C, C]). With the
task axis sharded over D devices in contiguous blocks, that reshape splits each device's block without moving
data, and with D dividing C every chunk spans every device evenly. Summing a chunk over its task axis is then a
cross-device reduction inside the loop (one all-reduce per chunk); `groups=D` carries D partial sums instead,
each device adding into its own, and reduces once after the loop (checked in the compiled HLO on 8 CPU
devices: one all-reduce, outside the while loop). On one device leave `groups=1`.
`chunk_size` must divide T (ValueError otherwise): padding inside the step would re-shard the batch and waste
compute; pick a divisor of the batch size.

Chunking is also a speed tool on CPU: a vmap over hundreds of tasks streams every intermediate [T, S, D]
through memory once per op, while a chunk of 32 tasks stays in cache (experiments/bench_throughput.py:
second order, 5 inner steps, 1,024 tasks per step: 580 -> 1,216 tasks/s, peak RSS 2.0 -> 0.8 GiB).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

TaskGrad = Callable[..., tuple]  # (meta_params, task, key) -> (grads, metrics)


def masked_task_mean(values: jax.Array, task_mask: jax.Array) -> jax.Array:
  """Mean over real tasks of a per-task leaf [T, ...]; padded tasks (even NaN ones) contribute nothing.

  Args:
    values: [T, ...] per-task values.
    task_mask: bool [T], True for real tasks.
  Returns:
    [...] the mean over tasks where `task_mask`; zeros when no task is real.
  """
  w = task_mask.astype(jnp.float32)
  w = w / jnp.maximum(jnp.sum(w), 1.0)
  values = jnp.where(_expand(task_mask, values.ndim), values, 0.0)
  return jnp.tensordot(w, values, axes=1)


def _expand(mask: jax.Array, ndim: int) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def check_chunk_size(chunk_size: int | None, n_tasks: int) -> None:
  """Raises ValueError unless `chunk_size` is None or a positive divisor of `n_tasks`."""
  if chunk_size is None:
    return
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or n_tasks % chunk_size:
    divisors = [d for d in range(1, n_tasks + 1) if n_tasks % d == 0]
    raise ValueError(
      f"chunk_size={chunk_size!r} must be a positive divisor of the task batch size {n_tasks} "
      f"(or None for no chunking); divisors of {n_tasks}: {divisors}"
    )


AUTO_CHUNK = 32  # tasks per chunk: MeLU-size chunks stay in a CPU core's cache (experiments/bench_throughput.py)


def auto_chunk_size(n_tasks: int, devices: int = 1, target: int = AUTO_CHUNK) -> tuple[int | None, int]:
  """Chunking chosen from the task batch size, so large batches never fall out of cache.

  Up to 2 * target tasks: no chunking (one vmap is as fast and compiles to the same program as before). Larger:
  the multiple of `devices` closest to `target` among the divisors of `n_tasks` in [target / 2, 2 * target];
  when none divides, ceil(T / target) chunks of equal size (rounded up to a multiple of `devices`) and the batch
  padded with masked tasks to fill them (less than one chunk of padding, e.g. 466 tasks -> 15 x 32 = 480 slots).

  Args:
    n_tasks: real tasks per step (T).
    devices: devices on the 'tasks' mesh axis (a chunk must split evenly over them).
    target: the preferred chunk size.
  Returns:
    (chunk_size or None for the plain vmap, task slots per step: n_tasks or the padded count).
  """
  if n_tasks < 1 or devices < 1 or target < 1:
    raise ValueError(f"need n_tasks, devices, target >= 1, got {n_tasks}, {devices}, {target}")
  if n_tasks <= 2 * target:
    return None, n_tasks
  fits = [c for c in range(max(1, target // 2), 2 * target + 1) if n_tasks % c == 0 and c % devices == 0]
  if fits:
    return min(fits, key=lambda c: (abs(c - target), c)), n_tasks
  per_chunk = -(-n_tasks // -(-n_tasks // target))  # ceil(T / number of target-size chunks): least padding
  chunk = -(-per_chunk // devices) * devices
  return chunk, -(-n_tasks // chunk) * chunk


def resolve_chunk_size(chunk: int | str, n_tasks: int, devices: int = 1) -> tuple[int | None, int]:
  """(chunk_size or None, task slots) from a setting: 'auto' (or -1) -> `auto_chunk_size`; 0 -> plain vmap;
  C > 0 -> chunks of C (must divide `n_tasks`)."""
  if chunk in ("auto", -1):
    return auto_chunk_size(n_tasks, devices)
  try:
    value = int(chunk)
  except (TypeError, ValueError):
    raise ValueError(f"chunk size {chunk!r}: want 'auto', -1, 0 or a positive divisor of {n_tasks}") from None
  if value == 0:
    return None, n_tasks
  check_chunk_size(value, n_tasks)
  return value, n_tasks


def _chunked(x: jax.Array, chunk_size: int) -> jax.Array:
  """[T, ...] -> [T / C, C, ...], chunk c holding tasks c, c + T/C, ... (a sharding-preserving reshape)."""
  n_chunks = x.shape[0] // chunk_size
  return jnp.swapaxes(x.reshape((chunk_size, n_chunks) + x.shape[1:]), 0, 1)


def mean_task_grads(
  task_grad: TaskGrad,
  meta_params,
  task: dict,
  keys: jax.Array,
  task_mask: jax.Array,
  chunk_size: int | None = None,
  groups: int = 1,
) -> tuple:
  """Masked mean over tasks of `task_grad`'s gradients and metrics, optionally chunk by chunk.

  Args:
    task_grad: a learner's `task_grad(meta_params, task, key) -> (grads, {name: scalar})` for ONE task.
    meta_params: the meta-parameters (shared by every task).
    task: {"support": x[T, S], "query": x[T, Q]} examples pytrees with a leading task axis.
    keys: [T] per-task PRNG keys.
    task_mask: bool [T], False for padded tasks (their values, even NaN, never reach the result).
    chunk_size: None: one vmap over all T tasks; C: `lax.scan` over T / C vmapped chunks of C tasks,
      carrying sums (C must divide T).
    groups: G partial sums carried side by side ([G, ...] per leaf, summed once at the end; G must divide C).
      With G = the number of devices on the task axis each device keeps its own partial sums, so the
      cross-device reduction happens once per step instead of once per chunk. Memory: G copies of the
      meta-gradient. Ignored without chunking.
  Returns:
    (grads: tree like `meta_params`, metrics: {name: f32 []}): means over the real tasks (zeros when none).
  """
  n_tasks = task_mask.shape[0]
  check_chunk_size(chunk_size, n_tasks)
  per_task = jax.vmap(task_grad, in_axes=(None, 0, 0))
  if chunk_size is None or chunk_size == n_tasks:
    grads, metrics = per_task(meta_params, task, keys)
    mean = lambda v: masked_task_mean(v, task_mask)
    return jax.tree.map(mean, grads), jax.tree.map(mean, metrics)
  sums, count = task_grad_sums(task_grad, meta_params, task, keys, task_mask, chunk_size, groups)
  return jax.tree.map(lambda s: s / count.astype(s.dtype), sums)


def task_grad_sums(
  task_grad: TaskGrad,
  meta_params,
  task: dict,
  keys: jax.Array,
  task_mask: jax.Array,
  chunk_size: int | None = None,
  groups: int = 1,
  task_loss: TaskGrad | None = None,
) -> tuple:
  """Sums over real tasks of `task_grad`'s gradients and metrics, and the real-task count (floored at 1).

  The parts of `mean_task_grads`, for callers that add several task sets' sums before dividing once
  (`transfer_meta.length_groups`). Arguments as `mean_task_grads`; `chunk_size` None or T: one vmap.
  task_loss: None, or the learner's `task_loss` (`task_grad` == its gradient): each chunk's sums are then ONE
    gradient of its masked loss sum (`folded_task_sums`), equal up to float summation order.

  Returns:
    ((grad sums: tree like `meta_params`, metric sums: {name: f32 []}), count: f32 [] = max(real tasks, 1)).
  """
  n_tasks = task_mask.shape[0]
  check_chunk_size(chunk_size, n_tasks)
  per_task = jax.vmap(task_grad, in_axes=(None, 0, 0))
  count = jnp.maximum(jnp.sum(task_mask.astype(jnp.float32)), 1.0)
  if chunk_size is None or chunk_size == n_tasks:
    if task_loss is not None:
      return folded_task_sums(task_loss, meta_params, task, keys, task_mask), count
    out = per_task(meta_params, task, keys)
    return jax.tree.map(lambda v: jnp.sum(jnp.where(_expand(task_mask, v.ndim), v, 0.0), axis=0), out), count
  if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or chunk_size % groups:
    raise ValueError(f"groups={groups!r} must be a positive divisor of chunk_size={chunk_size}")

  chunks = jax.tree.map(lambda x: _chunked(x, chunk_size), (task, keys, task_mask))
  grouped = lambda x: x.reshape((groups, chunk_size // groups) + x.shape[1:])  # [C, ...] -> [G, C / G, ...]

  def body(sums, chunk):
    chunk_task, chunk_keys, chunk_mask = chunk
    if task_loss is not None:  # one folded gradient per partial sum (each device's share of the chunk)
      folded = lambda t, k, m: folded_task_sums(task_loss, meta_params, t, k, m)
      out = jax.vmap(folded)(*jax.tree.map(grouped, (chunk_task, chunk_keys, chunk_mask)))
      return jax.tree.map(jnp.add, sums, out), None
    out = per_task(meta_params, chunk_task, chunk_keys)
    mask = grouped(chunk_mask)
    add = lambda s, v: s + jnp.sum(jnp.where(_expand(mask, v.ndim + 1), grouped(v), 0.0), axis=1)
    return jax.tree.map(add, sums, out), None

  one = jax.tree.map(lambda x: x[0], (task, keys))
  shapes = jax.eval_shape(task_grad, meta_params, *one)
  zeros = jax.tree.map(lambda s: jnp.zeros((groups, *s.shape), s.dtype), shapes)
  sums, _ = jax.lax.scan(body, zeros, chunks)
  return jax.tree.map(lambda s: jnp.sum(s, axis=0), sums), count


def folded_task_sums(task_loss: TaskGrad, meta_params, task: dict, keys: jax.Array, task_mask: jax.Array) -> tuple:
  """Sums over real tasks of grad(task_loss) and of its metrics, as ONE gradient of the masked sum of the losses.

  The vmapped `task_grad` materialises a gradient per task ([T, 96, 64] for MeLU's first layer), masks it and
  sums it; the gradient of the sum lets the backward pass add the tasks inside its matmuls and scatters (a
  leaf shared by every task, e.g. an embedding table read by the query, gets one [T * Q]-row product). On the
  length-grouped first-order MeLU step (256 / 466 tasks, chunk 32, G = 4) that was 1.13-1.18x (CPU time per step;
  experiments/README.md "Folded task sums"); the ungrouped step gained nothing and keeps the vmapped path.

  Padded tasks must not reach the sums even when they hold NaN: their loss is dropped by a `where`, which stops
  their cotangent at exactly 0, and their inputs are replaced by a real task's (so 0 multiplies finite values in
  the backward pass); a set with no real task returns zeros.

  Args:
    task_loss: `(meta_params, task, key) -> (scalar loss, {name: scalar})` for ONE task.
    meta_params, task ([T, ...] leaves), keys [T], task_mask bool [T]: as `task_grad_sums`.
  Returns:
    (grad sums: tree like `meta_params`, metric sums: {name: f32 []}), equal to `task_grad_sums`' up to float
    summation order.
  """
  first = jnp.argmax(task_mask)  # a real task's slot (slot 0 when there is none)
  task = jax.tree.map(lambda x: jnp.where(_expand(task_mask, x.ndim), x, x[first]), task)

  def total(params):
    losses, metrics = jax.vmap(task_loss, in_axes=(None, 0, 0))(params, task, keys)
    return jnp.sum(jnp.where(task_mask, losses, 0.0)), metrics

  grads, metrics = jax.grad(total, has_aux=True)(meta_params)
  real = jnp.any(task_mask)
  grads = jax.tree.map(lambda g: jnp.where(real, g, jnp.zeros_like(g)), grads)
  return grads, jax.tree.map(lambda v: jnp.sum(jnp.where(task_mask, v, 0.0)), metrics)
