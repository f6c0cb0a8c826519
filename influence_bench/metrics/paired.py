"""Paired bootstrap intervals for LDS differences (PROTOCOL.md section 9).

Every entry's LDS is recomputed on the same B resamples of test points and masks together, so the
difference of two entries on one resample is a paired draw. ``PairedResamples`` fixes the resamples
(per track's queries and alpha, fixed seed); ``PairedBootstrap.lds`` gives an entry's [B] LDS values
on them; ``difference_interval`` the 95% percentile interval of a difference. A difference is resolved
only when its whole interval is on one side of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import numpy as np
from scipy.stats import rankdata

N_RESAMPLES = 500
SEED = 0


@dataclass(frozen=True)
class PairedResamples:
    masks: np.ndarray  # [B, M] mask indices drawn with replacement
    points: np.ndarray  # [B, n_q] query positions drawn with replacement

    @classmethod
    def draw(cls, n_masks: int, n_points: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> "PairedResamples":
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, n_masks, (n_resamples, n_masks)), rng.integers(0, n_points, (n_resamples, n_points)))


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation over axis 1 of [B, M, n] arrays: [B, n]; NaN where a column is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / denom
    r[~(denom > 1e-12)] = np.nan
    return r


class PairedBootstrap:
    """The LDS of any entry on the same resamples of one track's queries and one alpha's masks.

    targets: [M, n_q] (T of PROTOCOL.md section 3); their ranks on every resample are computed once.
    Spearman is the Pearson correlation of average ranks, so duplicated masks tie as they should.
    """

    def __init__(self, targets: np.ndarray, resamples: PairedResamples, chunk: int = 100):
        self.resamples = resamples
        self.chunk = chunk
        self._target_ranks = [rankdata(targets[resamples.masks[s : s + chunk]], axis=1)
                              for s in range(0, len(resamples.masks), chunk)]

    def lds(self, predictions: np.ndarray) -> np.ndarray:
        """[B] LDS values; predictions: [M, n_q]. A point undefined on a resample is left out of its mean."""
        out = np.empty(len(self.resamples.masks))
        for k, start in enumerate(range(0, len(out), self.chunk)):
            part = slice(start, start + self.chunk)
            ranks = rankdata(predictions[self.resamples.masks[part]], axis=1)
            per_point = _pearson_rows(ranks, self._target_ranks[k])  # [b, n_q]
            picked = np.take_along_axis(per_point, self.resamples.points[part], axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined point: NaN
                out[part] = np.nanmean(picked, axis=1)
        return out


def difference_interval(boot_a: np.ndarray, boot_b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of LDS(a) - LDS(b) over paired resamples."""
    diff = (boot_a - boot_b)[np.isfinite(boot_a - boot_b)]
    if diff.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low: float, high: float) -> str:
    """"higher" when the whole interval is above 0, "lower" when below, else "not resolved"."""
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "not resolved"
