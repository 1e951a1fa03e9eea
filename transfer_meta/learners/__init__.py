"""Meta-learners and transfer baselines, one registry.

    learner = get_learner("maml", model, inner_steps=5, inner_lr=0.01)

Every entry is a factory `(model, **kw) -> Learner`; keyword overrides pass straight through, so
`get_learner("anil", model, inner_steps=3)` is ANIL with three inner steps. Add a learner with one
file and one line here (see "Add a meta-learner" in README.md).
"""

from __future__ import annotations

from collections.abc import Callable

from transfer_meta import keywords
from transfer_meta.learners.base import Learner
from transfer_meta.learners.maml import anil, fomaml, maml, melu
from transfer_meta.learners.mamo import mamo
from transfer_meta.learners.meta_sgd import meta_sgd
from transfer_meta.learners.reptile import reptile
from transfer_meta.learners.ridge import ridge_head
from transfer_meta.learners.tanp import tanp
from transfer_meta.learners.transfer import finetune, head_only, none
from transfer_meta.learners.warmup import warmup
from transfer_meta.models.base import Model

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
  "mamo": mamo,  # first-order MAML from a memory-personalised init; memories are learner state (Dong et al., KDD'20)
  "tanp": tanp,  # the tanp model's NP objective + batch-level clustering loss, no inner loop (Lin et al., WWW'21)
  "warmup": warmup,  # global model, fine-tune the adapt set round by round over the support (item warm-up)
}


# Names people read (README tables, papers) for registry names; printed tables keep the registry name and add
# this legend, so a table row and the README's wording can always be matched.
DISPLAY_NAMES: dict[str, str] = {
  "maml": "MAML",
  "fomaml": "FOMAML",
  "anil": "ANIL",
  "melu": "MAML-MeLU",
  "meta_sgd": "Meta-SGD",
  "reptile": "Reptile",
  "none": "none (no adaptation)",
  "finetune": "fine-tune",
  "head_only": "head-only fine-tune",
  "mamo": "MAMO",
  "tanp": "TaNP",
  "warmup": "warm-up fine-tune (cold embedding, round by round)",
  "metaemb": "MetaEmb",
  "mwuf": "MWUF",
}


def display_name(name: str) -> str:
  """The name people read for learner `name` (the registry name itself when it has none)."""
  return DISPLAY_NAMES.get(name, name)


def get_learner(name: str, model: Model, **kwargs) -> Learner:
  """The learner `name` for `model`; unknown names raise ValueError listing the valid ones.

  Args:
    name: a key of `LEARNERS`.
    model: the `Model` to meta-learn.
    **kwargs: factory keywords (inner_steps, inner_lr, adapt_regex, first_order, loss, ...); an unknown one
      raises `keywords.KeywordError` listing the valid ones; None for a keyword a wrapper forwards (melu's
      adapt_regex, ...) means the wrapper's default.
  Returns:
    A `Learner`.
  """
  return keywords.call(LEARNERS, name, "learner", (model,), kwargs)


__all__ = ["DISPLAY_NAMES", "LEARNERS", "Learner", "display_name", "get_learner"]
