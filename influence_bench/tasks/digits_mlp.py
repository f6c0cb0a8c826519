"""``digits-mlp``: the reference task of the paper (PROTOCOL.md section 1)."""

from __future__ import annotations

import dataclasses

import numpy as np

from influence_bench.tasks.models import MLP
from influence_bench.tasks.spec import TaskSpec, TrainingRecipe


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: 1797 images, 64 features, 10 classes (no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


DIGITS_MLP = TaskSpec(
    name="digits-mlp",
    version=1,
    description="sklearn digits, MLP 64-64-32-10 (GELU), SGD 100 epochs: the authors' released recipe",
    dataset="sklearn.datasets.load_digits",
    model=MLP((64, 64, 32, 10), "gelu"),
    recipe=TrainingRecipe(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=32, epochs=100),
    load_arrays=_load_digits,
    train_fraction=0.9,
    split_seed=0,
    reference_seed=42,
)

# The authors' command-line path (PROTOCOL.md section 10): the same recipe under a cosine schedule.
DIGITS_MLP_COSINE = dataclasses.replace(
    DIGITS_MLP,
    name="digits-mlp-cosine",
    description="digits-mlp under the authors' command-line schedule: CosineAnnealingLR(T_max=100, eta_min=1e-8)",
    recipe=dataclasses.replace(DIGITS_MLP.recipe, schedule="cosine", eta_min=1e-8),
)
