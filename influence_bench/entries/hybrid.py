"""``kfac-eigvals-in-block-basis``: the exact block-GGN eigenbasis carrying K-FAC's eigenvalues,
matched by rank (PROTOCOL.md section 6). With EK-FAC it separates the two changes from block-GGN
to K-FAC (basis, eigenvalues) in both orders."""

from __future__ import annotations

import torch

from influence_bench.curvature import curvlinops_adapter
from influence_bench.curvature.eigen import DenseEigenBlock, EigenCurvature
from influence_bench.entries.base import DenseEntry, register
from influence_bench.entries.ggn import largest_block_reason


@register
class KFACEigvalsInBlockBasis(DenseEntry):
    name = "kfac-eigvals-in-block-basis"
    description = "block-GGN eigenbasis with K-FAC (type-2) eigenvalues matched by rank"
    uses = frozenset({"ggn"})

    def skip(self, problem):
        return largest_block_reason(problem, "dense per-layer GGN blocks")

    def fit(self, problem):
        block = EigenCurvature.from_dense_blocks(problem.ggn_layer_blocks, problem.layer_slices)
        kfac = curvlinops_adapter.kfac_curvature(problem.model, problem.x_train, problem.y_train, problem.loss, "type-2")
        # eigh returns ascending eigenvalues, so the i-th smallest K-FAC eigenvalue goes to the
        # eigenvector of the i-th smallest block-GGN eigenvalue
        blocks = [DenseEigenBlock(b.eigvecs, torch.sort(k.eigvals).values) for b, k in zip(block.blocks, kfac.blocks)]
        self.eigen_ = EigenCurvature(block.slices, blocks)
        return self
