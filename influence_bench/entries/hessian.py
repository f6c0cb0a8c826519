"""``hessian`` and ``block-hessian``: the exact Hessian of the mean training loss, whole or per layer."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import DenseEntry, register


@register
class Hessian(DenseEntry):
    name = "hessian"
    description = "exact Hessian of the mean training loss (dense eigendecomposition)"
    uses = frozenset({"hessian"})
    dense_what = "the dense Hessian"

    def fit(self, problem):
        self.eigen_ = EigenCurvature.from_dense(problem.hessian)
        return self


@register
class BlockHessian(DenseEntry):
    name = "block-hessian"
    description = "exact Hessian, one block per layer (weight and bias together)"
    uses = frozenset({"hessian"})
    dense_what = "the dense Hessian (its layer blocks are sliced from it)"

    def fit(self, problem):
        self.eigen_ = EigenCurvature.from_dense_blocks(problem.layer_blocks(problem.hessian), problem.layer_slices)
        return self
