"""Backbones. `get_model(name, spec, **kwargs)` builds a `Model` (see `models/base.py`) by name.

model = get_model("melu", FeatureSpec.from_interactions(data), emb_dim=32)
params = model.init(key, query, support)
scores = model.apply(params, query, support)   # f32 [Q]
"""

from __future__ import annotations

from collections.abc import Callable

from transfer_meta import keywords
from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, adapt_mask, from_module
from transfer_meta.models.lwa import lwa, nlba
from transfer_meta.models.melu import melu
from transfer_meta.models.mf import mf
from transfer_meta.models.tanp import tanp
from transfer_meta.models.transformer import transformer
from transfer_meta.models.two_tower import two_tower

# Name -> factory(spec: FeatureSpec, **kwargs) -> Model.
MODELS: dict[str, Callable[..., Model]] = {
  "melu": melu,
  "mf": mf,
  "two_tower": two_tower,
  "transformer": transformer,
  "tanp": tanp,  # TaNP: support encoder, cluster pool, FiLM/gating-modulated decoder (use with learner 'tanp')
  "lwa": lwa,  # amortised: per-user linear weights from support class means (Vartak et al. 2017)
  "nlba": nlba,  # amortised: per-user MLP biases from support class means (Vartak et al. 2017)
}


def get_model(name: str, spec: FeatureSpec, **kwargs) -> Model:
  """Builds backbone `name` for a dataset with feature sizes `spec`; kwargs go to its factory.

  Raises ValueError listing the valid names when `name` is unknown, and `keywords.KeywordError` listing the
  factory's keywords for an unknown keyword.
  """
  return keywords.call(MODELS, name, "model", (spec,), kwargs)


__all__ = ["MODELS", "Model", "adapt_mask", "from_module", "get_model"]
