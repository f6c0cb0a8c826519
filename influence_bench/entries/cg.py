"""``cg``: conjugate gradients on (GGN + damping I), matrix-free."""

from __future__ import annotations

import hashlib

import torch

from influence_bench.curvature import curvlinops_adapter
from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS
from influence_bench.curvature.krylov import LanczosRun, lanczos
from influence_bench.entries.base import Entry, register

SOLVERS = ("lanczos", "curvlinops")
FLOAT64_BASIS_BYTES = 2**30  # a call's Lanczos basis above this is kept in float32 (wide-mlp: 200 rows x 30 steps x 101,386)
CACHE_BYTES = 3 * 2**30  # the bases kept for later dampings; beyond this the oldest are dropped


def row_key(row: torch.Tensor) -> str:
    return hashlib.sha1(row.detach().to(torch.float64).cpu().contiguous().numpy().tobytes()).hexdigest()


@register
class CG(Entry):
    """(G + damping I)^-1 v by conjugate gradients with exact GGN-vector products (Koh & Liang 2017,
    after Martens 2010); C is the exact GGN of the mean training loss, never formed.

    CG stops for each vector when its relative residual is below ``tol``, or after ``max_iter``
    iterations. ``solver="lanczos"`` (default) runs Lanczos once per vector and reads off the CG
    iterate of every damping from it (``curvature.krylov``): the tuned-damping grid then costs no
    further GGN products. ``solver="curvlinops"`` runs curvlinops' ``CGInverseLinearOperator`` anew
    for each damping (GPyTorch's batched CG, which stops on the mean residual of a batch). On
    digits-mlp one GGN product of 64 vectors takes about 0.6 s on one core, so the default
    ``max_iter=30`` keeps a standard run's 180 test vectors near a minute; at the fixed damping 1e-4
    (condition number ~5e3) CG has not converged by then, and the iterations used say so.
    """

    name = "cg"
    description = "conjugate gradients on the exact GGN + damping (matrix-free; Lanczos shared by all dampings)"
    capabilities = frozenset({"operator"})
    inverse_rtol = 1e-3  # with the default 30 iterations: 1.6e-4 on the tiny problem at damping 1e-2 (converged: ~1e-6)

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS,
                 max_iter: int = 30, tol: float = 1e-6, solver: str = "lanczos"):
        super().__init__(damping, eps)
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver

    def get_params(self):
        return {**super().get_params(), "max_iter": self.max_iter, "tol": self.tol, "solver": self.solver}

    def fit(self, problem):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; use one of {', '.join(SOLVERS)}")
        self.operator_ = problem.ggn_operator
        self.ggn_of_ = (problem.model, problem.x_train, problem.y_train, problem.loss)  # what rebuilds operator_ after unpickling
        self.iterations_ = []  # the largest CG iteration count of each inverse call
        self.krylov_ = {}  # the row keys of one call -> their Lanczos run (solver "lanczos")
        return self

    def __getstate__(self):
        """Without curvlinops' operator, whose closures do not pickle: ``__setstate__`` rebuilds it."""
        return {name: value for name, value in self.__dict__.items() if name != "operator_"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "ggn_of_" in state:
            self.operator_ = curvlinops_adapter.ggn_operator(*state["ggn_of_"])

    def inverse(self, vectors, damping=None):
        self._check_fitted()
        rows, damping = vectors.to(torch.float64), self._damping(damping)
        if self.solver == "curvlinops":
            solution, iterations = curvlinops_adapter.cg_solve(self.operator_, rows, damping, self.tol, self.max_iter)
            self.iterations_.append(iterations)
            return solution
        solution, used = self._krylov(rows).solve(damping, self.tol)
        self.iterations_.append(int(used.max()))
        return solution

    def _krylov(self, rows: torch.Tensor) -> LanczosRun:
        """The Lanczos runs of these rows: from earlier calls where they were seen, else run now.

        A basis of ``max_iter`` x rows x P float64 values above ``FLOAT64_BASIS_BYTES`` is stored in
        float32 (the recurrence stays float64; the iterates then carry a relative error near 1e-7, far
        below ``tol`` and ``inverse_rtol``); the cache keeps at most ``CACHE_BYTES`` of bases."""
        keys = [row_key(r) for r in rows]
        if tuple(keys) in self.krylov_:  # the same rows again (the damping grid): no copy
            return self.krylov_[tuple(keys)]
        cached = {key: run for batch, run in self.krylov_.items() for key, run in zip(batch, run.split())}
        new = [i for i, key in enumerate(keys) if key not in cached]
        if new:
            dtype = torch.float64 if self.max_iter * len(new) * rows.shape[1] * 8 <= FLOAT64_BASIS_BYTES else torch.float32
            run = lanczos(curvlinops_adapter.rows_matvec(self.operator_), rows[new], self.max_iter, dtype)
            cached.update(zip((keys[i] for i in new), run.split()))
            self._remember(tuple(keys[i] for i in new), run)
        if len(new) == len(keys):
            return run
        runs = [cached[key] for key in keys]
        return LanczosRun(torch.cat([r.basis for r in runs], 1), torch.cat([r.alpha for r in runs], 1),
                          torch.cat([r.beta for r in runs], 1), torch.cat([r.norm for r in runs]))

    def _remember(self, keys: tuple, run: LanczosRun) -> None:
        while self.krylov_ and sum(r.nbytes for r in self.krylov_.values()) + run.nbytes > CACHE_BYTES:
            del self.krylov_[next(iter(self.krylov_))]  # the oldest first
        if run.nbytes <= CACHE_BYTES:
            self.krylov_[keys] = run

    def curvature_matvec(self, vectors):
        self._check_fitted()
        return curvlinops_adapter.rows_matvec(self.operator_)(vectors.to(torch.float64))

    def diagnostics(self):
        if not getattr(self, "iterations_", None):
            return {}
        return {"cg_iterations_last": float(self.iterations_[-1]), "cg_iterations_max": float(max(self.iterations_))}
