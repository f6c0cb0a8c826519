"""The eigen form shared by every curvature entry, and the damped inverse of PROTOCOL.md section 2.

``C = blockdiag_b( Q_b diag(lam_b) Q_b^T )`` over slices of the parameter vector. A dense
curvature is one block; block-GGN, K-FAC and EK-FAC have one block per layer; a diagonal curvature
has ``Q_b = I`` (stored as None). One eigendecomposition serves every damping value:
``(C + damping I)^-1 = Q diag(inv(lam + damping)) Q^T`` where ``inv(t) = 1/t`` for ``t > eps`` and 0
otherwise, so non-positive (negative Hessian) directions are dropped rather than blowing up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_DAMPING = 1e-4
DEFAULT_EPS = 1e-6


def truncated_inverse(eigvals: torch.Tensor, damping: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """1 / (lam + damping) where lam + damping > eps, else 0."""
    shifted = eigvals + damping
    return torch.where(shifted > eps, 1.0 / shifted.clamp_min(eps), torch.zeros_like(shifted))


@dataclass
class EigenCurvature:
    """A curvature in (block) eigen form. eigvecs[b] is [d_b, d_b] (columns are eigenvectors) or None (= I)."""

    slices: list[slice]
    eigvals: list[torch.Tensor]
    eigvecs: list[torch.Tensor | None]
    # optional, per block: (Q_G, Q_A, perm) when eigvecs[b] = kron(Q_G, Q_A)[perm] (K-FAC, EK-FAC);
    # lets metrics work factor by factor instead of with the dense basis
    kron: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] | None = None

    @classmethod
    def from_dense_blocks(cls, blocks: list[torch.Tensor], slices: list[slice]) -> "EigenCurvature":
        """Eigendecompose symmetric blocks (a dense matrix is a single block)."""
        pairs = [torch.linalg.eigh(b) for b in blocks]
        return cls(list(slices), [p.eigenvalues for p in pairs], [p.eigenvectors for p in pairs])

    @classmethod
    def from_dense(cls, matrix: torch.Tensor) -> "EigenCurvature":
        return cls.from_dense_blocks([matrix], [slice(0, matrix.shape[0])])

    @classmethod
    def diagonal(cls, values: torch.Tensor) -> "EigenCurvature":
        return cls([slice(0, values.numel())], [values], [None])

    # -- shape ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return max(s.stop for s in self.slices)

    @property
    def dtype(self) -> torch.dtype:
        return self.eigvals[0].dtype

    @property
    def has_basis(self) -> bool:
        return True

    def all_eigvals(self) -> torch.Tensor:
        return torch.cat(self.eigvals)

    def trace(self) -> float:
        return float(self.all_eigvals().sum())

    # -- products ------------------------------------------------------------------------------
    def project(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """Coordinates in the eigenbasis, block by block: vectors [k, P] -> [k, d_b] each."""
        return [vectors[:, s] if q is None else vectors[:, s] @ q for s, q in zip(self.slices, self.eigvecs)]

    def _map(self, vectors: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros_like(vectors)
        for s, q, w, coords in zip(self.slices, self.eigvecs, weights, self.project(vectors)):
            out[:, s] = coords * w if q is None else (coords * w) @ q.T
        return out

    def matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """C v for each row of vectors [k, P]."""
        return self._map(vectors, self.eigvals)

    def inverse_matvec(self, vectors: torch.Tensor, damping: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
        """(C + damping I)^-1 v (eps-truncated) for each row of vectors [k, P]."""
        return self._map(vectors, [truncated_inverse(lam, damping, eps) for lam in self.eigvals])

    def dense(self) -> torch.Tensor:
        return self.matvec(torch.eye(self.dim, dtype=self.dtype))

    def dense_block(self, b: int) -> torch.Tensor:
        q, lam = self.eigvecs[b], self.eigvals[b]
        return torch.diag(lam) if q is None else (q * lam) @ q.T

    def bilinear_scores(
        self, left: list[torch.Tensor], right: list[torch.Tensor], damping: float, eps: float = DEFAULT_EPS
    ) -> torch.Tensor:
        """-left^T (C + damping I)^-1 right from projected coordinates (``project``): [k_left, k_right]."""
        out = None
        for lam, a, b in zip(self.eigvals, left, right):
            term = (a * truncated_inverse(lam, damping, eps)) @ b.T
            out = term if out is None else out + term
        return -out
