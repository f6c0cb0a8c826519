"""Matrix metrics against the exact GGN G (PROTOCOL.md section 5): rel_fro, eigval_mismatch, basis_mismatch.

For a curvature in eigen form ``C = blockdiag(Q_b Lam_b Q_b^T)`` they follow from
``M_b = Q_b^T G_bb Q_b`` and the part of G outside the blocks (Frobenius norms are invariant under
the orthogonal Q): ||C - G||_F^2 = ||G off-block||^2 + sum_b ||M_b - Lam_b||^2, and
||Q^T G Q - Diag(Q^T G Q)||_F^2 = ||G off-block||^2 + sum_b ||M_b - Diag(M_b)||^2. Kronecker blocks
are handled factor by factor. Without a dense G, or for an entry with only an operator, rel_fro is a
Hutchinson estimate of ||C - G||_F^2 / ||G||_F^2 (marked estimated).
"""

from __future__ import annotations

import math

import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.metrics.registry import Measured, MetricContext, not_applicable, register_metric

HUTCHINSON_MATVECS = 30
HUTCHINSON_SEED = 0


def basis_products(curv: EigenCurvature, ggn: torch.Tensor) -> list[torch.Tensor]:
    """M_b = Q_b^T G_bb Q_b for every block."""
    return [block.basis_product(ggn[s, s]) for s, block in zip(curv.slices, curv.blocks)]


def off_block_sq(curv: EigenCurvature, ggn: torch.Tensor) -> float:
    inside = sum(float(ggn[s, s].square().sum()) for s in curv.slices)
    return max(float(ggn.square().sum()) - inside, 0.0)


def matrix_metrics(curv: EigenCurvature, ggn: torch.Tensor) -> dict[str, float]:
    """rel_fro, eigval_mismatch and basis_mismatch of a curvature with a complete eigenbasis against G."""
    products = basis_products(curv, ggn)
    g_norm_sq = float(ggn.square().sum())
    off_block = off_block_sq(curv, ggn)
    diff_sq = off_block + sum(float((m - torch.diag(lam)).square().sum()) for m, lam in zip(products, curv.eigvals))
    diag = torch.cat([torch.diagonal(m) for m in products])
    lam = curv.all_eigvals()
    off_diag_sq = off_block + sum(float((m - torch.diag(torch.diagonal(m))).square().sum()) for m in products)
    return {
        "rel_fro": math.sqrt(diff_sq / g_norm_sq),
        "eigval_mismatch": float(torch.linalg.norm(lam - diag) / torch.linalg.norm(diag)),
        "basis_mismatch": math.sqrt(max(off_diag_sq, 0.0) / g_norm_sq),
    }


def _exact_matrix_metrics(ctx: MetricContext) -> dict[str, float] | None:
    """The three metrics exactly, where the entry has a complete eigenbasis and G is dense; else None."""
    if "matrix" not in ctx.cache:
        ok = ctx.entry.has("eigen") and ctx.reference.ggn is not None and ctx.entry.eigen_form().complete_basis
        ctx.cache["matrix"] = matrix_metrics(ctx.entry.eigen_form(), ctx.reference.ggn) if ok else None
    return ctx.cache["matrix"]


def hutchinson_rel_fro(ctx: MetricContext) -> float:
    """sqrt(||C - G||_F^2 / ||G||_F^2), the numerator from Rademacher probes z: E||(C - G) z||^2."""
    gen = torch.Generator().manual_seed(HUTCHINSON_SEED)
    probes = torch.randint(0, 2, (HUTCHINSON_MATVECS, ctx.problem.n_params), generator=gen, device="cpu").double() * 2 - 1
    probes = probes.to(ctx.problem.device)
    diff = ctx.entry.curvature_matvec(probes) - ctx.problem.ggn_matvec(probes)
    return math.sqrt(float(diff.square().sum()) / HUTCHINSON_MATVECS / ctx.reference.fro_sq)


@register_metric("rel_fro", "matrix", False, "||C - G||_F / ||G||_F", needs=("curvature",))
def rel_fro(ctx: MetricContext) -> Measured:
    exact = _exact_matrix_metrics(ctx)
    if exact is not None:
        return Measured(exact["rel_fro"])
    if ctx.entry.has("eigen") and ctx.reference.ggn is not None:  # a low-rank eigen form below the limit
        c = ctx.entry.eigen_form().dense()
        return Measured(float(torch.linalg.norm(c - ctx.reference.ggn) / math.sqrt(ctx.reference.fro_sq)))
    return Measured(hutchinson_rel_fro(ctx), estimated=True,
                    message=f"Hutchinson estimate ({HUTCHINSON_MATVECS} Rademacher probes)")


def _needs_basis(ctx: MetricContext) -> str | None:
    if not ctx.entry.has("eigen"):
        return "needs an eigenbasis; the entry declares none"
    if not ctx.entry.eigen_form().complete_basis:
        return "needs a complete eigenbasis; the entry's eigen form is low-rank"
    if ctx.reference.ggn is None:
        return "needs the dense GGN, which is not built above the dense limit"
    return None


@register_metric("eigval_mismatch", "matrix", False, "||lam_hat - diag(Q^T G Q)|| / ||diag(Q^T G Q)||",
                 needs=("eigen",))
def eigval_mismatch(ctx: MetricContext) -> Measured:
    reason = _needs_basis(ctx)
    return not_applicable(reason) if reason else Measured(_exact_matrix_metrics(ctx)["eigval_mismatch"])


@register_metric("basis_mismatch", "matrix", False, "||Q^T G Q - Diag(Q^T G Q)||_F / ||G||_F", needs=("eigen",))
def basis_mismatch(ctx: MetricContext) -> Measured:
    reason = _needs_basis(ctx)
    return not_applicable(reason) if reason else Measured(_exact_matrix_metrics(ctx)["basis_mismatch"])
