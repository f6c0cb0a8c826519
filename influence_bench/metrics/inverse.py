"""Inverse and score metrics against the exact GGN (PROTOCOL.md section 5): ihvp_err and fidelity.

Both use the reference's test queries: all of them below the dense limit; above it a fixed subset,
with the exact GGN's inverse products from a tight-tolerance CG solve (marked estimated).
"""

from __future__ import annotations

import numpy as np
import torch

from influence_bench.metrics.correlation import spearman_columns
from influence_bench.metrics.registry import Measured, MetricContext, not_applicable, register_metric


def _note(ctx: MetricContext) -> str:
    return "" if ctx.reference.exact else f"{ctx.reference.queries.numel()} test queries, exact GGN by CG"


@register_metric("ihvp_err", "inverse", False,
                 "median_j ||(C+lam)^-1 g_j - (G+lam)^-1 g_j|| / ||(G+lam)^-1 g_j||")
def ihvp_err(ctx: MetricContext) -> Measured:
    """Needs an inverse, not a declared curvature: TRAK's, DataInf's and the identity's inverses are
    compared with the GGN's too."""
    if ctx.ihvp is None:
        return not_applicable("the entry computes scores of its own, not inverse products")
    exact = ctx.reference.ihvp
    ratio = torch.linalg.norm(ctx.ihvp - exact, dim=1) / torch.linalg.norm(exact, dim=1)
    return Measured(float(torch.median(ratio)), estimated=not ctx.reference.exact, message=_note(ctx))


@register_metric("fidelity", "inverse", True, "mean_j Spearman(s_j of the entry, s_j of the exact GGN)")
def fidelity(ctx: MetricContext) -> Measured:
    r = spearman_columns(ctx.scores.cpu().numpy().T, ctx.reference.scores.cpu().numpy().T)
    if not np.isfinite(r).any():
        return not_applicable("the scores have no defined rank correlation with the GGN's")
    return Measured(float(np.nanmean(r)), estimated=not ctx.reference.exact, message=_note(ctx))
