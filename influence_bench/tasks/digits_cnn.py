"""``digits-cnn``: a small convolutional network on the 8x8 digit images, the digits-mlp split.

Conv2d(1, 6, 3, padding 1) - ReLU - Conv2d(6, 12, 3, stride 2, padding 1) - ReLU - Flatten -
Linear(192, 10): 2,650 parameters. Convolutions share their weights over the image's positions, so
K-FAC's two approximations of a weight-sharing layer (Eschenhagen et al. 2023) differ here: ``expand``
treats every position as an example of its own, ``reduce`` sums over the positions first.
"""

from __future__ import annotations

import dataclasses

from influence_bench.tasks.digits_mlp import DIGITS_MLP
from influence_bench.tasks.models import ConvNet

DIGITS_CNN = dataclasses.replace(
    DIGITS_MLP,
    name="digits-cnn",
    version=1,
    description="sklearn digits as 1x8x8 images, CNN conv(6)-conv(12, stride 2)-linear (ReLU), SGD 15 epochs of batch 64",
    model=ConvNet((1, 8, 8), (6, 12), 10, "relu"),
    recipe=dataclasses.replace(DIGITS_MLP.recipe, lr=0.03, batch_size=64, epochs=15),
)
