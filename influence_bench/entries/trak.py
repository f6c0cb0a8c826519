"""``trak``: TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale"): random projections of
the per-example gradients, with the Gauss-Newton inverse in the projected space.

With a projection R [k, P] (Rademacher or Gaussian entries of variance 1 / k, fixed seed 0) the
inverse is R^T (R G R^T + damping I)^-1 R, where G is the GGN of the mean training loss
(``R G R^T`` from k GGN-vector products, curvlinops): an orthogonal R with k = P gives the GGN's own
damped inverse. ``checkpoints=all`` averages the scores over the checkpoints of the reference training
(each with its own gradients and GGN), as TRAK ensembles models; it then computes its own scores.
"""

from __future__ import annotations

import torch

from influence_bench.curvature import curvlinops_adapter, exact
from influence_bench.entries.base import Entry, register

PROJECTION_SEED = 0


class _Projected:
    """One model's projected problem: features R g of the train and test gradients, eig of R G R^T."""

    def __init__(self, projection: torch.Tensor, ggn_rows, train: torch.Tensor, test: torch.Tensor):
        kernel = ggn_rows(projection) @ projection.T  # R G R^T: [k, k]
        self.eigvals, self.eigvecs = torch.linalg.eigh((kernel + kernel.T) / 2)
        self.eigvals = self.eigvals.clamp_min(0.0)
        self.train = train @ projection.T  # [n_train, k]
        self.test = test @ projection.T  # [n_test, k]

    def solve(self, features: torch.Tensor, damping: float) -> torch.Tensor:
        """(R G R^T + damping I)^-1 applied to each row of features [q, k]."""
        return ((features @ self.eigvecs) / (self.eigvals + damping)) @ self.eigvecs.T

    def mean_eigenvalue(self) -> float:
        return float(self.eigvals.mean())


@register
class TRAK(Entry):
    name = "trak"
    description = "TRAK: random projections of the gradients, Gauss-Newton inverse in the projected space"
    needs_checkpoints = True  # only used with checkpoints=all
    parameters = {"dim": (1024, 256, 4096), "projection": ("rademacher", "gaussian"), "checkpoints": ("last", "all")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.params["checkpoints"] == "all":
            self.capabilities = frozenset({"scores"})  # an average over models has no single inverse

    def projection_matrix(self, n_params: int) -> torch.Tensor:
        """R [dim, P], entries of variance 1 / dim, from seed 0 (drawn on the CPU: the same R on every device)."""
        k = self.params["dim"]
        generator = torch.Generator().manual_seed(PROJECTION_SEED)
        if self.params["projection"] == "gaussian":
            return torch.randn(k, n_params, generator=generator, dtype=torch.float64, device="cpu") / k ** 0.5
        signs = torch.randint(0, 2, (k, n_params), generator=generator, device="cpu").to(torch.float64)
        return signs.mul_(2).sub_(1).div_(k ** 0.5)  # in place: wide-mlp's R is 830 MB

    def skip(self, problem):
        if self.params["checkpoints"] == "all" and not problem.checkpoints:
            return ("checkpoints=all needs checkpoints of the reference training (problem.checkpoints), which a run "
                    "provides; this problem has none")
        return None

    def fit(self, problem):
        self.projection_ = self.projection_matrix(problem.n_params).to(problem.device)
        if self.params["checkpoints"] == "last":
            self.models_ = [_Projected(self.projection_, problem.ggn_matvec, problem.train_grads, problem.test_grads)]
            return self
        self.models_ = []
        for _, model in problem.checkpoints:
            ggn = curvlinops_adapter.rows_matvec(curvlinops_adapter.ggn_operator(model, problem.x_train, problem.y_train, problem.loss))
            train = exact.per_example_gradients(model, problem.x_train, problem.y_train, problem.loss)
            test = exact.per_example_gradients(model, problem.x_test, problem.y_test, problem.loss)
            self.models_.append(_Projected(self.projection_, ggn, train, test))
        return self

    def inverse(self, vectors, damping=None):
        """R^T (R G R^T + damping I)^-1 R v for each row (the reference model's GGN)."""
        self._check_fitted()
        if self.has("scores"):  # checkpoints=all: an average over models has no single inverse
            return super().inverse(vectors, damping)
        features = vectors.to(torch.float64) @ self.projection_.T
        return self.models_[0].solve(features, self._damping(damping)) @ self.projection_

    def undamped_limit(self, vectors):
        self._check_fitted()
        return (vectors.to(torch.float64) @ self.projection_.T) @ self.projection_

    def scores(self, problem, damping=None, queries=None):
        if self.params["checkpoints"] == "last":
            return super().scores(problem, damping, queries)
        self._check_fitted()
        damping = self._damping(damping)
        total = 0
        for m in self.models_:
            test = m.test if queries is None else m.test[queries]
            total = total - m.solve(test, damping) @ m.train.T
        return total / len(self.models_)

    def mean_eigenvalue(self, problem):
        self._check_fitted()
        return sum(m.mean_eigenvalue() for m in self.models_) / len(self.models_)
