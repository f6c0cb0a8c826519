"""``digits-logreg``: multinomial logistic regression on the digits split of ``digits-mlp``.

One ``Linear(64, 10)`` with a bias (650 parameters) trained with the same recipe (SGD, lr 0.01,
momentum 0.9, batch 32, 100 epochs, mean cross-entropy). Its loss is convex in the parameters, so its
Hessian is its GGN (positive semi-definite everywhere): the suite's sanity anchor, where the exact
entries' influence should come nearest to what retraining measures.
"""

from __future__ import annotations

import dataclasses

from influence_bench.tasks.digits_mlp import DIGITS_MLP
from influence_bench.tasks.models import MLP

DIGITS_LOGREG = dataclasses.replace(
    DIGITS_MLP,
    name="digits-logreg",
    version=1,
    description="sklearn digits, multinomial logistic regression (Linear 64-10, convex: Hessian = GGN), "
                "the digits-mlp recipe",
    model=MLP((64, 10)),
)
