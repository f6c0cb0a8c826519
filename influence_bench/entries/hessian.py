"""``hessian`` and ``block-hessian``: the exact Hessian of the mean training loss, whole or per block.

``negative`` is the treatment of eigenvalues lam with lam + damping at or below eps (the authors'
three): ``zero`` gives them zero inverse (PROTOCOL.md section 2, the default), ``abs`` uses |lam|
(the curvature is |H|), ``keep`` inverts lam + damping whatever its sign (only |lam + damping| <= eps
is dropped). ``block-hessian`` also takes ``blocks`` (``layer`` or ``tensor``).
"""

from __future__ import annotations

import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import DenseEntry, register
from influence_bench.problem import BLOCK_KINDS

NEGATIVE = ("zero", "abs", "keep")


def kept_inverse(eigvals: torch.Tensor, damping: float, eps: float) -> torch.Tensor:
    """1 / (lam + damping) of either sign; 0 only where |lam + damping| <= eps."""
    shifted = eigvals + damping
    safe = torch.where(shifted.abs() > eps, shifted, torch.ones_like(shifted))
    return torch.where(shifted.abs() > eps, 1.0 / safe, torch.zeros_like(shifted))


class HessianEntry(DenseEntry):
    """The negative-eigenvalue treatments shared by the whole and the block Hessian."""

    uses = frozenset({"hessian"})
    parameters = {"negative": NEGATIVE}

    def decompose(self, problem) -> EigenCurvature:
        raise NotImplementedError

    def fit(self, problem):
        eigen = self.decompose(problem)
        if self.params["negative"] == "abs":
            for block in eigen.blocks:
                block.eigvals = block.eigvals.abs()
        self.eigen_ = eigen
        return self

    def inverse(self, vectors, damping=None):
        if self.params["negative"] != "keep":
            return super().inverse(vectors, damping)
        eigen, lam = self.eigen_form(), self._damping(damping)
        return eigen.apply(vectors.to(torch.float64), [kept_inverse(b.eigvals, lam, self.eps) for b in eigen.blocks])

    @property
    def inverse_is_exact(self) -> bool:
        return self.params["negative"] != "keep"

    @property
    def known_failures(self) -> dict[str, str]:
        """The conformance kit's checks this point fails: its curvature is H itself (negative=zero or keep),
        indefinite on a non-convex loss; with negative=abs it is |H|, positive semi-definite."""
        if self.params["negative"] == "abs":
            return {}
        return {"curvature_is_symmetric_psd": (
            "the exact Hessian of a non-convex loss, and each of its diagonal blocks, is indefinite (the tiny "
            "problem's has negative eigenvalues) and the eigen form keeps them: negative=zero drops them only in "
            "the inverse, negative=keep inverts them")}


@register
class Hessian(HessianEntry):
    name = "hessian"
    description = "exact Hessian of the mean training loss (dense eigendecomposition)"
    dense_what = "the dense Hessian"

    def decompose(self, problem):
        return EigenCurvature.from_dense(problem.hessian)


@register
class BlockHessian(HessianEntry):
    name = "block-hessian"
    description = "exact Hessian, one block per layer (or per tensor: blocks=tensor)"
    dense_what = "the dense Hessian (its blocks are sliced from it)"
    parameters = {"blocks": BLOCK_KINDS, **HessianEntry.parameters}

    def decompose(self, problem):
        by = self.params["blocks"]
        return EigenCurvature.from_dense_blocks(problem.layer_blocks(problem.hessian, by), problem.block_slices(by))
