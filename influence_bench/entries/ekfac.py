"""``ekfac``: EK-FAC (curvlinops), the K-FAC eigenbasis with corrected eigenvalues.

Type-2 EK-FAC is the block-GGN restricted to the Kronecker eigenbasis: its eigenvalues are exactly
diag(Q^T G_block Q) (zero eigenvalue mismatch by construction). Parameters as ``kfac``'s
(``fisher``, ``samples``, ``separate``); its damping is always exact, as the authors used it.
The factors stay factors.
"""

from __future__ import annotations

from influence_bench.curvature import curvlinops_adapter
from influence_bench.entries.base import register
from influence_bench.entries.kronecker import KroneckerEntry


@register
class EKFAC(KroneckerEntry):
    name = "ekfac"
    description = "EK-FAC (curvlinops): Kronecker eigenbasis, eigenvalues diag(Q^T G Q)"

    def fit(self, problem):
        self.eigen_ = curvlinops_adapter.ekfac_curvature(problem.model, problem.x_train, problem.y_train, problem.loss,
                                                         **self.factor_args())
        return self
