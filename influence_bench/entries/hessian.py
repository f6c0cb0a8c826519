"""``hessian`` and ``block-hessian``: the exact Hessian of the mean training loss, whole or per layer."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import Entry, register


@register
class Hessian(Entry):
    name = "hessian"
    description = "exact Hessian of the mean training loss (dense eigendecomposition)"
    curvature_kind = "dense"

    def fit(self, problem):
        self.curvature_ = EigenCurvature.from_dense(problem.hessian)
        return self


@register
class BlockHessian(Entry):
    name = "block-hessian"
    description = "exact Hessian, one block per layer (weight and bias together)"
    curvature_kind = "layer-blocks"

    def fit(self, problem):
        self.curvature_ = EigenCurvature.from_dense_blocks(problem.layer_blocks(problem.hessian), problem.layer_slices)
        return self
