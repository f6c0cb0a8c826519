"""``ekfac`` and ``ekfac-mc``: EK-FAC (curvlinops), the K-FAC eigenbasis with corrected eigenvalues.

Type-2 EK-FAC is the block-GGN restricted to the Kronecker eigenbasis: its eigenvalues are exactly
diag(Q^T G_block Q) (zero eigenvalue mismatch by construction). The factors stay factors.
"""

from __future__ import annotations

from influence_bench.curvature import curvlinops_adapter
from influence_bench.entries.base import EigenEntry, register


@register
class EKFAC(EigenEntry):
    name = "ekfac"
    description = "EK-FAC, type-2: Kronecker eigenbasis, exact eigenvalues diag(Q^T G Q)"
    fisher = "type-2"

    def fit(self, problem):
        self.eigen_ = curvlinops_adapter.ekfac_curvature(problem.model, problem.x_train, problem.y_train, self.fisher)
        return self


@register
class EKFACMC(EKFAC):
    name = "ekfac-mc"
    description = "EK-FAC, Monte-Carlo Fisher (one sampled label per point)"
    fisher = "mc"
