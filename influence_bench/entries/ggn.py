"""``ggn`` and ``block-ggn``: the exact Gauss-Newton matrix of the mean training loss."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import Entry, register


@register
class GGN(Entry):
    name = "ggn"
    description = "exact GGN of the mean training loss (dense eigendecomposition)"
    curvature_kind = "dense"

    def fit(self, problem):
        self.curvature_ = problem.ggn_eigen  # shared with the fidelity metrics
        return self


@register
class BlockGGN(Entry):
    name = "block-ggn"
    description = "exact GGN, one block per layer (weight and bias together)"
    curvature_kind = "layer-blocks"

    def fit(self, problem):
        self.curvature_ = EigenCurvature.from_dense_blocks(problem.ggn_layer_blocks, problem.layer_slices)
        return self
