"""The entry contract and the registry.

An entry is a way to approximate the curvature in ``s[j, i] = - g_j^T (C + damping I)^-1 g_i``
(PROTOCOL.md section 2). In the spirit of scikit-learn's estimators: ``__init__`` only stores
parameters; ``fit(problem)`` does the expensive work and returns ``self``; fitted state ends in
``_``. The harness owns the per-example gradients (``problem.train_grads``, ``problem.test_grads``);
entries never recompute them.

Most entries only build ``curvature_`` (an ``EigenCurvature``); scores, inverse products and the
fidelity metrics then follow from it. An entry with no curvature (a gradient dot product) sets
``curvature_ = None`` and overrides ``scores``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS, EigenCurvature
from influence_bench.problem import InfluenceProblem

ENTRIES: dict[str, type["Entry"]] = {}


class UnknownEntryError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


class NotFittedError(RuntimeError):
    pass


def register(cls: type["Entry"]) -> type["Entry"]:
    """Class decorator: add an entry to the registry under ``cls.name``."""
    if cls.name in ENTRIES:
        raise ValueError(f"an entry named {cls.name!r} is already registered ({ENTRIES[cls.name].__module__})")
    ENTRIES[cls.name] = cls
    return cls


def get_entry(name: str) -> type["Entry"]:
    try:
        return ENTRIES[name]
    except KeyError:
        valid = ", ".join(ENTRIES)
        raise UnknownEntryError(f"unknown entry {name!r}; valid entries: {valid} (see `influence-bench list`)") from None


class Entry:
    name: ClassVar[str]
    description: ClassVar[str]
    curvature_kind: ClassVar[str]  # "dense", "layer-blocks", "kronecker", "diagonal" or "none"

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS):
        self.damping = damping
        self.eps = eps

    def get_params(self) -> dict:
        return {"damping": self.damping, "eps": self.eps}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- to implement --------------------------------------------------------------------------
    def fit(self, problem: InfluenceProblem) -> "Entry":
        """Build ``self.curvature_`` (an EigenCurvature, or None) and return self."""
        raise NotImplementedError

    # -- derived -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "curvature_"):
            raise NotFittedError(f"{self!r} is not fitted: call fit(problem) first")

    def inverse_hvp(self, vectors: torch.Tensor, damping: float | None = None) -> torch.Tensor:
        """(C + damping I)^-1 v for each row of vectors [k, P] (eps-truncated)."""
        self._check_fitted()
        if self.curvature_ is None:
            raise TypeError(f"entry {self.name!r} has no curvature to invert")
        return self.curvature_.inverse_matvec(vectors, self.damping if damping is None else damping, self.eps)

    def scores(self, problem: InfluenceProblem, damping: float | None = None) -> torch.Tensor:
        """s[j, i] = - g_j^T (C + damping I)^-1 g_i: [n_test, n_train] float64."""
        self._check_fitted()
        damping = self.damping if damping is None else damping
        left, right = self._projected_gradients(problem)
        return self.curvature_.bilinear_scores(left, right, damping, self.eps)

    def _projected_gradients(self, problem: InfluenceProblem) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Test and train gradients in the eigenbasis, projected once per fit and kept."""
        key = id(problem)
        cached = getattr(self, "_projected", None)
        if cached is None or cached[0] != key:
            c: EigenCurvature = self.curvature_
            self._projected = (key, (c.project(problem.test_grads), c.project(problem.train_grads)))
        return self._projected[1]

    def mean_eigenvalue(self) -> float:
        """Mean eigenvalue of the entry's own curvature (the scale of the tuned damping grid)."""
        self._check_fitted()
        return float(self.curvature_.all_eigvals().mean()) if self.curvature_ is not None else 1.0
