"""Curvature fidelity against the exact GGN G (PROTOCOL.md section 5).

For a curvature in eigen form ``C = blockdiag(Q_b Lam_b Q_b^T)`` every matrix metric follows from
``M_b = Q_b^T G_bb Q_b`` and the part of G outside the blocks (Frobenius norms are invariant under
the orthogonal Q):

- ||C - G||_F^2 = ||G off-block||^2 + sum_b ||M_b - Lam_b||^2
- eigval_mismatch = ||lam - diag(M)|| / ||diag(M)||
- basis_mismatch = ||Q^T G Q - Diag(Q^T G Q)||_F / ||G||_F, with ||Q^T G Q||_F = ||G||_F.

rel_fro and the spectra compare undamped curvatures (the damping cancels in C - G); ihvp_err and
fidelity use the damping of the track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from influence_bench.curvature.eigen import DEFAULT_EPS, EigenCurvature
from influence_bench.metrics.correlation import spearman_columns
from influence_bench.problem import InfluenceProblem

NOT_APPLICABLE = float("nan")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    description: str


CURVATURE_METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("rel_fro", False, "||C - G||_F / ||G||_F"),
        MetricInfo("spectrum_err", False, "||sort eig C - sort eig G|| / ||eig G||"),
        MetricInfo("eigval_mismatch", False, "||lam_hat - diag(Q^T G Q)|| / ||diag(Q^T G Q)||"),
        MetricInfo("basis_mismatch", False, "||Q^T G Q - Diag(Q^T G Q)||_F / ||G||_F"),
        MetricInfo("topk_overlap_10", True, "||V_10^T U_10||_F^2 / 10 (top eigenvectors of C and G)"),
        MetricInfo("topk_overlap_100", True, "||V_100^T U_100||_F^2 / 100"),
        MetricInfo("ihvp_err", False, "median_j ||(C+lam)^-1 g_j - (G+lam)^-1 g_j|| / ||(G+lam)^-1 g_j||"),
        MetricInfo("fidelity", True, "mean_j Spearman(s_j of the entry, s_j of the exact GGN)"),
    )
}


def kronecker_basis_product(g_block: torch.Tensor, q_g: torch.Tensor, q_a: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Q^T G_bb Q for Q = kron(Q_G, Q_A)[perm], one factor at a time (O(d^2 (out + in)) not O(d^3))."""
    d_out, d_in = q_g.shape[0], q_a.shape[0]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    joint = g_block[inverse][:, inverse].reshape(d_out, d_in, d_out, d_in)  # rows/cols in (out, in) order
    m = torch.einsum("oiOI,op,iq,OP,IQ->pqPQ", joint, q_g, q_a, q_g, q_a)
    return m.reshape(d_out * d_in, d_out * d_in)


def _basis_products(curv: EigenCurvature, ggn: torch.Tensor) -> list[torch.Tensor]:
    """M_b = Q_b^T G_bb Q_b for every block (G_bb itself where Q_b = I)."""
    out = []
    kron = curv.kron or [None] * len(curv.slices)
    for s, q, factors in zip(curv.slices, curv.eigvecs, kron):
        g = ggn[s, s]
        if q is None:
            out.append(g)
        elif factors is not None:
            out.append(kronecker_basis_product(g, *factors))
        else:
            out.append(q.T @ g @ q)
    return out


def _off_block_sq(curv: EigenCurvature, ggn: torch.Tensor) -> float:
    inside = sum(float(ggn[s, s].square().sum()) for s in curv.slices)
    return max(float(ggn.square().sum()) - inside, 0.0)


def matrix_metrics(curv: EigenCurvature, ggn: torch.Tensor) -> dict[str, float]:
    """rel_fro, eigval_mismatch and basis_mismatch of a curvature against G."""
    products = _basis_products(curv, ggn)
    g_norm_sq = float(ggn.square().sum())
    off_block = _off_block_sq(curv, ggn)
    diff_sq = off_block + sum(float((m - torch.diag(lam)).square().sum()) for m, lam in zip(products, curv.eigvals))
    diag = torch.cat([torch.diagonal(m) for m in products])
    lam = curv.all_eigvals()
    off_diag_sq = off_block + sum(float((m - torch.diag(torch.diagonal(m))).square().sum()) for m in products)
    return {
        "rel_fro": math.sqrt(diff_sq / g_norm_sq),
        "eigval_mismatch": float(torch.linalg.norm(lam - diag) / torch.linalg.norm(diag)),
        "basis_mismatch": math.sqrt(max(off_diag_sq, 0.0) / g_norm_sq),
    }


def spectrum_error(eig_c: torch.Tensor, eig_g: torch.Tensor) -> float:
    """||sort(eig C) - sort(eig G)|| / ||eig G||."""
    return float(torch.linalg.norm(torch.sort(eig_c).values - torch.sort(eig_g).values) / torch.linalg.norm(eig_g))


def layer_eigvals(curv: EigenCurvature, layer: slice) -> torch.Tensor:
    """Eigenvalues of C's diagonal block of one layer."""
    for s, lam, q in zip(curv.slices, curv.eigvals, curv.eigvecs):
        if s == layer:
            return lam
        if s.start <= layer.start and layer.stop <= s.stop:
            local = slice(layer.start - s.start, layer.stop - s.start)
            if q is None:
                return lam[local]
            rows = q[local]
            return torch.linalg.eigvalsh((rows * lam) @ rows.T)
    raise ValueError(f"layer {layer} is not inside one block of the curvature")


def top_eigvecs(curv: EigenCurvature, k: int) -> torch.Tensor:
    """[P, k] eigenvectors of the k largest eigenvalues across all blocks."""
    lam = curv.all_eigvals()
    top = torch.topk(lam, k).indices
    out = torch.zeros(curv.dim, k, dtype=curv.dtype)
    offsets = np.cumsum([0] + [v.numel() for v in curv.eigvals])
    for col, flat in enumerate(top.tolist()):
        b = int(np.searchsorted(offsets, flat, side="right") - 1)
        s, q, local = curv.slices[b], curv.eigvecs[b], flat - offsets[b]
        if q is None:
            out[s.start + local, col] = 1.0
        else:
            out[s, col] = q[:, local]
    return out


def topk_overlap(curv: EigenCurvature, reference: EigenCurvature, k: int) -> float:
    """||V_k^T U_k||_F^2 / k: 1 when the top-k eigenspaces coincide."""
    return float((top_eigvecs(curv, k).T @ top_eigvecs(reference, k)).square().sum() / k)


def ihvp_error(curv: EigenCurvature, reference: EigenCurvature, vectors: torch.Tensor, damping: float,
               eps: float = DEFAULT_EPS) -> float:
    ours = curv.inverse_matvec(vectors, damping, eps)
    exact = reference.inverse_matvec(vectors, damping, eps)
    return float(torch.median(torch.linalg.norm(ours - exact, dim=1) / torch.linalg.norm(exact, dim=1)))


def score_fidelity(scores: torch.Tensor, reference_scores: torch.Tensor) -> float:
    """Mean over test points of Spearman(s_j, s_j of the exact GGN), undefined points left out."""
    r = spearman_columns(np.asarray(scores).T, np.asarray(reference_scores).T)
    return float(np.nanmean(r)) if np.isfinite(r).any() else NOT_APPLICABLE


def curvature_fidelity(
    curv: EigenCurvature | None,
    scores: torch.Tensor,
    problem: InfluenceProblem,
    reference_scores: torch.Tensor,
    damping: float,
    eps: float = DEFAULT_EPS,
) -> dict[str, float]:
    """All section-5 metrics of one entry; NaN ("not applicable") where the entry has no curvature.

    Per-layer spectrum errors come as ``spectrum_err/layer{i}``.
    """
    out = {name: NOT_APPLICABLE for name in CURVATURE_METRICS}
    out.update({f"spectrum_err/layer{i}": NOT_APPLICABLE for i in range(len(problem.layer_slices))})
    out["fidelity"] = score_fidelity(scores, reference_scores)  # defined for any scores
    if curv is None:
        return out
    reference = problem.ggn_eigen
    out.update(matrix_metrics(curv, problem.ggn))
    out["spectrum_err"] = spectrum_error(curv.all_eigvals(), reference.all_eigvals())
    for i, (layer, g_eig) in enumerate(zip(problem.layer_slices, problem.ggn_layer_eigvals)):
        out[f"spectrum_err/layer{i}"] = spectrum_error(layer_eigvals(curv, layer), g_eig)
    for k in (10, 100):
        if k <= curv.dim:
            out[f"topk_overlap_{k}"] = topk_overlap(curv, reference, k)
    out["ihvp_err"] = ihvp_error(curv, reference, problem.test_grads, damping, eps)
    return out
