"""A minimal outside entry for influence_bench: the curvature ``c I`` with ``c`` the mean of the exact
GGN's diagonal (the trace of the GGN over P), so that the damped inverse is ``v / (c + damping)``.

It declares an eigen form, so influence_bench derives its inverse, its curvature operator and every
curvature metric from it; the entry only has to say what its curvature is.
"""

import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries import EigenEntry


class ScaledIdentity(EigenEntry):
    name = "scaled-identity"
    description = "the GGN's mean diagonal times I (an outside entry, examples/my-entry)"

    def fit(self, problem):
        mean = problem.ggn_diagonal.mean()
        self.eigen_ = EigenCurvature.diagonal(mean * torch.ones(problem.n_params, dtype=torch.float64))
        return self
