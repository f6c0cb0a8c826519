"""``gradient-cosine``: the normalised gradient dot product, s[j, i] = - cos(g_j, g_i) (a common
baseline; the gradient-similarity scores of Pruthi et al. 2020 and Charpiat et al. 2019).

No curvature and no damping: it computes its own scores (capability ``scores``) and has no inverse.
"""

from __future__ import annotations

import torch

from influence_bench.entries.base import Entry, register


def unit_rows(grads: torch.Tensor) -> torch.Tensor:
    """Each row divided by its norm (a zero row stays zero)."""
    grads = grads.to(torch.float64)
    return grads / grads.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


@register
class GradientCosine(Entry):
    name = "gradient-cosine"
    description = "normalised gradient dot product -cos(g_test, g_train): no curvature"
    capabilities = frozenset({"scores"})
    has_damping = False

    def fit(self, problem):
        self.train_units_ = unit_rows(problem.train_grads)
        return self

    def scores(self, problem, damping=None, queries=None):
        self._check_fitted()
        test = problem.test_grads if queries is None else problem.test_grads[queries]
        return -(unit_rows(test) @ self.train_units_.T)
