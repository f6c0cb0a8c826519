"""``wide-mlp``: an MLP of 101,386 parameters on generated data, above the dense limit.

``make_classification`` (800 points, 128 features of which 32 informative and 32 redundant, 10
classes, seed 0: generated, nothing downloaded), split 600 / 200; MLP 128-256-256-10 (GELU). At
P = 101,386 a dense [P, P] matrix would take 82 GB: the dense entries are skipped with their
reason, the others run as operators or Kronecker factors, and the fidelity metrics are estimated.
"""

from __future__ import annotations

import numpy as np

from influence_bench.tasks.models import MLP
from influence_bench.tasks.spec import TaskSpec, TrainingRecipe


def _generate() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=800, n_features=128, n_informative=32, n_redundant=32, n_classes=10,
                               n_clusters_per_class=1, class_sep=1.5, flip_y=0.0, random_state=0)
    return x.astype(np.float64), y.astype(np.int64)


WIDE_MLP = TaskSpec(
    name="wide-mlp",
    version=1,
    description="generated 10-class data (128 features), MLP 128-256-256-10 (GELU, P = 101,386), SGD 20 epochs",
    dataset="sklearn.datasets.make_classification(n_samples=800, n_features=128, random_state=0)",
    model=MLP((128, 256, 256, 10), "gelu"),
    recipe=TrainingRecipe(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=32, epochs=20),
    load_arrays=_generate,
    train_fraction=0.75,
    split_seed=0,
    reference_seed=42,
)
