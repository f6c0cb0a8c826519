"""``ggn`` and ``block-ggn``: the exact Gauss-Newton matrix of the mean training loss.

``block-ggn`` takes ``blocks``: one block per ``layer`` (weight and bias together, PROTOCOL.md
section 6, the default) or per ``tensor`` (weight and bias apart, the authors' block-diagonal).
"""

from __future__ import annotations

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import DenseEntry, register
from influence_bench.problem import BLOCK_KINDS


@register
class GGN(DenseEntry):
    name = "ggn"
    description = "exact GGN of the mean training loss (dense eigendecomposition)"
    dense_what = "the dense GGN"
    uses = frozenset({"ggn"})

    def fit(self, problem):
        self.eigen_ = problem.ggn_eigen  # the run's one eigendecomposition of the GGN, shared with the reference
        return self


def largest_block_reason(problem, what: str, by: str = "layer") -> str | None:
    """Why dense diagonal blocks cannot be built (a block above the dense limit), or None."""
    biggest = max(s.stop - s.start for s in problem.block_slices(by))
    if biggest <= problem.dense_limit:
        return None
    return (f"needs {what}; its largest block has {biggest:,} parameters, above the dense limit "
            f"{problem.dense_limit:,} (raise it with --dense-limit)")


@register
class BlockGGN(DenseEntry):
    name = "block-ggn"
    description = "exact GGN, one block per layer (or per tensor: blocks=tensor)"
    uses = frozenset({"ggn"})  # its blocks are sliced from the shared GGN below the dense limit
    parameters = {"blocks": BLOCK_KINDS}

    def skip(self, problem):
        return largest_block_reason(problem, "dense diagonal GGN blocks", self.params["blocks"])

    def fit(self, problem):
        by = self.params["blocks"]
        self.eigen_ = EigenCurvature.from_dense_blocks(problem.ggn_blocks(by), problem.block_slices(by))
        return self
