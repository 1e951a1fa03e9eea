"""The model contract learners see: two pure functions over pytrees, plus the default adapt set.

    params = model.init(key, x, context)          # x: examples [N]; context: examples [S] or None
    scores = model.apply(params, x, context)      # f32 [N]

`x` and `context` are examples pytrees (`transfer_meta.data.examples`) for ONE task: `x` is what to
score, `context` the task's support set (models that read it — the transformer — build the user
representation from it; the others ignore it). Learners never see module objects.

`adapt_regex` names the parameters adapted per task by default, as a regex matched (re.search)
against '/'-joined parameter paths such as 'params/decision_0/kernel'; configs may override it.
`head_regex` names the output head (what ANIL and `head_only` adapt).
`aux` (optional) maps names to further pure functions of the params that a dedicated learner reads (TaNP's
latent encoder and cluster assignment, `models/tanp.py`); wrappers (`_replace(apply=...)`) keep it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Params = Any


class Model(NamedTuple):
  name: str
  init: Callable[..., Params]  # (key, x, context) -> params
  apply: Callable[..., jax.Array]  # (params, x, context) -> scores f32 [N]
  adapt_regex: str
  head_regex: str
  aux: dict[str, Callable[..., Any]] | None = None  # model-specific functions for a dedicated learner


def from_module(name: str, module, adapt_regex: str, head_regex: str) -> Model:
  """Wraps a Flax linen module whose `__call__(x, context)` returns scores [N]."""

  def init(key, x, context=None):
    return module.init(key, x, context)

  def apply(params, x, context=None):
    return module.apply(params, x, context)

  return Model(name, init, apply, adapt_regex, head_regex)


def path_str(path) -> str:
  """'/'-joined names of a jax.tree_util key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def param_paths(params: Params) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def adapt_mask(params: Params, regex: str) -> Params:
  """Pytree of Python bools: True where the leaf's path matches `regex` (re.search).

  Raises ValueError naming the available paths when nothing matches, so a typo in a config fails.
  """
  pattern = re.compile(regex)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(pattern.search(path_str(p))), params)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise ValueError(f"adapt regex {regex!r} matches no parameter; paths are {param_paths(params)}")
  return mask
