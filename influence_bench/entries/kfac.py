"""``kfac`` and ``kfac-mc``: K-FAC (curvlinops), per layer G (x) A with Kronecker-product eigenvalues.

Type-2 uses the exact GGN factors; ``-mc`` samples one label per point (curvlinops' default, as the
authors used). The inverse uses exact damping: damping is added to lam_G (x) lam_A. The factors
stay factors (``KroneckerEigenBlock``); no dense per-layer basis is formed.
"""

from __future__ import annotations

from influence_bench.curvature import curvlinops_adapter
from influence_bench.entries.base import EigenEntry, register


@register
class KFAC(EigenEntry):
    name = "kfac"
    description = "K-FAC, type-2 (exact GGN) factors, eigenvalues lam_G x lam_A"
    fisher = "type-2"

    def fit(self, problem):
        self.eigen_ = curvlinops_adapter.kfac_curvature(problem.model, problem.x_train, problem.y_train, self.fisher)
        return self


@register
class KFACMC(KFAC):
    name = "kfac-mc"
    description = "K-FAC, Monte-Carlo Fisher factors (one sampled label per point)"
    fisher = "mc"
