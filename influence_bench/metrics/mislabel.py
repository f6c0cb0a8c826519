"""Mislabel detection (``digits-mlp-noisy``): how well an entry's self-influence finds the flipped labels.

The self-influence of training point i is g_i^T (C + lam)^-1 g_i, the entry's inverse at the fixed
damping applied to the point's own loss gradient: a point whose label contradicts the rest is one
that training bends the model most for, and removing it changes its own loss most (Koh and Liang
2017, section 5.4). The metric is the ROC-AUC of that ranking of the training points against the
set the task flipped (0.5: chance, 1: every flipped label ranked above every clean one), over a fixed
random subset of ``POINTS`` training points (all of them when there are fewer): the inverse of an
operator entry (CG, LiSSA) costs in proportion to the vectors it is applied to.
"""

from __future__ import annotations

import numpy as np
import torch

from influence_bench.metrics.registry import Measured, MetricContext, not_applicable, register_metric

CHUNK = 256  # training gradients per inverse call
POINTS = 512  # training points ranked (a fixed subset, seed 0)


def ranked_points(n_train: int, k: int = POINTS, seed: int = 0) -> torch.Tensor:
    """The training points whose self-influence is ranked (sorted indices)."""
    return torch.as_tensor(np.sort(np.random.default_rng(seed).permutation(n_train)[: min(k, n_train)]))


def self_influence(entry, train_grads: torch.Tensor, damping: float) -> torch.Tensor:
    """g_i^T (C + damping)^-1 g_i for every row of train_grads [n, P]: [n]."""
    parts = []
    for start in range(0, train_grads.shape[0], CHUNK):
        g = train_grads[start:start + CHUNK]
        parts.append((entry.inverse(g, damping).to(g.dtype) * g).sum(1))
    return torch.cat(parts)


@register_metric("mislabel_auc", "mislabel", True,
                 "ROC-AUC of the self-influence g_i^T (C+lam)^-1 g_i against the task's flipped labels")
def mislabel_auc(ctx: MetricContext) -> Measured:
    from sklearn.metrics import roc_auc_score

    flipped = ctx.problem.mislabeled
    if flipped is None:
        return not_applicable("the task flips no labels")
    if ctx.ihvp is None:
        return not_applicable("the entry computes scores of its own, not inverse products: no self-influence")
    points = ranked_points(flipped.numel())
    values = self_influence(ctx.entry, ctx.problem.train_grads[points], ctx.damping).cpu().numpy()
    if not np.isfinite(values).all():
        return not_applicable("the self-influences are not all finite")
    labels = flipped[points].cpu().numpy()
    return Measured(float(roc_auc_score(labels, values)),
                    message=f"{int(labels.sum())} flipped of {len(points)} ranked training points "
                            f"({int(flipped.sum())} of {flipped.numel()} in all)")
