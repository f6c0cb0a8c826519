"""``ggn`` and ``block-ggn``: the exact Gauss-Newton matrix of the mean training loss."""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import DenseEntry, register


@register
class GGN(DenseEntry):
    name = "ggn"
    description = "exact GGN of the mean training loss (dense eigendecomposition)"
    dense_what = "the dense GGN"
    uses = frozenset({"ggn"})

    def fit(self, problem):
        self.eigen_ = problem.ggn_eigen  # the run's one eigendecomposition of the GGN, shared with the reference
        return self


def largest_block_reason(problem, what: str) -> str | None:
    """Why per-layer dense blocks cannot be built (a layer above the dense limit), or None."""
    biggest = max(s.stop - s.start for s in problem.layer_slices)
    if biggest <= problem.dense_limit:
        return None
    return (f"needs {what}; its largest layer has {biggest:,} parameters, above the dense limit "
            f"{problem.dense_limit:,} (raise it with --dense-limit)")


@register
class BlockGGN(DenseEntry):
    name = "block-ggn"
    description = "exact GGN, one block per layer (weight and bias together)"
    uses = frozenset({"ggn"})  # its blocks are sliced from the shared GGN below the dense limit

    def skip(self, problem):
        return largest_block_reason(problem, "dense per-layer GGN blocks")

    def fit(self, problem):
        self.eigen_ = EigenCurvature.from_dense_blocks(problem.ggn_layer_blocks, problem.layer_slices)
        return self
