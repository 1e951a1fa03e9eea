"""Length grouping inside a meta-step: each group of a batch's tasks is padded only to its own support length.

    sizes = group_sizes(slots, n_groups=2, unit=chunk or devices)
    batch = pack_groups(per_seed_batches, sizes, devices)     # host, numpy: one buffer per dtype (the trainer's)
    step = jit_meta_step(packed_meta_step_fn(learner, tx, chunk, devices), mesh)   # groups cut inside the step
    state, metrics = step(state, batch, keys)
    # the same groups as separate arrays (one transfer per leaf per group; benchmarks compare the two):
    batch = stack_seed_groups([group_batch(b, sizes) for b in per_seed_batches]); fn = meta_step_fn(...)

A meta-gradient is a mean over tasks, so the tasks of a batch may be summed in any order. `group_batch` sorts
a batch's T task slots by support length (stable; padded slots count as length 0), cuts the sorted slots into
G groups of FIXED sizes (`group_sizes`: the same for every batch of a run), and trims each group's support and
query to the smallest width on a fixed grid (multiples of `width_step`, capped at the batch's own width) that holds
the group's longest member. Each group keeps its slots' original positions (`task_index`), so slot t keeps the
key `split(key, T)[t]` it has in the ungrouped step. The gradient sums the groups' per-task gradient and
metric sums (`chunking.task_grad_sums`, chunked like the ungrouped step; for a learner with a `task_loss`, MAML
and its variants, each chunk's sums are one gradient of its masked loss sum, `chunking.folded_task_sums`) and
divides by the real-task count once: the ungrouped step's result up to float summation order
(tests/test_length_groups.py), computed on widths w_1 <= ... <= w_G instead of G times the batch width.
ML-100K recbole_metarec training tasks have a mean support of 37.5 in a batch padded to 100, so most of the
executed FLOPs were padding.

Compiles: a group's support width is one of ceil(S / width_step) grid values for each batch width S, and the widths
are non-decreasing across groups, so a run compiles at most C(K + G - 1, G) step programs per batch width
(K grid values); in practice the last group nearly always sits at the batch width and far fewer occur.

Transfers: placing a pytree costs per leaf on CPU (~20-40 us each at these sizes, far more under load), and G
separate groups have G times the leaves of a batch, which made grouped first-order steps slower end to end than
ungrouped ones. The trainer's path (`step_parts`) therefore places ONE packed buffer per dtype
(`transfer_meta.packing`, `pack_groups`) and cuts the groups inside the step (`unpack_groups`: static slices,
local to each device's block of the task axis); experiments/profile_length_groups.py times both layouts.

Only the plain learner contract qualifies: a learner with state (MAMO's memories) or a loss that couples
the tasks of a batch (TaNP's clustering term) reads the whole batch's per-task outputs in their positions,
so `meta_step_fn` refuses it (`unsupported_reason` says why); the trainer then runs the ungrouped step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from transfer_meta import chunking, packing, step
from transfer_meta.learners.base import Learner, has_extensions

DEFAULT_STEP = 16  # width grid: multiples of 16 up to the batch's padded width


def check_length_groups(n_groups, width_step: int = DEFAULT_STEP) -> int:
  """Validates a `config.length_groups` setting; returns it as an int (0 = off).

  Raises:
    ValueError: unless `n_groups` is an int >= 0 and `width_step` an int >= 1.
  """
  if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 0:
    raise ValueError(f"length_groups={n_groups!r} must be an int >= 0 (0: off; G >= 1: G length groups per batch)")
  if isinstance(width_step, bool) or not isinstance(width_step, (int, np.integer)) or width_step < 1:
    raise ValueError(f"length_group_step={width_step!r} must be an int >= 1 (the width grid's spacing)")
  return int(n_groups)


def unsupported_reason(learner: Learner) -> str | None:
  """Why `learner` cannot be length-grouped, or None when it can."""
  if has_extensions(learner):
    return (
      f"learner {learner.name!r} has state or a batch-level loss (init_state / task_outputs / batch_loss): its "
      "outer step reads every task's outputs in their batch positions, so its tasks cannot be summed group by group"
    )
  if (learner.model.aux or {}).get("share_grad") is not None:
    return (
      f"model {type(learner.model).__name__!r} computes a shared per-step table (e.g. the text tail, "
      "text.catalogue_tail) whose gradient hook wraps the ungrouped step; grouping is not wired through it"
    )
  return None


def group_sizes(slots: int, n_groups: int, unit: int = 1) -> tuple[int, ...]:
  """Fixed group sizes for `slots` task slots: `n_groups` near-equal multiples of `unit`, larger ones first.

  Args:
    slots: task slots per step (T; the chunked step's padded count).
    n_groups: G >= 1 groups.
    unit: every size a multiple of this: the chunk size of a chunked step (each group a whole number of
      chunks), else the device count of the 'tasks' axis (each group splits evenly over the devices).
  Returns:
    G sizes summing to `slots`.
  Raises:
    ValueError: if `unit` does not divide `slots` or there are fewer than G units.
  """
  check_length_groups(n_groups)
  if n_groups < 1 or unit < 1 or slots < 1 or slots % unit:
    raise ValueError(f"need n_groups >= 1 and unit={unit} dividing slots={slots}, got n_groups={n_groups}")
  units = slots // unit
  if n_groups > units:
    raise ValueError(
      f"length_groups={n_groups} > {units}: {slots} task slots make at most {units} groups of {unit} "
      f"(a chunk, or the device count); use length_groups <= {units}"
    )
  return tuple(int(unit * len(part)) for part in np.array_split(np.arange(units), n_groups))


def group_width(n: int, width: int, width_step: int = DEFAULT_STEP) -> int:
  """The padded width of a group whose longest member has `n` entries: the multiple of `width_step` >= max(n, 1),
  capped at the batch's `width` (>= n)."""
  if n > width:
    raise ValueError(f"a group member of length {n} does not fit the batch width {width}")
  return int(min(width, max(1, math.ceil(n / width_step)) * width_step))


def _take(part: dict, index: np.ndarray, width: int) -> dict:
  return {k: np.asarray(v)[index, :width] for k, v in part.items()}


def group_plan(batch: dict, sizes: Sequence[int], width_step: int = DEFAULT_STEP) -> tuple[tuple, ...]:
  """Which slots form each length group of one seed's batch, and the group's widths (host side, numpy).

  Args:
    batch: {"support": x[T, S], "query": x[T, Q], "task_mask": bool [T], ...} (`TaskData.batch`).
    sizes: the group sizes (`group_sizes`), summing to T.
    width_step: the width grid's spacing.
  Returns:
    G tuples (slot indices int [T_g], support width S_g, query width Q_g): the slots ranked
    sizes[0] + ... + sizes[g-1] onwards by support length (stable; padded slots count as length 0), each width
    the `group_width` of the group's longest member.
  """
  mask = np.asarray(batch["task_mask"], bool)
  n_slots = mask.shape[0]
  if sum(sizes) != n_slots or min(sizes) < 1:
    raise ValueError(f"group sizes {tuple(sizes)} must be positive and sum to the batch's {n_slots} task slots")
  lengths = {part: np.where(mask, np.asarray(batch[part]["mask"]).sum(axis=1), 0) for part in ("support", "query")}
  order = np.argsort(lengths["support"], kind="stable")
  plan, start = [], 0
  for size in sizes:
    index = order[start : start + size]
    start += size
    widths = [group_width(int(lengths[p][index].max()), batch[p]["mask"].shape[1], width_step) for p in lengths]
    plan.append((index, *widths))
  return tuple(plan)


def group_batch(batch: dict, sizes: Sequence[int], width_step: int = DEFAULT_STEP) -> tuple[dict, ...]:
  """One seed's task batch cut into length groups (host side, numpy).

  Args:
    batch: {"support": x[T, S], "query": x[T, Q], "task_mask": bool [T], "task_id": int32 [T]} (`TaskData.batch`).
    sizes: the group sizes (`group_sizes`), summing to T.
    width_step: the width grid's spacing.
  Returns:
    G sub-batches, group g holding the slots ranked sizes[0] + ... + sizes[g-1] onwards by support length:
    {"support": x[T_g, S_g], "query": x[T_g, Q_g], "task_mask": [T_g], "task_id": [T_g],
    "task_index": int32 [T_g] (the slots' positions in `batch`)}, S_g / Q_g from `group_width`.
  """
  mask = np.asarray(batch["task_mask"], bool)
  groups = []
  for index, support_width, query_width in group_plan(batch, sizes, width_step):
    groups.append(
      {
        "task_mask": mask[index],
        "task_id": np.asarray(batch["task_id"])[index],
        "task_index": index.astype(np.int32),
        "support": _take(batch["support"], index, support_width),
        "query": _take(batch["query"], index, query_width),
      }
    )
  return tuple(groups)


def _pad_to(x: np.ndarray, width: int) -> np.ndarray:
  """[T, L, ...] -> [T, width, ...] with zeros after (False in masks); `x` itself when already that wide."""
  if x.shape[1] == width:
    return x
  return np.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def stack_seed_groups(grouped: Sequence[tuple[dict, ...]]) -> dict:
  """Stacks per-seed grouped batches into {"groups": ([N, T_g, ...] per group)}: group g of every seed padded
  to the longest width among the seeds (as `step.stack_seed_batches`, without copying what needs no padding)."""
  n_groups = {len(g) for g in grouped}
  if len(n_groups) != 1:
    raise ValueError(f"every seed needs the same number of length groups, got {sorted(n_groups)}")
  out = []
  for g in range(n_groups.pop()):
    parts = [seed_groups[g] for seed_groups in grouped]
    stacked = {k: np.stack([p[k] for p in parts]) for k in ("task_mask", "task_id", "task_index")}
    for part in ("support", "query"):
      width = max(p[part]["mask"].shape[1] for p in parts)
      stacked[part] = {k: np.stack([_pad_to(p[part][k], width) for p in parts]) for k in parts[0][part]}
    out.append(stacked)
  return {"groups": tuple(out)}


def pack_groups(
  batches: Sequence[dict], sizes: Sequence[int], devices: int = 1, width_step: int = DEFAULT_STEP
) -> packing.Packed:
  """Per-seed batches as ONE packed, seed-stacked batch whose slots are laid out group by group (host, numpy).

  The trainer's path (`step_parts`): the same groups as `stack_seed_groups(group_batch(...))`, but placed on the
  device in one buffer per dtype (three transfers for any G, where the separate groups need one per leaf per
  group) and cut into groups inside the jitted step (`unpack_groups`). The batch keeps its padded width; slot
  positions are permuted so that, with the task axis split into `devices` contiguous blocks, device d's block
  holds its share T_g / D of every group in turn (group g of a device's block at offsets
  (T_0 + ... + T_{g-1}) / D onwards): a group is then a local slice of every device's block.

  Args:
    batches: one `TaskData.batch` per seed (T slots each).
    sizes: the group sizes (`group_sizes`), each a multiple of `devices`.
    devices: devices on the 'tasks' mesh axis.
    width_step: the width grid's spacing.
  Returns:
    `packing.Packed` of {"support": x[N, T, S], "query": x[N, T, Q], "task_mask": [N, T], "task_id": [N, T],
    "task_index": int32 [N, T] (each position's slot in its seed's batch)}, S / Q the widest seed's, its
    layout's meta ((T_g, S_g, Q_g) per group: widths the largest over the seeds, devices).
  """
  if devices < 1 or any(size % devices for size in sizes):
    raise ValueError(f"group sizes {tuple(sizes)} must be multiples of devices={devices} (`group_sizes(unit=)`)")
  plans = [group_plan(b, sizes, width_step) for b in batches]
  n_slots, block = sum(sizes), sum(sizes) // devices
  starts = np.cumsum((0, *sizes[:-1])) // devices
  perms = np.empty((len(batches), n_slots), np.int64)
  for n, plan in enumerate(plans):
    for (index, _, _), size, start in zip(plan, sizes, starts):
      j = np.arange(size)
      share = size // devices
      perms[n, (j // share) * block + start + j % share] = index  # group member j -> device j // share
  widths = tuple((int(size), *(max(p[g][k] for p in plans) for k in (1, 2))) for g, size in enumerate(sizes))
  slot = np.arange(n_slots, dtype=np.int32)  # gathered by `perms` into each position's slot (its key's index)
  parts = ("support", "query", "task_mask", "task_id")
  trees = [{**{k: b[k] for k in parts}, "task_index": slot} for b in batches]
  return packing.pack(trees, perms, meta=(widths, int(devices)))


def unpack_groups(packed: packing.Packed) -> dict:
  """Inside the jitted step: a `pack_groups` batch -> {"groups": (group dicts [N, T_g, ...] each)}, equal to
  `stack_seed_groups` of the same batches on every unmasked entry (static slices and reshapes, local to each
  device's block of the task axis)."""
  widths, devices = packed.layout.meta
  batch = packing.unpack(packed)

  def take(x, start, size, width=None):
    n, t = x.shape[:2]
    blocks = x.reshape((n, devices, t // devices) + x.shape[2:])[:, :, start // devices : (start + size) // devices]
    out = blocks.reshape((n, size) + x.shape[2:])
    return out if width is None else out[:, :, :width]

  groups, start = [], 0
  for size, support_width, query_width in widths:
    group = {k: take(batch[k], start, size) for k in ("task_mask", "task_id", "task_index")}
    group["support"] = {k: take(v, start, size, support_width) for k, v in batch["support"].items()}
    group["query"] = {k: take(v, start, size, query_width) for k, v in batch["query"].items()}
    groups.append(group)
    start += size
  return {"groups": tuple(groups)}


def grouped_batch_grad_fn(learner: Learner, chunk_size: int | None = None, partial: int = 1) -> Callable:
  """The meta-step's gradient over ONE seed's grouped batch: `(meta_params, batch, key) -> (grads, metrics)`.

  batch: {"groups": (group dicts as `group_batch` returns, [T_g, ...] each)}. Slot t (its `task_index`) gets
  key `split(key, T)[t]`, T = the total slots, as in `step.task_batch_grad_fn`. A group larger than
  `chunk_size` is scanned in chunks of it (`chunking.task_grad_sums`, `partial` partial sums), else vmapped.
  Returns the masked means over all real tasks, like the ungrouped step (up to float summation order).
  """
  reason = unsupported_reason(learner)
  if reason is not None:
    raise ValueError(f"length grouping refused: {reason}")

  fold = learner.task_loss  # None: the vmapped per-task gradients (`chunking.folded_task_sums` says why)

  def grad_fn(meta_params, batch, key):
    groups = batch["groups"]
    task_keys = jax.random.split(key, sum(g["task_mask"].shape[0] for g in groups))
    total, count = None, 0.0
    for g in groups:
      size = g["task_mask"].shape[0]
      chunk = chunk_size if chunk_size and size > chunk_size and size % chunk_size == 0 else None
      task = {"support": g["support"], "query": g["query"]}
      sums, _ = chunking.task_grad_sums(
        learner.task_grad, meta_params, task, task_keys[g["task_index"]], g["task_mask"], chunk, partial, fold
      )
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
      count = count + jnp.sum(g["task_mask"].astype(jnp.float32))
    count = jnp.maximum(count, 1.0)
    return jax.tree.map(lambda s: s / count.astype(s.dtype), total)

  return grad_fn


def meta_step_fn(
  learner: Learner, tx: optax.GradientTransformation, chunk_size: int | None = None, partial: int = 1
) -> Callable:
  """The length-grouped meta-step over all seeds: `(state, batch, keys) -> (state, metrics)`, the contract of
  `step.meta_step_fn` with batch = `stack_seed_groups(...)` (leading seed axis N on every leaf).

  Raises:
    ValueError: for a learner with state or a batch-level loss (`unsupported_reason`).
  """
  return step.step_fn(grouped_batch_grad_fn(learner, chunk_size, partial), tx)


def packed_meta_step_fn(
  learner: Learner, tx: optax.GradientTransformation, chunk_size: int | None = None, partial: int = 1
) -> Callable:
  """`meta_step_fn` taking a `pack_groups` batch (one transfer per dtype), cut into groups inside the step."""
  grouped = meta_step_fn(learner, tx, chunk_size, partial)
  return lambda state, batch, keys: grouped(state, unpack_groups(batch), keys)


def step_parts(
  learner: Learner,
  tx: optax.GradientTransformation,
  chunk_size: int | None,
  devices: int,
  slots: int,
  n_groups: int,
  width_step: int = DEFAULT_STEP,
) -> tuple[Callable, Callable, str | None]:
  """What the trainer needs for `config.length_groups`: (meta-step fn, batch builder, bypass reason).

  Args:
    learner, tx: the learner and the outer optimiser.
    chunk_size: the step's chunk size (None: plain vmap); devices: devices on the 'tasks' axis.
    slots: task slots per step; n_groups: `config.length_groups` (0: off); width_step: the width grid.
  Returns:
    (unjitted meta-step, build(per-seed host batches) -> the step's seed-stacked batch, None or the reason
    grouping was bypassed for this learner, in which case the first two are the ungrouped step's). Grouped:
    `packed_meta_step_fn` and `pack_groups` (one host-to-device transfer per dtype).
  """
  n_groups = check_length_groups(n_groups, width_step)
  partial = devices if chunk_size else 1
  reason = unsupported_reason(learner) if n_groups else None
  if not n_groups or reason is not None:
    return step.meta_step_fn(learner, tx, chunk_size, partial), step.stack_seed_batches, reason
  sizes = group_sizes(slots, n_groups, chunk_size or devices)
  build = lambda batches: pack_groups(batches, sizes, devices, width_step)
  return packed_meta_step_fn(learner, tx, chunk_size, partial), build, None
