"""Cold-start protocols: named, versioned, seeded pure functions `Interactions -> ColdStartSplit`.

    split = make_protocol("melu", data, seed=0, n_query=10)
    split.manifest["hash"]   # proves two runs evaluated the same tasks

Every protocol is `fn(data, seed=0, **params)`; its module holds `NAME`, `VERSION`, `SCENARIOS`, `METRICS`.
"""

from __future__ import annotations

from transfer_meta.data.interactions import Interactions
from transfer_meta.data.protocols import common
from transfer_meta.data.protocols.genre_split import genre_split
from transfer_meta.data.protocols.item_cold import item_cold
from transfer_meta.data.protocols.melu import melu
from transfer_meta.data.protocols.ml1m_to_ml100k import ml1m_to_ml100k
from transfer_meta.data.protocols.recbole_metarec import recbole_metarec
from transfer_meta.data.split import ColdStartSplit

PROTOCOLS = {
  "melu": melu,
  "recbole_metarec": recbole_metarec,
  "item_cold": item_cold,
  "genre_split": genre_split,  # cross-domain, user overlap (data/cross_domain.py)
  "ml1m_to_ml100k": ml1m_to_ml100k,  # cross-domain, item overlap, user-disjoint
}


def make_protocol(
  name: str, interactions: Interactions, seed: int = 0, *, min_tasks: int = common.MIN_TASKS, **kwargs
) -> ColdStartSplit:
  """Splits `interactions` by protocol `name` (see `PROTOCOLS`); kwargs are the protocol's parameters.

  A task set with fewer than `min_tasks` tasks (0: no check) gets a UserWarning saying which parameters
  would give it more (`common.warn_few_tasks`).

  Unknown names raise ValueError listing the valid ones; unknown parameters raise `keywords.KeywordError` (a TypeError)
  naming them and listing the valid ones.
  """
  from transfer_meta import keywords  # here: keywords imports this registry

  split = keywords.call(PROTOCOLS, name, "protocol", (interactions, seed), kwargs, positional=2)
  common.warn_few_tasks(split, min_tasks)
  return split
