"""``identity``: the gradient dot product, s[j, i] = - g_j^T g_i (no curvature: the inverse is I)."""

from __future__ import annotations

import torch

from influence_bench.entries.base import Entry, register


@register
class Identity(Entry):
    name = "identity"
    description = "gradient dot product: no curvature (C^-1 replaced by I)"
    has_damping = False

    def fit(self, problem):
        self.fitted_ = True
        return self

    def inverse(self, vectors, damping=None):
        self._check_fitted()
        return vectors.to(torch.float64).clone()
