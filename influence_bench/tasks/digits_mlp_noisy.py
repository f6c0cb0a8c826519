"""``digits-mlp-noisy``: digits-mlp with 10% of its training labels flipped.

162 of the 1,617 training labels are replaced by a uniformly drawn other class (``noise_seed`` 0);
the test labels stay clean. Besides LDS and LOO, each entry is measured on mislabel detection: the
ROC-AUC of its self-influence ranking of the training points against the flipped set
(``metrics/mislabel.py``).
"""

from __future__ import annotations

import dataclasses

from influence_bench.tasks.digits_mlp import DIGITS_MLP

DIGITS_MLP_NOISY = dataclasses.replace(
    DIGITS_MLP,
    name="digits-mlp-noisy",
    version=1,
    description="digits-mlp with 10% of the training labels flipped (seed 0); mislabel detection by self-influence",
    label_noise=0.1,
    noise_seed=0,
)
