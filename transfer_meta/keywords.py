"""Factory keywords as data: what a registered factory accepts, checked calls, and config sections that list them.

A config names a component and its keywords (`config.learner_name`, `config.learner`). `complete(config)`
fills each such section with every keyword of the chosen factory and its default, read from the factory's
signature, so each keyword is a command-line flag (`--config.learner.adapt_regex=...`) and `--help` shows
it. `call(...)` refuses an unknown keyword listing the valid ones.

A factory `(first, **kw)` that only forwards to another registered factory (`fomaml`, `anil`, `melu`,
`head_only`) takes the target's keywords; it may set some itself from the model (`melu`'s adapt set is the
model's), so those sections are filled with `None`, which here means "the factory's own default" and is
dropped before the call (no forwarded keyword of ours has `None` as a meaningful value).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

_SKIP = ("name",)  # a factory's `name` keyword is the registry name, not a setting


class KeywordError(TypeError, ValueError):
  """An unknown factory keyword (a TypeError, as Python's own; a ValueError, as every bad setting here)."""


def _target(fn: Callable, registry: Mapping[str, Callable]) -> Callable | None:
  """The registered factory a `(first, **kw)` wrapper forwards to (by the global names its body calls)."""
  targets = set(registry.values())
  for name in fn.__code__.co_names:
    cand = fn.__globals__.get(name)
    if cand is not fn and cand in targets:
      return cand
  return None


def factory_keywords(fn: Callable, registry: Mapping[str, Callable], positional: int = 1) -> dict[str, Any]:
  """Keyword name -> default of a factory, skipping its first `positional` parameters and `name`.

  Args:
    fn: a registry entry.
    registry: the registry it belongs to (to follow a forwarding wrapper to its target).
    positional: leading parameters supplied by the caller (the model, the spec, the data and seed).
  Returns:
    {keyword: default}; a forwarded keyword's default is None (the wrapper decides it).
  Raises:
    TypeError: a wrapper whose target cannot be found among the registry's entries.
  """
  params = list(inspect.signature(fn).parameters.values())[positional:]
  out = {p.name: p.default for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _SKIP}
  if any(p.kind == p.VAR_KEYWORD for p in params):
    target = _target(fn, registry)
    if target is None:
      raise TypeError(f"{fn.__name__} takes **kwargs but forwards to no factory of its registry")
    out.update({k: None for k in factory_keywords(target, registry, positional) if k not in out})
  return out


def _forwarded(fn: Callable, registry: Mapping[str, Callable], positional: int) -> set[str]:
  """Keywords `fn` takes only through **kwargs."""
  own = {p.name for p in list(inspect.signature(fn).parameters.values())[positional:]}
  return set(factory_keywords(fn, registry, positional)) - own


def call(registry: Mapping[str, Callable], name: str, kind: str, args: tuple, kwargs: Mapping, positional: int = 1):
  """`registry[name](*args, **kwargs)` after checking the keyword names.

  Args:
    registry, name, kind: the registry, the entry's name and what it holds ('learner', 'model', ...).
    args: the leading positional arguments (their count is `positional`).
    kwargs: keywords; a forwarded keyword set to None is dropped (the factory's own default).
  Raises:
    ValueError: an unknown name, listing the valid ones.
    KeywordError: an unknown keyword, listing the entry's keywords.
  """
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {sorted(registry)}")
  fn = registry[name]
  valid = factory_keywords(fn, registry, positional)
  unknown = sorted(set(kwargs) - set(valid) - set(_SKIP))
  if unknown:
    raise KeywordError(f"{kind} {name!r} has no keyword(s) {unknown}; valid keywords: {sorted(valid)}")
  forwarded = _forwarded(fn, registry, positional)
  kwargs = {k: v for k, v in kwargs.items() if not (v is None and k in forwarded)}
  return fn(*args, **kwargs)


def _field_type(fn: Callable, registry: Mapping[str, Callable], key: str, default: Any) -> type:
  """The Python type a config field for `key` holds (for a None default: from the annotation)."""
  if default is not None and default is not inspect.Parameter.empty:
    return tuple if isinstance(default, list | tuple) else type(default)
  for f in (fn, _target(fn, registry)):
    if f is None or key not in inspect.signature(f).parameters:
      continue
    hint = typing.get_type_hints(f).get(key)
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = [o for o in (typing.get_args(hint) if union else (hint,)) if o is not type(None)]
    if options:
      origin = typing.get_origin(options[0]) or options[0]
      if origin in (list, tuple, collections.abc.Sequence):
        return tuple
      return origin if isinstance(origin, type) else object
  return object


def _sections() -> dict[str, tuple[str, Mapping[str, Callable], int]]:
  """Config section -> (its name field, registry, positional parameters the caller supplies)."""
  from transfer_meta.data.protocols import PROTOCOLS
  from transfer_meta.learners import LEARNERS
  from transfer_meta.models import MODELS

  return {
    "learner": ("learner_name", LEARNERS, 1),
    "model": ("model_name", MODELS, 1),
    "protocol": ("protocol_name", PROTOCOLS, 2),
  }


def complete(
  config: ml_collections.ConfigDict, names: Mapping[str, str] | None = None, skip: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """Adds every keyword of each chosen factory, with its default, to `config.learner`, `.model`, `.protocol`.

  Values already set are kept. The config stays locked if it was. A keyword with default None becomes a typed
  placeholder, so a command-line value parses as that type.

  Args:
    config: an experiment config (`configs/*.py` get_config()).
    names: section -> factory name to complete for, overriding `config.<section>_name` (the command line's
      `--config.learner_name=...`, applied after this).
    skip: sections left alone (the command line replaces them whole, `--config.model={}`).
  Returns:
    `config`, completed in place.
  Raises:
    ValueError: a section names an unknown factory or holds a keyword it does not take.
  """
  names = dict(names or {})
  for section, (name_field, registry, positional) in _sections().items():
    if section not in config or name_field not in config or section in skip:
      continue
    name = names.get(section, config[name_field])
    if name not in registry:
      raise ValueError(f"config.{name_field}={name!r}: unknown; valid: {sorted(registry)}")
    fn = registry[name]
    valid = factory_keywords(fn, registry, positional)
    sub = config[section]
    unknown = sorted(set(sub) - set(valid) - set(_SKIP))
    if unknown:
      raise KeywordError(
        f"config.{section} has keyword(s) {unknown} that {section} {name!r} does not take; valid: {sorted(valid)}"
      )
    with sub.unlocked():
      for key, default in valid.items():
        if key in sub:
          continue
        if default is inspect.Parameter.empty:
          raise ValueError(f"{section} {name!r}: keyword {key!r} has no default; set config.{section}.{key}")
        if default is None:
          sub[key] = config_dict.placeholder(_field_type(fn, registry, key, default))
        else:
          sub[key] = tuple(default) if isinstance(default, list) else default
  return config


def describe(config: ml_collections.ConfigDict, prefix: str = "config") -> list[str]:
  """One line per leaf field, `--config.a.b=<value>  (<type>)`, for `--help`."""
  lines = []
  for key in sorted(config.keys()):
    value = config[key]
    path = f"{prefix}.{key}"
    if isinstance(value, ml_collections.ConfigDict):
      lines += describe(value, path) or [f"  --{path}  (empty section)"]
    else:
      kind = type(value).__name__ if value is not None else config.get_type(key).__name__
      lines.append(f"  --{path}={value!r}  ({kind})")
  return lines
