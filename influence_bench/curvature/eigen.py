"""The eigen form a curvature may declare, and the damped inverse of PROTOCOL.md section 2.

``C = blockdiag_b( Q_b diag(lam_b) Q_b^T )`` over slices of the parameter vector. Each block keeps
its structure: a dense eigenbasis (``DenseEigenBlock``), the identity (``DiagonalBlock``), a
Kronecker product ``Q_G (x) Q_A`` kept as its two factors (``KroneckerEigenBlock``, K-FAC and
EK-FAC: never expanded to a dense per-layer basis), or a low-rank basis whose complement has
eigenvalue 0 (``LowRankEigenBlock``, Arnoldi). One eigendecomposition serves every damping:
``(C + damping I)^-1 = Q diag(inv(lam + damping)) Q^T`` with ``inv(t) = 1/t`` for ``t > eps`` and 0
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


class EigenBlock:
    """One diagonal block ``Q diag(lam) Q^T`` of size d. ``project`` gives coordinates in the basis."""

    eigvals: torch.Tensor  # [d] (all d eigenvalues, in the order of ``project``'s coordinates)

    @property
    def dim(self) -> int:
        return self.eigvals.numel()

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Q^T v for each row: [k, d] -> [k, d]."""
        raise NotImplementedError

    def unproject(self, coords: torch.Tensor) -> torch.Tensor:
        """Q c for each row: [k, d] -> [k, d]."""
        raise NotImplementedError

    def map(self, v: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Q diag(weights) Q^T v for each row of v [k, d]."""
        return self.unproject(self.project(v) * weights)

    def basis(self) -> torch.Tensor:
        """The dense eigenbasis [d, d] (columns); for tests and small blocks only."""
        return self.unproject(torch.eye(self.dim, dtype=self.eigvals.dtype, device=self.eigvals.device)).T

    def basis_product(self, g: torch.Tensor) -> torch.Tensor:
        """Q^T G Q for a dense [d, d] matrix G."""
        return self.project(self.project(g).T)

    def eigvec(self, i: int) -> torch.Tensor:
        """The i-th eigenvector (the one of ``eigvals[i]``): [d]."""
        unit = torch.zeros(1, self.dim, dtype=self.eigvals.dtype, device=self.eigvals.device)
        unit[0, i] = 1.0
        return self.unproject(unit)[0]


@dataclass
class DenseEigenBlock(EigenBlock):
    eigvecs: torch.Tensor  # [d, d], columns
    eigvals: torch.Tensor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> "DenseEigenBlock":
        lam, q = torch.linalg.eigh(matrix)
        return cls(q, lam)

    def project(self, v):
        return v @ self.eigvecs

    def unproject(self, coords):
        return coords @ self.eigvecs.T

    def basis(self):
        return self.eigvecs

    def basis_product(self, g):
        return self.eigvecs.T @ g @ self.eigvecs

    def eigvec(self, i):
        return self.eigvecs[:, i]


@dataclass
class DiagonalBlock(EigenBlock):
    eigvals: torch.Tensor

    def project(self, v):
        return v

    def unproject(self, coords):
        return coords

    def basis_product(self, g):
        return g


@dataclass
class KroneckerEigenBlock(EigenBlock):
    """A layer's block in the Kronecker eigenbasis ``Q_G (x) Q_A``, kept as the two factors.

    The layer's parameters are ordered ``[vec(W) row-major ([d_out, d_in]); b]`` (the suite's order);
    the Kronecker structure acts on the joint matrix ``[W | b]`` of shape ``[d_out, d_in + 1]`` (or
    ``W`` alone without a bias). Coordinates and ``eigvals`` are ``[d_out, d_a]`` flattened row-major,
    G-index major (``eigvals = lam_G (x) lam_A`` for K-FAC, ``diag(Q^T G Q)`` for EK-FAC).
    """

    q_g: torch.Tensor  # [d_out, d_out]
    q_a: torch.Tensor  # [d_a, d_a], d_a = d_in + 1 with a bias, d_in without
    eigvals: torch.Tensor  # [d_out * d_a]
    bias: bool = True
    lam_g: torch.Tensor | None = None  # K-FAC only: the factors' own eigenvalues (for pi-damping)
    lam_a: torch.Tensor | None = None

    @property
    def d_out(self) -> int:
        return self.q_g.shape[0]

    @property
    def d_in(self) -> int:
        return self.q_a.shape[0] - int(self.bias)

    def to_joint(self, v: torch.Tensor) -> torch.Tensor:
        """[k, d] in parameter order -> [k, d_out, d_a]."""
        k, n_w = v.shape[0], self.d_out * self.d_in
        w = v[:, :n_w].reshape(k, self.d_out, self.d_in)
        return torch.cat([w, v[:, n_w:].reshape(k, self.d_out, 1)], dim=2) if self.bias else w

    def from_joint(self, joint: torch.Tensor) -> torch.Tensor:
        k = joint.shape[0]
        if not self.bias:
            return joint.reshape(k, -1)
        return torch.cat([joint[:, :, :-1].reshape(k, -1), joint[:, :, -1]], dim=1)

    def project(self, v):
        return (self.q_g.T @ self.to_joint(v) @ self.q_a).reshape(v.shape[0], -1)

    def unproject(self, coords):
        joint = coords.reshape(coords.shape[0], self.d_out, -1)
        return self.from_joint(self.q_g @ joint @ self.q_a.T)


@dataclass
class LowRankEigenBlock(EigenBlock):
    """``U diag(lam_k) U^T`` with orthonormal ``U`` [d, k]; the complement of U has eigenvalue 0.

    Coordinates are ``[U^T v, ...]`` for the k directions only; ``map`` adds the complement's weight
    separately, so the inverse of ``C + damping I`` is exact on the whole space.
    """

    u: torch.Tensor  # [d, k]
    top_eigvals: torch.Tensor  # [k]

    @property
    def eigvals(self) -> torch.Tensor:  # all d eigenvalues: the k found, then zeros for the complement
        d, k = self.u.shape
        return torch.cat([self.top_eigvals, torch.zeros(d - k, dtype=self.u.dtype, device=self.u.device)])

    @property
    def dim(self) -> int:
        return self.u.shape[0]

    def project(self, v):
        raise TypeError("a low-rank eigen form has no complete basis to project on")

    def map(self, v, weights):
        k = self.u.shape[1]
        coords = v @ self.u
        inside = (coords * weights[:k]) @ self.u.T
        if k == self.dim:
            return inside
        complement_weight = weights[k:]
        if not torch.all(complement_weight == complement_weight[0]):
            raise ValueError("the complement of a low-rank eigen form has one eigenvalue")
        return inside + complement_weight[0] * (v - coords @ self.u.T)

    def basis_product(self, g):
        raise TypeError("a low-rank eigen form has no complete basis")

    def eigvec(self, i):
        if i >= self.u.shape[1]:
            raise IndexError("only the top-k eigenvectors of a low-rank eigen form are known")
        return self.u[:, i]


@dataclass
class EigenCurvature:
    """A curvature as eigen blocks over slices of the parameter vector (slices cover [0, P))."""

    slices: list[slice]
    blocks: list[EigenBlock]

    @classmethod
    def from_dense_blocks(cls, matrices: list[torch.Tensor], slices: list[slice]) -> "EigenCurvature":
        """Eigendecompose symmetric blocks (a dense matrix is a single block)."""
        return cls(list(slices), [DenseEigenBlock.from_matrix(m) for m in matrices])

    @classmethod
    def from_dense(cls, matrix: torch.Tensor) -> "EigenCurvature":
        return cls.from_dense_blocks([matrix], [slice(0, matrix.shape[0])])

    @classmethod
    def diagonal(cls, values: torch.Tensor) -> "EigenCurvature":
        return cls([slice(0, values.numel())], [DiagonalBlock(values)])

    # -- shape ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return max(s.stop for s in self.slices)

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].eigvals.dtype

    @property
    def device(self) -> torch.device:
        return self.blocks[0].eigvals.device

    @property
    def eigvals(self) -> list[torch.Tensor]:
        return [b.eigvals for b in self.blocks]

    @property
    def complete_basis(self) -> bool:
        """Whether every eigenvector is known (not so for a low-rank form)."""
        return not any(isinstance(b, LowRankEigenBlock) for b in self.blocks)

    def all_eigvals(self) -> torch.Tensor:
        return torch.cat(self.eigvals)

    def trace(self) -> float:
        return float(self.all_eigvals().sum())

    def mean_eigenvalue(self) -> float:
        return self.trace() / self.dim

    # -- products ------------------------------------------------------------------------------
    def _map(self, vectors: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        out = torch.empty_like(vectors)
        for s, block, w in zip(self.slices, self.blocks, weights):
            out[:, s] = block.map(vectors[:, s], w)
        return out

    def matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """C v for each row of vectors [k, P]."""
        return self._map(vectors, self.eigvals)

    def inverse_matvec(self, vectors: torch.Tensor, damping: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
        """(C + damping I)^-1 v (eps-truncated) for each row of vectors [k, P]."""
        return self._map(vectors, [truncated_inverse(lam, damping, eps) for lam in self.eigvals])

    def apply(self, vectors: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """Q diag(w) Q^T v for each row of vectors [k, P], one weight vector per block (any function
        of the spectrum: another inverse rule, a power)."""
        return self._map(vectors, weights)

    def dense(self) -> torch.Tensor:
        """The dense [P, P] matrix; for tests and small problems only."""
        return self.matvec(torch.eye(self.dim, dtype=self.dtype, device=self.device))

    def top_eigvecs(self, k: int) -> torch.Tensor:
        """[P, k] eigenvectors of the k largest eigenvalues across all blocks."""
        lam = self.all_eigvals()
        top = torch.topk(lam, k).indices.tolist()
        offsets = [0]
        for block in self.blocks:
            offsets.append(offsets[-1] + block.dim)
        out = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        for col, flat in enumerate(top):
            b = max(i for i in range(len(self.blocks)) if offsets[i] <= flat)
            out[self.slices[b], col] = self.blocks[b].eigvec(flat - offsets[b])
        return out


def pi_damping(block: KroneckerEigenBlock, damping: float, min_damping: float = 1e-8) -> tuple[float, float]:
    """The factors' dampings ``(d_A, d_G)`` of K-FAC's heuristic pi-damping (Martens and Grosse 2015,
    section 6.3) as curvlinops' ``KFACInverseLinearOperator(use_heuristic_damping=True)`` sets them:
    ``pi = sqrt(mean eig A / mean eig G)``, ``d_A = pi sqrt(d)``, ``d_G = sqrt(d) / pi``, each at least
    ``min_damping``; without a usable pi, both are ``d``."""
    lam_g, lam_a = block.lam_g, block.lam_a
    if lam_g is None or lam_a is None:
        raise ValueError("pi-damping needs the Kronecker factors' own eigenvalues (a K-FAC block)")
    mean_a, mean_g = float(lam_a.mean()), float(lam_g.mean())
    if mean_a >= 0.0 and mean_g > 0.0:
        pi = (mean_a / mean_g) ** 0.5
        return max(damping**0.5 * pi, min_damping), max(damping**0.5 / pi, min_damping)
    return damping, damping


def pi_damped_inverse(block: KroneckerEigenBlock, damping: float) -> torch.Tensor:
    """Inverse eigenvalues of ``(A + d_A I)^-1 (x) (G + d_G I)^-1`` in the block's Kronecker eigenbasis."""
    damping_a, damping_g = pi_damping(block, damping)
    return 1.0 / torch.outer(block.lam_g + damping_g, block.lam_a + damping_a).flatten()
