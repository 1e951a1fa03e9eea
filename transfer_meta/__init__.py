"""transfer_meta: meta-learning and transfer learning for cold-start recommendation (JAX/Flax).

import transfer_meta as tm
data = tm.load_dataset("ml-100k")
split = tm.make_protocol("melu", data, seed=0)
"""

from transfer_meta.data import DATASETS, load_dataset
from transfer_meta.data.examples import FeatureMatrices, FeatureSpec, make_examples
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.split import ColdStartSplit, TaskSet

__version__ = "0.1.0"
