"""MeLU (Lee et al., KDD'19): embeddings of user and item side features, then a decision MLP.

    user = concat(embed(user categorical features))                        [N, Fu * E]
    item = concat(embed(item categorical features), normalised multi-hot sum, dense projection)
    score = output(relu(decision_1(relu(decision_0(concat(user, item))))))

MeLU's local update adapts the decision layers and the output, never the embeddings, which are
learned only in the global (outer) update; `adapt_regex` says so, `head_regex` names the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfer_meta.data.examples import FeatureSpec
from transfer_meta.models.base import Model, from_module
from transfer_meta.models.features import SideFeatures, require_inputs, resolve_ids

ADAPT_REGEX = r"decision_|output"
HEAD_REGEX = r"output"


class MeLU(nn.Module):
  """The MeLU network. `__call__(x, context)` scores examples x [N]; context is ignored.

  Attributes:
    spec: the dataset's feature sizes.
    emb_dim: width of each feature embedding (32 in the paper).
    hidden: widths of the decision layers (64, 64 in the paper).
    global_bias: initial bias of the output (the mean rating; 0 for click targets).
    use_user_ids, use_item_ids: also embed the user / item ids (zero-initialised, so a new id starts at its
      features); off in the paper. Item ids let the network learn individual warm items without also
      memorising training users.
  """

  spec: FeatureSpec
  emb_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  global_bias: float = 3.5
  use_user_ids: bool = False
  use_item_ids: bool = False

  @nn.compact
  def __call__(self, x: dict, context: dict | None = None) -> jax.Array:
    del context  # MeLU reads only the examples it scores.
    parts = [
      SideFeatures(self.spec, "user", self.emb_dim, name="user_features")(x),
      SideFeatures(self.spec, "item", self.emb_dim, name="item_features")(x),
    ]
    zeros = nn.initializers.zeros
    if self.use_user_ids:
      parts.append(nn.Embed(self.spec.n_users, self.emb_dim, embedding_init=zeros, name="user_id")(x["user"]))
    if self.use_item_ids:
      parts.append(nn.Embed(self.spec.n_items, self.emb_dim, embedding_init=zeros, name="item_id")(x["item"]))
    h = jnp.concatenate(parts, axis=-1)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"decision_{i}")(h))
    out = nn.Dense(1, bias_init=nn.initializers.constant(self.global_bias), name="output")(h)
    return out[..., 0]


def melu(
  spec: FeatureSpec,
  emb_dim: int = 32,
  hidden: Sequence[int] = (64, 64),
  global_bias: float = 3.5,
  use_ids: bool | None = None,
  adapt_regex: str = ADAPT_REGEX,
  head_regex: str = HEAD_REGEX,
  use_user_ids: bool | None = None,
  use_item_ids: bool | None = None,
) -> Model:
  """The MeLU backbone as a `Model` (see `MeLU` for the arguments). `use_ids` switches both id tables
  (default off); `use_user_ids` / `use_item_ids` switch one side each (see `features.resolve_ids`)."""
  user_ids, item_ids = resolve_ids(use_ids, use_user_ids, use_item_ids, default=False)
  require_inputs(spec, ("user", "item"), user_ids or item_ids, "melu")
  module = MeLU(spec, emb_dim, tuple(hidden), global_bias, user_ids, item_ids)
  return from_module("melu", module, adapt_regex, head_regex)
