"""``diag-ggn``: the exact diagonal of the GGN."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import Entry, register


@register
class DiagGGN(Entry):
    name = "diag-ggn"
    description = "exact diagonal of the GGN"
    curvature_kind = "diagonal"

    def fit(self, problem):
        self.curvature_ = EigenCurvature.diagonal(problem.ggn_diagonal)
        return self
