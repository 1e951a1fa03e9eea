"""The worked example of "Add a meta-learner" (README.md), under test.

`maml_proximal` is executed from the README's own code block. It is registered in a COPY of LEARNERS (the
real registry is left alone) and put through the same smoke check every registered learner gets.
"""

from __future__ import annotations

import pathlib

import chex
import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from test_learners import check_learner, make_task, tiny_batch, tiny_model

from transfer_meta.learners import LEARNERS, get_learner
from transfer_meta.registry import lookup

# --- README example: executed from README.md itself, so the README cannot drift from what is tested.
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_MARKER = "Save this as `transfer_meta/learners/maml_proximal.py`:"


def _readme_example() -> str:
  text = README.read_text()
  assert _MARKER in text, "README lost the 'Add a meta-learner' example"
  block = text.split(_MARKER, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
  return block


_namespace: dict = {}
exec(compile(_readme_example(), str(README), "exec"), _namespace)  # noqa: S102
maml_proximal = _namespace["maml_proximal"]

# --- README example ends; its registry line is:  "maml_proximal": maml_proximal, ---------------

REGISTRY = {**LEARNERS, "maml_proximal": maml_proximal}
MODEL = tiny_model()
PARAMS = MODEL.init(jax.random.key(0), None, None)


def test_registered_example_passes_the_shared_smoke_check():
  learner = lookup(REGISTRY, "maml_proximal", "learner")(MODEL, inner_steps=2, inner_lr=0.05)
  check_learner(learner, PARAMS, tiny_batch(), jax.random.key(1))
  assert "maml_proximal" not in LEARNERS  # the copy, not the library's registry, was extended


def test_example_without_proximal_term_is_maml():
  task = make_task(3)
  prox = maml_proximal(MODEL, inner_steps=2, inner_lr=0.05, prox=0.0)
  maml = get_learner("maml", MODEL, inner_steps=2, inner_lr=0.05)
  chex.assert_trees_all_close(
    jax.jit(prox.task_grad)(PARAMS, task, None), jax.jit(maml.task_grad)(PARAMS, task, None), rtol=1e-5, atol=1e-6
  )


def test_proximal_term_keeps_task_params_near_the_meta_init():
  support = make_task(3)["support"]
  moved = {}
  for prox in (0.0, 10.0):
    phi = maml_proximal(MODEL, inner_steps=3, inner_lr=0.05, prox=prox).adapt(PARAMS, support, None)
    moved[prox] = float(np.linalg.norm(ravel_pytree(phi)[0] - ravel_pytree(PARAMS)[0]))
  assert 0.0 < moved[10.0] < 0.7 * moved[0.0], moved
