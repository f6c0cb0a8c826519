"""``datainf``: DataInf (Kwon et al. 2024, "DataInf: Efficiently Estimating Data Influence in
LoRA-tuned LLMs and Diffusion Models"): a closed-form inverse per layer.

Per block l (a layer, or one parameter tensor), the damped empirical Fisher's inverse is replaced by
the average of the per-example Sherman-Morrison inverses (the average and the inverse swapped):

    (G_l + damping I)^-1 ~ (1 / n) sum_i (1 / damping) (I - g_il g_il^T / (damping + |g_il|^2)).

It is no inverse of one curvature (the swap is the approximation), so it declares no curvature;
the tuned damping grid is scaled by the empirical Fisher's mean eigenvalue, mean_i |g_i|^2 / P.
"""

from __future__ import annotations

import torch

from influence_bench.entries.base import Entry, register
from influence_bench.problem import BLOCK_KINDS


@register
class DataInf(Entry):
    name = "datainf"
    description = "DataInf: per-layer average of per-example Sherman-Morrison inverses (empirical Fisher)"
    parameters = {"blocks": BLOCK_KINDS}

    def fit(self, problem):
        self.grads_ = problem.train_grads.to(torch.float64)
        self.slices_ = problem.block_slices(self.params["blocks"])
        self.squared_norms_ = [(self.grads_[:, s] ** 2).sum(1) for s in self.slices_]  # [n] per block
        return self

    def inverse(self, vectors, damping=None):
        self._check_fitted()
        damping = self._damping(damping)
        vectors = vectors.to(torch.float64)
        out = torch.empty_like(vectors)
        n = self.grads_.shape[0]
        for block, squared in zip(self.slices_, self.squared_norms_):
            g = self.grads_[:, block]  # [n, p]
            weights = (vectors[:, block] @ g.T) / (damping + squared)  # [k, n]
            out[:, block] = (vectors[:, block] - weights @ g / n) / damping
        return out

    def mean_eigenvalue(self, problem):
        self._check_fitted()
        return float(sum(s.sum() for s in self.squared_norms_) / (self.grads_.shape[0] * self.grads_.shape[1]))
