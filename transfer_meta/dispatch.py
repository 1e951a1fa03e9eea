"""Bounded asynchronous dispatch: a multi-device CPU step never queues enough executions to deadlock XLA.

    step = bounded(jax.jit(fn, ...), mesh)   # what `step.jit_meta_step` returns on a mesh of >= 2 CPU devices
    for batch in batches:
      state, metrics = step(state, batch, keys)   # at most MAX_INFLIGHT calls run ahead of the host

Why: XLA's CPU client (jax 0.10.2) runs each device's part of a multi-device program on a thread pool of
max(cores, devices) threads ("XLAPjRtCpuClient"; 2 on the 2-core box with 2 fake devices), and a launch first takes a
slot of a per-device semaphore of 32 in-flight executions, blocking its pool thread while the semaphore is full.
A loop that dispatches more than 32 steps without reading a result fills it; then one pool thread runs device 0's
part of step k and blocks in the step's all-reduce, the other blocks launching step k + 32 on the semaphore, and
device 1's part of step k never gets a thread: "This thread has been waiting for `all reduce RendezvousKey{...}`
... Expected 2 threads to join", then a fatal termination after 40 s (seen with bench_throughput fo1:32:g4 on 2
devices: 50 un-synced steps per repetition; the 256-task cases dispatched 32 and passed). It has nothing to do with
length groups: any multi-device program with a collective does it (experiments/repro_cpu_dispatch_deadlock.py, a
10-line step; tests/test_multidevice_groups.py checks the bound). The trainer's own loops read each step's metrics,
so they never had more than one earlier call still running.

`bounded` wraps the jitted function so each call first waits for the call `MAX_INFLIGHT` calls back (long finished
in a steady loop, so nearly free), keeping the queue far below the semaphore. Everything else (`lower`, `trace`,
`eval_shape`, ...) is the jitted function's own. On one device, or on GPU/TPU, the function is returned unchanged.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import jax
from jax.sharding import Mesh

MAX_INFLIGHT = 8  # calls allowed ahead of the host; XLA CPU's per-device semaphore holds 32


def needs_bound(mesh: Mesh) -> bool:
  """True when `mesh` spans more than one CPU device (where XLA's CPU client can deadlock, see the module doc)."""
  devices = mesh.devices.ravel()
  return devices.size > 1 and any(d.platform == "cpu" for d in devices)


class BoundedDispatch:
  """A jitted function whose calls never run more than `limit` executions ahead of the host.

  Each call keeps its outputs' leaves; once more than `limit` calls are pending, the oldest is waited for on
  its first leaf not yet deleted (a donated output, e.g. the state fed to the next call, is deleted, and all of
  one execution's outputs become ready together). Attributes other than the call go to the wrapped function.
  """

  def __init__(self, fn: Callable, limit: int = MAX_INFLIGHT):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
      raise ValueError(f"limit={limit!r} must be an int >= 1 (calls allowed in flight)")
    self._fn, self.limit = fn, limit
    self._pending: collections.deque = collections.deque()

  def __call__(self, *args, **kwargs):
    out = self._fn(*args, **kwargs)
    self._pending.append([x for x in jax.tree.leaves(out) if isinstance(x, jax.Array)])
    while len(self._pending) > self.limit:
      _wait(self._pending.popleft())
    return out

  @property
  def pending(self) -> int:
    """Calls whose outputs are still held (at most `limit`)."""
    return len(self._pending)

  def __getattr__(self, name: str):  # only for names not found on the wrapper itself
    if name == "_fn":  # not yet set (copy / unpickling): no recursion
      raise AttributeError(name)
    return getattr(self._fn, name)

  def __repr__(self) -> str:
    return f"BoundedDispatch({self._fn!r}, limit={self.limit})"


def _wait(leaves: list) -> None:
  for x in leaves:
    if not x.is_deleted():
      x.block_until_ready()
      return


def bounded(fn: Callable, mesh: Mesh, limit: int = MAX_INFLIGHT) -> Callable:
  """`fn` wrapped in `BoundedDispatch(fn, limit)` when `needs_bound(mesh)`, else `fn` itself.

  Args:
    fn: a jitted function whose executions span `mesh`'s devices.
    mesh: the mesh it runs on.
    limit: calls allowed in flight (>= 1).
  Returns:
    a callable with `fn`'s signature and attributes.
  """
  return BoundedDispatch(fn, limit) if needs_bound(mesh) else fn
