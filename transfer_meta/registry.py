"""Plain-dict registries share one lookup so an unknown name always lists the valid ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {sorted(registry)}")
  return registry[name]
