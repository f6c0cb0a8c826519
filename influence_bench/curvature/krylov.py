"""Krylov methods written here because curvlinops does not offer them: Lanczos with the conjugate
gradient iterates of every shift (damping) at once, and the top eigenpairs of an operator.

CG on ``(A + s I) x = b`` builds its iterates in the Krylov space K_m(A, b), which does not depend on
the shift s. Lanczos gives an orthonormal basis Q_m of it with ``Q_m^T A Q_m = T_m`` tridiagonal;
the m-th CG iterate for shift s is ``x_m(s) = ||b|| Q_m (T_m + s I)^-1 e_1`` and its residual norm is
``||b|| beta_m |e_m^T (T_m + s I)^-1 e_1|`` (Paige & Saunders 1975; multi-shift CG, Frommer 2003).
So one Lanczos run per right-hand side serves every damping of the tuned-damping grid, with the
iterates CG would have produced for each (in exact arithmetic; without reorthogonalisation, like
CG's own recurrences, in floating point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

RowsMatvec = Callable[[torch.Tensor], torch.Tensor]  # [k, P] -> [k, P]
EIGSH_TOL = 1e-6  # relative accuracy of the Ritz values (ARPACK's default, 0, means machine precision)


@dataclass
class LanczosRun:
    """Lanczos on k right-hand sides at once. basis: [m, k, P]; alpha, beta: [m, k]; norm: [k]."""

    basis: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor  # beta[j] couples basis[j] and basis[j + 1]
    norm: torch.Tensor

    @property
    def steps(self) -> int:
        return self.alpha.shape[0]

    def split(self) -> list["LanczosRun"]:
        """One run per right-hand side, as views (no copy of the basis)."""
        return [LanczosRun(self.basis[:, j : j + 1], self.alpha[:, j : j + 1], self.beta[:, j : j + 1], self.norm[j : j + 1])
                for j in range(self.alpha.shape[1])]

    @property
    def nbytes(self) -> int:
        return self.basis.numel() * self.basis.element_size()

    def tridiagonal(self, shift: float) -> torch.Tensor:
        """T_m + shift I for each right-hand side: [k, m, m]."""
        k, m = self.alpha.shape[1], self.steps
        t = torch.diag_embed(self.alpha.T + shift)
        off = self.beta.T[:, : m - 1]
        return t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1) if m > 1 else t.reshape(k, 1, 1)

    def solve(self, shift: float, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
        """CG's iterate for ``(A + shift I) x = b`` at the first step whose relative residual is below
        ``tol`` (else the last): solutions [k, P] and the iterations used [k]."""
        k, m = self.alpha.shape[1], self.steps
        full = self.tridiagonal(shift)
        device = self.alpha.device
        used = torch.full((k,), m, dtype=torch.long, device=device)
        coefficients = torch.zeros(k, m, dtype=self.alpha.dtype, device=device)
        done = torch.zeros(k, dtype=torch.bool, device=device)
        for j in range(1, m + 1):
            e1 = torch.zeros(k, j, 1, dtype=self.alpha.dtype, device=device)
            e1[:, 0] = 1.0
            y = torch.linalg.solve(full[:, :j, :j], e1)[..., 0]  # [k, j]
            residual = (self.beta[j - 1] * y[:, -1]).abs()  # relative to ||b||
            newly = ~done & ((residual < tol) | (j == m))
            coefficients[newly, :j] = y[newly]
            used[newly] = j
            done |= newly
            if bool(done.all()):
                break
        weights = coefficients * self.norm[:, None]  # [k, m]
        x = torch.zeros(k, self.basis.shape[2], dtype=weights.dtype, device=device)
        for j in range(m):  # one step at a time: a float32 basis is never copied whole to float64
            x += weights[:, j, None] * self.basis[j]
        return x, used


def lanczos(matvec: RowsMatvec, rhs: torch.Tensor, steps: int, basis_dtype: torch.dtype | None = None) -> LanczosRun:
    """``steps`` Lanczos steps on each row of rhs [k, P] (no reorthogonalisation, as in CG). The
    recurrence runs in rhs's dtype; the basis is kept in ``basis_dtype`` (default: the same), written
    into one preallocated [steps, k, P] tensor."""
    k, dim = rhs.shape
    norm = torch.linalg.norm(rhs, dim=1)
    q = rhs / norm.clamp_min(1e-300)[:, None]
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(k, dtype=rhs.dtype, device=rhs.device)
    basis = torch.empty(steps, k, dim, dtype=basis_dtype or rhs.dtype, device=rhs.device)
    alphas, betas = [], []
    for step in range(steps):
        basis[step] = q
        w = matvec(q) - beta_prev[:, None] * q_prev
        alpha = (w * q).sum(1)
        w = w - alpha[:, None] * q
        beta = torch.linalg.norm(w, dim=1)
        breakdown = beta <= 1e-14 * alpha.abs().clamp_min(1e-300)  # the Krylov space is exhausted: exact
        alphas.append(alpha)
        betas.append(torch.where(breakdown, torch.zeros_like(beta), beta))
        q_prev, q = q, torch.where(breakdown[:, None], torch.zeros_like(w), w / beta.clamp_min(1e-300)[:, None])
        beta_prev = betas[-1]
    return LanczosRun(basis, torch.stack(alphas), torch.stack(betas), norm)


def top_eigenpairs(matvec: RowsMatvec, dim: int, k: int, seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenvalues [k] (descending) and orthonormal eigenvectors [P, k] of a symmetric
    operator given as ``[m, P] -> [m, P]``: ARPACK's implicitly restarted Lanczos (scipy ``eigsh``)
    from a starting vector drawn from ``seed``; for k >= P, a dense eigendecomposition of the
    operator applied to the identity (ARPACK cannot return every eigenpair). ``matvec`` runs on
    ``device``; ARPACK's vectors cross to it and back, and the eigenpairs are returned there."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    if k >= dim:
        eye = torch.eye(dim, dtype=torch.float64, device=device)
        dense = torch.cat([matvec(eye[i : i + 256]) for i in range(0, dim, 256)])
        eigvals, eigvecs = torch.linalg.eigh((dense + dense.T) / 2)
    else:
        def apply(v: np.ndarray) -> np.ndarray:
            row = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(1, dim).copy(), device=device)
            return matvec(row)[0].cpu().numpy()

        operator = LinearOperator((dim, dim), matvec=apply, dtype=np.float64)
        start = np.random.default_rng(seed).standard_normal(dim)
        found_vals, found_vecs = eigsh(operator, k=k, which="LA", v0=start, tol=EIGSH_TOL)
        eigvals = torch.from_numpy(found_vals).to(device)
        eigvecs = torch.from_numpy(np.ascontiguousarray(found_vecs)).to(device)
    order = torch.argsort(eigvals, descending=True)
    return eigvals[order].to(torch.float64), eigvecs[:, order].to(torch.float64).contiguous()
