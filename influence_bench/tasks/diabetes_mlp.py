"""``diabetes-mlp``: squared-error regression on scikit-learn's bundled diabetes data.

442 patients, 10 features, one target (disease progression after a year), inputs and target
standardised on the training part; an MLP 10-32-1 (GELU) trained on the mean squared error. The
task that catches an entry or a metric that assumes cross-entropy: the loss, its Hessian in the
outputs (2, a constant) and the measurement (each test point's squared error) all differ.
"""

from __future__ import annotations

import numpy as np

from influence_bench.tasks.models import MLP
from influence_bench.tasks.spec import TaskSpec, TrainingRecipe


def _load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return x.astype(np.float64), y.astype(np.float64).reshape(-1, 1)


DIABETES_MLP = TaskSpec(
    name="diabetes-mlp",
    version=1,
    description="sklearn diabetes regression, MLP 10-32-1 (GELU), mean squared error, SGD 100 epochs",
    dataset="sklearn.datasets.load_diabetes",
    model=MLP((10, 32, 1), "gelu"),
    recipe=TrainingRecipe(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=32, epochs=100,
                          loss="mean squared-error"),
    load_arrays=_load_diabetes,
    train_fraction=0.8,
    split_seed=0,
    reference_seed=42,
)
