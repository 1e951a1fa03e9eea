"""transfer_meta: meta-learning and transfer learning for cold-start recommendation (JAX/Flax).

import transfer_meta as tm
data = tm.load_dataset("ml-100k")
split = tm.make_protocol("melu", data, seed=0)
results = tm.train_and_evaluate(config, "runs/melu")        # config: configs/*.py get_config()
out = tm.adapt(tm.load_meta_params("runs/melu"), items=[50, 181], ratings=[5, 4])
"""

from transfer_meta import metrics
from transfer_meta.data import DATASETS, load_dataset
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.protocols import PROTOCOLS, make_protocol
from transfer_meta.data.split import ColdStartSplit, TaskSet
from transfer_meta.learners import LEARNERS, get_learner
from transfer_meta.models import MODELS, get_model
from transfer_meta.serving import adapt, load_meta_params, score_new_items
from transfer_meta.train import train_and_evaluate

__version__ = "0.1.0"

__all__ = [
  "DATASETS",
  "LEARNERS",
  "MODELS",
  "PROTOCOLS",
  "ColdStartSplit",
  "DataError",
  "FeatureMatrices",
  "FeatureSpec",
  "FeatureTable",
  "Interactions",
  "TaskSet",
  "adapt",
  "get_learner",
  "get_model",
  "load_dataset",
  "load_meta_params",
  "make_examples",
  "make_protocol",
  "metrics",
  "score_new_items",
  "train_and_evaluate",
]
