"""``identity``: the gradient dot product, s[j, i] = - g_j^T g_i (no curvature)."""

from __future__ import annotations

from influence_bench.entries.base import Entry, register


@register
class Identity(Entry):
    name = "identity"
    description = "gradient dot product: no curvature (C^-1 replaced by I)"
    curvature_kind = "none"

    def fit(self, problem):
        self.curvature_ = None
        return self

    def scores(self, problem, damping=None):
        self._check_fitted()
        return -problem.test_grads @ problem.train_grads.T

    def mean_eigenvalue(self) -> float:
        return 1.0
