"""Meta-learners and transfer baselines, one registry.

    learner = get_learner("maml", model, inner_steps=5, inner_lr=0.01)

Every entry is a factory `(model, **kw) -> Learner`; keyword overrides pass straight through, so
`get_learner("anil", model, inner_steps=3)` is ANIL with three inner steps. Add a learner with one
file and one line here (see "Add a meta-learner" in README.md).
"""

from __future__ import annotations

from collections.abc import Callable

from transfer_meta.learners.base import Learner
from transfer_meta.learners.maml import anil, fomaml, maml, melu
from transfer_meta.learners.meta_sgd import meta_sgd
from transfer_meta.learners.reptile import reptile
from transfer_meta.learners.ridge import ridge_head
from transfer_meta.learners.transfer import finetune, head_only, none
from transfer_meta.models.base import Model
from transfer_meta.registry import lookup

LEARNERS: dict[str, Callable[..., Learner]] = {
  "maml": maml,  # second order, every parameter adapted
  "fomaml": fomaml,  # maml(first_order=True)
  "anil": anil,  # maml adapting model.head_regex
  "melu": melu,  # maml adapting model.adapt_regex (decision layers, not embeddings)
  "meta_sgd": meta_sgd,  # maml with meta-learned per-parameter inner rates
  "reptile": reptile,  # pseudo-gradient meta_params - phi
  "none": none,  # one global model, no adaptation
  "finetune": finetune,  # global model, fine-tune all parameters on the support
  "head_only": head_only,  # global model, fit the head on the support
  "ridge_head": ridge_head,  # global model, closed-form ridge fit of the head on the support
}


def get_learner(name: str, model: Model, **kwargs) -> Learner:
  """The learner `name` for `model`; unknown names raise ValueError listing the valid ones.

  Args:
    name: a key of `LEARNERS`.
    model: the `Model` to meta-learn.
    **kwargs: factory keywords (inner_steps, inner_lr, adapt_regex, first_order, loss, ...).
  Returns:
    A `Learner`.
  """
  return lookup(LEARNERS, name, "learner")(model, **kwargs)


__all__ = ["LEARNERS", "Learner", "get_learner"]
