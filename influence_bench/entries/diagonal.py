"""``diag-ggn``: the exact diagonal of the GGN."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import EigenEntry, register


@register
class DiagGGN(EigenEntry):
    name = "diag-ggn"
    description = "exact diagonal of the GGN"
    uses = frozenset({"ggn"})

    def fit(self, problem):
        self.eigen_ = EigenCurvature.diagonal(problem.ggn_diagonal)
        return self
