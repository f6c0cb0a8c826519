"""Leave-one-out correlations and their noise ceiling (PROTOCOL.md section 4).

The predicted effect of removing training point ``removed[k]`` on test point j is ``-s[j, removed[k]]``
(scores predict the effect of INCLUDING a point); the target is ``D[k, j]``. Pearson and Spearman are
taken over k per test point and averaged over j, with the LDS's NaN accounting and ceiling.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from influence_bench import schema
from influence_bench.groundtruth.loo import LOOGroundTruth
from influence_bench.metrics.correlation import pearson_columns, spearman_columns
from influence_bench.metrics.lds import CorrelationSummary, clipped_spearman_brown, summarize

CORRELATIONS = {"pearson": pearson_columns, "spearman": spearman_columns}
METRICS = {"pearson": "loo_pearson", "spearman": "loo_spearman"}  # metric names of the results table


def predicted_removal_effects(scores: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """-s[j, removed[k]] as [K, n_test]. scores: [n_test, n_train]."""
    return -np.asarray(scores, dtype=np.float64)[:, removed].T


def loo_per_point(scores: np.ndarray, gt: LOOGroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman over removed points k of (-s[j, removed[k]], D[k, j]): two [n_test], NaN where undefined."""
    predicted, targets = predicted_removal_effects(scores, gt.removed), gt.targets
    return pearson_columns(predicted, targets), spearman_columns(predicted, targets)


def loo_correlations(scores: np.ndarray, gt: LOOGroundTruth) -> dict[str, CorrelationSummary]:
    """{"pearson", "spearman"}: the mean over test points with a bootstrap CI; undefined points counted."""
    pearson, spearman = loo_per_point(scores, gt)
    return {"pearson": summarize(pearson), "spearman": summarize(spearman)}


def split_half_targets(gt: LOOGroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """D from seeds [:R//2] and from seeds [R//2:]: two [K, n_test] float64."""
    n_seeds = gt.losses_full.shape[0]
    if n_seeds < 2:
        raise ValueError("the noise ceiling needs at least two seeds")
    differences = gt.differences
    return differences[:, : n_seeds // 2].mean(axis=1), differences[:, n_seeds // 2 :].mean(axis=1)


def loo_noise_ceiling(gt: LOOGroundTruth) -> dict[str, CorrelationSummary]:
    """{"pearson", "spearman"}: split-half correlation over k of the two halves' D per test point, clipped
    at 0 from below, Spearman-Brown corrected, mean over points; ``n_clipped`` counts the clipped points."""
    first, second = split_half_targets(gt)
    out = {}
    for name, correlate in CORRELATIONS.items():
        per_point, n_clipped = clipped_spearman_brown(correlate(first, second))
        out[name] = dataclasses.replace(summarize(per_point), n_clipped=n_clipped)
    return out


def loo_rows(entry: str, track: str, scores: np.ndarray, gt: LOOGroundTruth, damping: float) -> list[dict]:
    """Rows ``loo_pearson`` and ``loo_spearman`` of the results table, each beside its noise ceiling."""
    correlations, ceilings = loo_correlations(scores, gt), loo_noise_ceiling(gt)
    return [
        schema.row(entry, track, METRICS[name], c.mean, True, ci_low=c.ci_low, ci_high=c.ci_high,
                   ceiling=ceilings[name].mean, n_undefined=c.n_undefined, n_points=c.n_points, damping=damping)
        for name, c in correlations.items()
    ]
