"""Spectral metrics against the exact GGN G (PROTOCOL.md section 5): spectrum_err (overall and per
layer block) and topk_overlap at k = 10 and 100.

Exact where both spectra are known in full (an eigen form, and the dense G below the dense limit);
otherwise from the top eigenpairs by Lanczos (ARPACK) of the entry's operator and of G, marked
estimated: the spectrum error then compares the top-K eigenvalues only.
"""

from __future__ import annotations

import torch

from influence_bench.curvature.eigen import DenseEigenBlock, EigenCurvature, LowRankEigenBlock
from influence_bench.metrics.reference import TOP_K, lanczos_top
from influence_bench.metrics.registry import Measured, MetricContext, not_applicable, register_metric

TOPK = (10, 100)


def spectrum_error(eig_c: torch.Tensor, eig_g: torch.Tensor) -> float:
    """||sort(eig C) - sort(eig G)|| / ||eig G||."""
    return float(torch.linalg.norm(torch.sort(eig_c).values - torch.sort(eig_g).values) / torch.linalg.norm(eig_g))


def layer_eigvals(curv: EigenCurvature, layer: slice) -> torch.Tensor:
    """Eigenvalues of C's diagonal block of one layer."""
    for s, block in zip(curv.slices, curv.blocks):
        if s == layer:
            return block.eigvals
        if s.start <= layer.start and layer.stop <= s.stop:
            local = slice(layer.start - s.start, layer.stop - s.start)
            if isinstance(block, LowRankEigenBlock):
                rows, lam = block.u[local], block.top_eigvals
            elif isinstance(block, DenseEigenBlock):
                rows, lam = block.eigvecs[local], block.eigvals
            else:
                return block.eigvals[local]  # diagonal
            return torch.linalg.eigvalsh((rows * lam) @ rows.T)
    inside = [block for s, block in zip(curv.slices, curv.blocks) if layer.start <= s.start and s.stop <= layer.stop]
    if inside and sum(b.dim for b in inside) == layer.stop - layer.start:
        return torch.cat([b.eigvals for b in inside])  # finer blocks (one per tensor) tile the layer
    raise ValueError(f"layer {layer} is neither inside one block of the curvature nor tiled by its blocks")


def lanczos_of_entry(ctx: MetricContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K eigenpairs of the entry's curvature operator (once per entry)."""
    if "lanczos" not in ctx.cache:
        ctx.cache["lanczos"] = lanczos_top(ctx.entry.curvature_matvec, ctx.problem.n_params, TOP_K,
                                           device=ctx.problem.device)
    return ctx.cache["lanczos"]


@register_metric("spectrum_err", "spectrum", False, "||sort eig C - sort eig G|| / ||eig G||", needs=("curvature",))
def spectrum_err(ctx: MetricContext) -> dict[str, Measured]:
    ref = ctx.reference
    layers = {f"spectrum_err/layer{i}": not_applicable("needs both layer spectra in full (an eigen form and the "
                                                       "dense GGN)") for i in range(len(ctx.problem.layer_slices))}
    if ctx.entry.has("eigen") and ref.exact:
        curv = ctx.entry.eigen_form()
        out = {"spectrum_err": Measured(spectrum_error(curv.all_eigvals(), ref.eigvals))}
        for i, (layer, g_eig) in enumerate(zip(ctx.problem.layer_slices, ref.layer_eigvals)):
            out[f"spectrum_err/layer{i}"] = Measured(spectrum_error(layer_eigvals(curv, layer), g_eig))
        return out
    k = min(TOP_K, ref.eigvals.numel())
    if ctx.entry.has("eigen"):
        top_c = torch.sort(ctx.entry.eigen_form().all_eigvals(), descending=True).values[:k]
    else:
        top_c = lanczos_of_entry(ctx)[0][:k]
    measured = Measured(spectrum_error(top_c, ref.eigvals[:k]), estimated=True,
                        message=f"top-{k} eigenvalues only (Lanczos)")
    return {"spectrum_err": measured, **layers}


def _top_eigvecs(ctx: MetricContext, k: int) -> tuple[torch.Tensor, bool]:
    if ctx.entry.has("eigen"):
        return ctx.entry.eigen_form().top_eigvecs(k), False
    return lanczos_of_entry(ctx)[1][:, :k], True


def _overlap(ctx: MetricContext, k: int) -> Measured:
    if k > ctx.reference.top_eigvecs.shape[1]:
        return not_applicable(f"the reference holds only the top {ctx.reference.top_eigvecs.shape[1]} eigenvectors")
    mine, estimated = _top_eigvecs(ctx, k)
    value = float((mine.T @ ctx.reference.top_eigvecs[:, :k]).square().sum() / k)
    return Measured(value, estimated=estimated or not ctx.reference.exact,
                    message="" if not (estimated or not ctx.reference.exact) else "top eigenvectors by Lanczos")


@register_metric("topk_overlap_10", "spectrum", True, "||V_10^T U_10||_F^2 / 10 (top eigenvectors of C and G)",
                 needs=("curvature",))
def topk_overlap_10(ctx: MetricContext) -> Measured:
    return _overlap(ctx, 10)


@register_metric("topk_overlap_100", "spectrum", True, "||V_100^T U_100||_F^2 / 100", needs=("curvature",))
def topk_overlap_100(ctx: MetricContext) -> Measured:
    return _overlap(ctx, 100)
