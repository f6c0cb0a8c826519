"""Linear datamodeling score and its noise ceiling (PROTOCOL.md section 3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from influence_bench.metrics.correlation import spearman_columns

BOOTSTRAP_SEED = 0
N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class CorrelationSummary:
    """Mean over test points of a per-test-point correlation, with a 95% bootstrap CI."""

    mean: float
    ci_low: float
    ci_high: float
    n_undefined: int  # test points whose correlation is undefined (constant predictions or targets)
    n_points: int
    per_point: np.ndarray  # [n_test], NaN where undefined
    n_clipped: int = 0  # noise ceilings only: points whose split-half correlation was negative (clipped to 0)


def summarize(per_point: np.ndarray, seed: int = BOOTSTRAP_SEED, n_boot: int = N_BOOTSTRAP) -> CorrelationSummary:
    """Mean of the defined values and a percentile bootstrap CI over test points (fixed seed)."""
    per_point = np.asarray(per_point, dtype=np.float64)
    defined = per_point[np.isfinite(per_point)]
    n_undefined = int(per_point.size - defined.size)
    if defined.size == 0:
        return CorrelationSummary(np.nan, np.nan, np.nan, n_undefined, per_point.size, per_point)
    rng = np.random.default_rng(seed)
    boot = defined[rng.integers(0, defined.size, size=(n_boot, defined.size))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return CorrelationSummary(float(defined.mean()), float(low), float(high), n_undefined, per_point.size, per_point)


def predicted_subset_effects(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """P[m, j] = sum_{i in S_m} s[j, i]. scores: [n_test, n_train], masks: [M, n_train] -> [M, n_test]."""
    return masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64).T


def lds_per_point(scores: np.ndarray, masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """LDS_j = Spearman over masks of (P[:, j], T[:, j]). targets: [M, n_test] -> [n_test]."""
    return spearman_columns(predicted_subset_effects(scores, masks), targets)


def lds(scores: np.ndarray, masks: np.ndarray, targets: np.ndarray) -> CorrelationSummary:
    return summarize(lds_per_point(scores, masks, targets))


def spearman_brown(r: np.ndarray) -> np.ndarray:
    """Reliability of the full mean from the split-half correlation: 2r / (1 + r)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * r / (1.0 + r)


def split_half_correlation(losses: np.ndarray) -> np.ndarray:
    """Spearman over masks between the means of seeds [:R//2] and [R//2:]. losses: [M, R, n_test] -> [n_test]."""
    n_seeds = losses.shape[1]
    if n_seeds < 2:
        raise ValueError("the noise ceiling needs at least two seeds per mask")
    half = n_seeds // 2
    first = losses[:, :half].astype(np.float64).mean(axis=1)
    second = losses[:, half:].astype(np.float64).mean(axis=1)
    return spearman_columns(first, second)


def clipped_spearman_brown(split_half: np.ndarray) -> tuple[np.ndarray, int]:
    """Split-half correlations clipped at 0 from below, then Spearman-Brown corrected; and how many
    were clipped (PROTOCOL.md section 3: one point's negative split-half value cannot drag the mean)."""
    split_half = np.asarray(split_half, dtype=np.float64)
    negative = np.isfinite(split_half) & (split_half < 0)
    return spearman_brown(np.where(negative, 0.0, split_half)), int(negative.sum())


def noise_ceiling_per_point(losses: np.ndarray) -> np.ndarray:
    """Per test point: the clipped, Spearman-Brown corrected split-half correlation. [M, R, n_test] -> [n_test]."""
    return clipped_spearman_brown(split_half_correlation(losses))[0]


def noise_ceiling(losses: np.ndarray) -> CorrelationSummary:
    """The mean per-point ceiling with its bootstrap CI and the number of clipped points."""
    per_point, n_clipped = clipped_spearman_brown(split_half_correlation(losses))
    return dataclasses.replace(summarize(per_point), n_clipped=n_clipped)
