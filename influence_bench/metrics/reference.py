"""The fidelity reference: the exact GGN's quantities that the curvature metrics compare against.

Below the dense limit they are exact (the dense GGN and its eigendecomposition). Above it no dense
G exists: the inverse products come from the GGN's n C-dimensional dual (``dual_solve``: Woodbury with an
exact-operator refinement, where n C is well below P) or else a tight-tolerance CG solve with the exact GGN-vector
product on a fixed subset of test queries, the spectrum and top eigenvectors from Lanczos (ARPACK),
and ||G||_F^2 from Hutchinson; ``exact`` is False and every metric computed from it says so.
Built once per run (in a process of its own when the run isolates entries) and saved to a file that
each entry's process maps into memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from influence_bench.curvature.eigen import DEFAULT_EPS, truncated_inverse
from influence_bench.problem import InfluenceProblem

TOP_K = 100  # eigenvectors kept for topk_overlap; Lanczos eigenvalues above the dense limit
ESTIMATE_QUERIES = 32  # test queries for ihvp_err and fidelity above the dense limit
ESTIMATE_SEED = 0
CG_TOL = 1e-10  # relative residual of the reference solve above the dense limit
CG_MAX_ITER = 2000
HUTCHINSON_MATVECS = 50


@dataclass
class GGNReference:
    exact: bool
    damping: float
    eps: float
    queries: torch.Tensor  # [q] test-point indices of ``ihvp`` and ``scores``
    ihvp: torch.Tensor  # [q, P]: (G + damping I)^-1 g_j
    scores: torch.Tensor  # [q, n_train]: the exact GGN's influence scores
    eigvals: torch.Tensor  # all P eigenvalues (exact) or the top K (estimated), descending
    top_eigvecs: torch.Tensor  # [P, K], columns by descending eigenvalue
    fro_sq: float  # ||G||_F^2
    layer_eigvals: list[torch.Tensor] | None = None  # eigenvalues of each layer's block (exact only)
    ggn: torch.Tensor | None = None  # the dense G (exact only)
    ggn_eigvecs: torch.Tensor | None = None  # all eigenvectors of G, columns by ascending eigenvalue (exact only)

    def save(self, path: Path) -> None:
        """On the CPU, whatever device it was built on (``load`` puts it where it is needed)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict would deep-copy on the device
        torch.save(_on(fields, "cpu"), path)

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> "GGNReference":
        """The reference saved at ``path``, its tensors on ``device`` (on the CPU: mapped from the file)."""
        return cls(**_on(torch.load(path, weights_only=True, mmap=True), device))


def _on(fields: dict, device: str | torch.device) -> dict:
    """The reference's fields with every tensor (and every tensor of a list) on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else
            [t.to(device) for t in v] if isinstance(v, list) else v for k, v in fields.items()}


def estimate_queries(n_test: int, k: int = ESTIMATE_QUERIES, seed: int = ESTIMATE_SEED,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """The fixed subset of test queries used above the dense limit (sorted indices, on ``device``)."""
    chosen = np.random.default_rng(seed).permutation(n_test)[: min(k, n_test)]
    return torch.as_tensor(np.sort(chosen), device=device)


def lanczos_top(matvec_rows, dim: int, k: int, seed: int = ESTIMATE_SEED,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs (descending) of a symmetric operator by Lanczos (ARPACK); k < P; the operator
    runs on ``device``."""
    from influence_bench.curvature.krylov import top_eigenpairs

    return top_eigenpairs(matvec_rows, dim, min(k, dim - 1), seed, device)


def build_reference(problem: InfluenceProblem, damping: float, eps: float = DEFAULT_EPS) -> GGNReference:
    """Exact below the problem's dense limit, estimated above it."""
    return exact_reference(problem, damping, eps) if problem.dense_allowed else estimated_reference(problem, damping, eps)


def exact_reference(problem: InfluenceProblem, damping: float, eps: float = DEFAULT_EPS) -> GGNReference:
    ggn = problem.ggn
    block = problem.ggn_eigen.blocks[0]
    lam, q = block.eigvals, block.eigvecs
    queries = torch.arange(problem.n_test, device=problem.device)
    ihvp = ((problem.test_grads @ q) * truncated_inverse(lam, damping, eps)) @ q.T
    k = min(TOP_K, problem.n_params)
    layer_eigvals = [torch.linalg.eigvalsh(ggn[s, s]) for s in problem.layer_slices]
    return GGNReference(True, damping, eps, queries, ihvp, -ihvp @ problem.train_grads.T, lam.flip(0),
                        q[:, -k:].flip(1).contiguous(), float(ggn.square().sum()), layer_eigvals, ggn, q)


DUAL_BYTES = 4 * 2**30  # the largest float32 square root B [n C, P] of the GGN the dual solve keeps in memory
DUAL_MAX_STEPS = 30


def dual_solve(problem: InfluenceProblem, rows: torch.Tensor, damping: float, tol: float = CG_TOL,
               max_steps: int = DUAL_MAX_STEPS) -> tuple[torch.Tensor, float, int]:
    """(G + damping I)^-1 applied to rows [k, P] through the GGN's n C-dimensional dual, for P >> n C.

    G = (1/n) B^T B with B = [S_i^T J_i]_i ([n C, P]), so by Woodbury
    (G + lam I)^-1 = (1/lam) (I - B^T (n lam I + B B^T)^-1 B): one Gram matrix B B^T and one Cholesky
    factor instead of thousands of CG iterations. B and its Gram matrix are kept in float32 (half the
    memory and time); the float32 inverse is then the preconditioner of an iterative refinement whose
    residuals use the exact float64 GGN operator, until the relative residual of every row is below
    ``tol``. Returns the solutions, the largest relative residual and the refinement steps.
    """
    from influence_bench.curvature import exact

    n = problem.n_train
    b = torch.cat([chunk.to(torch.float32) for chunk in
                   exact._ggn_sqrt_rows(problem.model, problem.x_train, problem.loss, 64)])
    gram = (b @ b.T).to(torch.float64)
    gram.diagonal().add_(n * damping)
    factor = torch.linalg.cholesky(gram)
    del gram

    def approximate_inverse(r: torch.Tensor) -> torch.Tensor:
        dual = torch.cholesky_solve((b @ r.to(torch.float32).T).to(torch.float64), factor)  # [n C, k]
        return (r - (b.T @ dual.to(torch.float32)).T.to(torch.float64)) / damping

    matvec = problem.ggn_matvec
    x = torch.zeros_like(rows)
    norms = torch.linalg.norm(rows, dim=1)
    residual, worst = rows.clone(), 1.0
    for step in range(1, max_steps + 1):
        x += approximate_inverse(residual)
        residual = rows - (matvec(x) + damping * x)
        worst = float((torch.linalg.norm(residual, dim=1) / norms).max())
        if worst < tol:
            break
    return x, worst, step


def dual_fits(problem: InfluenceProblem, n_outputs: int) -> bool:
    """Is the dual solve cheaper here (n C well below P) and within its memory?"""
    rows = problem.n_train * n_outputs
    return rows * 4 < problem.n_params and rows * problem.n_params * 4 <= DUAL_BYTES


def estimated_reference(problem: InfluenceProblem, damping: float, eps: float = DEFAULT_EPS) -> GGNReference:
    from influence_bench.curvature import curvlinops_adapter

    queries = estimate_queries(problem.n_test, device=problem.device)
    with torch.no_grad():
        n_outputs = problem.model(problem.x_train[:1]).shape[-1]
    if dual_fits(problem, n_outputs):
        ihvp, _, _ = dual_solve(problem, problem.test_grads[queries], damping)
    else:
        ihvp, _ = curvlinops_adapter.cg_solve(problem.ggn_operator, problem.test_grads[queries], damping, CG_TOL,
                                              CG_MAX_ITER)
    lam, vecs = lanczos_top(problem.ggn_matvec, problem.n_params, TOP_K, device=problem.device)
    fro_sq = curvlinops_adapter.squared_fro_estimate(problem.ggn_operator, HUTCHINSON_MATVECS)
    return GGNReference(False, damping, eps, queries, ihvp, -ihvp @ problem.train_grads.T, lam, vecs, fro_sq)
