"""A minimal outside entry for influence_bench: the empirical Fisher, one block per layer.

The curvature of each layer is the mean outer product of the per-example loss gradients, restricted to
that layer's parameters (weight and bias together): the empirical-Fisher relative of the suite's
``block-ggn``. It declares an eigen form, so influence_bench derives its damped inverse, its curvature
operator and every curvature metric from it; the entry only says what its curvature is, from the
per-example gradients the harness computed once for every entry.
"""

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries import EigenEntry


class BlockEmpiricalFisher(EigenEntry):
    name = "block-empirical-fisher"
    description = "the empirical Fisher (mean outer product of per-example gradients), one block per layer"

    def fit(self, problem):
        grads = problem.train_grads  # [n_train, P]
        blocks = [grads[:, s].T @ grads[:, s] / problem.n_train for s in problem.layer_slices]
        self.eigen_ = EigenCurvature.from_dense_blocks(blocks, problem.layer_slices)
        return self
