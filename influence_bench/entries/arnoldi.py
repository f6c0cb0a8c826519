"""``arnoldi``: the top-k eigenpairs of the GGN, found matrix-free (Schioppa et al. 2022)."""

from __future__ import annotations

from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS, EigenCurvature, LowRankEigenBlock
from influence_bench.curvature.krylov import top_eigenpairs
from influence_bench.entries.base import EigenEntry, register


@register
class Arnoldi(EigenEntry):
    """C = U diag(lam) U^T with the top-k eigenpairs of the exact GGN (Schioppa, Zablotskaia, Vilar &
    Sokolov 2022, "Scaling up influence functions"); the complement of U has eigenvalue 0, so
    (C + damping I)^-1 = U diag(1 / (lam + damping)) U^T + (I - U U^T) / damping, exactly, on the
    whole space. With k >= P it is the dense eigendecomposition, and equals the ``ggn`` entry.
    """

    name = "arnoldi"
    description = "top-k GGN eigenpairs by Lanczos/Arnoldi (ARPACK), the rest eigenvalue 0"

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS, k: int = 100, seed: int = 0):
        super().__init__(damping, eps)
        self.k = k
        self.seed = seed

    def get_params(self):
        return {**super().get_params(), "k": self.k, "seed": self.seed}

    def fit(self, problem):
        eigvals, eigvecs = top_eigenpairs(problem.ggn_matvec, problem.n_params, self.k, self.seed,
                                          device=problem.device)
        self.eigen_ = EigenCurvature([slice(0, problem.n_params)], [LowRankEigenBlock(eigvecs, eigvals)])
        return self

    def diagnostics(self):
        if not hasattr(self, "eigen_"):
            return {}
        top = self.eigen_.blocks[0].top_eigvals
        return {"arnoldi_rank": float(top.numel()), "arnoldi_smallest_kept_eigenvalue": float(top[-1])}
