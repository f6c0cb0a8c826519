"""Column-wise correlations with explicit accounting of undefined columns."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of x[:, j] with y[:, j] for every column: [J]; NaN where a column is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    denom = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=0) / denom
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300) * np.maximum(np.abs(y).max(axis=0), 1e-300)
    r[denom <= 1e-12 * scale * x.shape[0]] = np.nan  # constant (up to rounding) columns have no correlation
    return np.clip(r, -1.0, 1.0)


def spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation per column (Pearson of average ranks): [J]; NaN where undefined."""
    return pearson_columns(rankdata(x, axis=0), rankdata(y, axis=0))
