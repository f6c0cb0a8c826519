"""The entry contract and the registry.

An entry is a way to approximate ``(C + damping I)^-1`` in ``s[j, i] = - g_j^T (C + damping I)^-1 g_i``
(PROTOCOL.md section 2). Its one duty is ``inverse(vectors)``: the damped inverse applied to a batch
of vectors ``[k, P]``. Everything else is an optional capability, declared as data in
``capabilities``:

- ``"eigen"``: ``eigen_form()`` gives the curvature as eigen blocks (``EigenCurvature``), with
  Kronecker factors kept as factors; the eps rule of PROTOCOL.md section 2 applies;
- ``"operator"``: ``curvature_matvec(vectors)`` gives ``C v`` (the curvature itself, undamped);
- ``"scores"``: the entry computes its own scores (a method without a curvature inverse).

``skip(problem)`` returns a reason when the entry cannot run a problem (a dense entry above the
dense limit), or None. In the spirit of scikit-learn's estimators: ``__init__`` only stores
parameters; ``fit(problem)`` does the expensive work and returns ``self``; fitted state ends in
``_``. The harness owns the per-example gradients (``problem.train_grads``, ``problem.test_grads``);
entries never recompute them. Scores are ``-(inverse applied to the test gradients) @ train_grads^T``,
computed in chunks of test queries.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS, EigenCurvature
from influence_bench.problem import InfluenceProblem

ENTRIES: dict[str, type["Entry"]] = {}
CAPABILITIES = frozenset({"eigen", "operator", "scores"})
SCORE_CHUNK = 64  # test queries whose inverse products are held at once


class UnknownEntryError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


class NotFittedError(RuntimeError):
    pass


class MissingCapabilityError(TypeError):
    """An optional capability was used on an entry that does not declare it."""


def register(cls: type["Entry"]) -> type["Entry"]:
    """Class decorator: add an entry to the registry under ``cls.name``."""
    if cls.name in ENTRIES:
        raise ValueError(f"an entry named {cls.name!r} is already registered ({ENTRIES[cls.name].__module__})")
    unknown = set(cls.capabilities) - CAPABILITIES
    if unknown:
        raise ValueError(f"entry {cls.name!r} declares unknown capabilities {sorted(unknown)}; "
                         f"known: {sorted(CAPABILITIES)}")
    ENTRIES[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove an entry from the registry (tests that register one remove it again)."""
    ENTRIES.pop(name, None)


def get_entry(name: str) -> type["Entry"]:
    try:
        return ENTRIES[name]
    except KeyError:
        valid = ", ".join(ENTRIES)
        raise UnknownEntryError(f"unknown entry {name!r}; valid entries: {valid} (see `influence-bench list`)") from None


class Entry:
    name: ClassVar[str]
    description: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    has_damping: ClassVar[bool] = True  # False: the damping changes nothing (no curvature), not tuned
    # dense matrices of the problem it reads ("ggn", "hessian"): a run computes them once, shares them
    # between entries and times them separately
    uses: ClassVar[frozenset[str]] = frozenset()
    # relative accuracy of ``inverse`` against a dense solve of the entry's own curvature that the
    # conformance kit expects (iterative solvers are approximate by design)
    inverse_rtol: ClassVar[float] = 1e-7

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS):
        self.damping = damping
        self.eps = eps

    def get_params(self) -> dict[str, Any]:
        return {"damping": self.damping, "eps": self.eps}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- to implement --------------------------------------------------------------------------
    def skip(self, problem: InfluenceProblem) -> str | None:
        """A reason why this entry cannot run ``problem``, or None."""
        return None

    def fit(self, problem: InfluenceProblem) -> "Entry":
        """Do the expensive work (fitted state in attributes ending in ``_``) and return self."""
        raise NotImplementedError

    def inverse(self, vectors: torch.Tensor, damping: float | None = None) -> torch.Tensor:
        """(C + damping I)^-1 v for each row of vectors [k, P]: [k, P] float64."""
        raise NotImplementedError

    # -- optional capabilities ----------------------------------------------------------------
    def eigen_form(self) -> EigenCurvature:
        raise MissingCapabilityError(f"entry {self.name!r} declares no eigen form")

    def curvature_matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """C v for each row of vectors [k, P] (undamped)."""
        raise MissingCapabilityError(f"entry {self.name!r} declares no curvature operator")

    def diagnostics(self) -> dict[str, float]:
        """Numbers about the fit worth reporting (iterations used, ...): name -> value."""
        return {}

    # -- derived -------------------------------------------------------------------------------
    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("__") for k in vars(self))

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"{self!r} is not fitted: call fit(problem) first")

    def _damping(self, damping: float | None) -> float:
        return self.damping if damping is None else float(damping)

    def scores(self, problem: InfluenceProblem, damping: float | None = None,
               queries: torch.Tensor | None = None) -> torch.Tensor:
        """s[j, i] = - g_j^T (C + damping I)^-1 g_i for the test queries (all by default): [n_q, n_train]."""
        self._check_fitted()
        test = problem.test_grads if queries is None else problem.test_grads[queries]
        train = problem.train_grads
        out = torch.empty(test.shape[0], train.shape[0], dtype=torch.float64)
        for start in range(0, test.shape[0], SCORE_CHUNK):
            part = slice(start, start + SCORE_CHUNK)
            out[part] = -(self.inverse(test[part], damping).to(torch.float64) @ train.T)
        return out

    def mean_eigenvalue(self, problem: InfluenceProblem) -> float:
        """Mean eigenvalue of the entry's own curvature: the scale of the tuned damping grid.

        From the eigen form where there is one, else a Hutchinson trace estimate of the curvature
        operator divided by P (PROTOCOL.md section 7).
        """
        self._check_fitted()
        if self.has("eigen"):
            return self.eigen_form().mean_eigenvalue()
        if self.has("operator"):
            from influence_bench.curvature import curvlinops_adapter

            op = curvlinops_adapter.as_operator(self.curvature_matvec, problem.n_params)
            return curvlinops_adapter.trace_estimate(op) / problem.n_params
        raise MissingCapabilityError(f"entry {self.name!r} has no curvature whose eigenvalues could scale a damping grid")


class EigenEntry(Entry):
    """An entry whose curvature is an eigen form ``eigen_`` (set by ``fit``): inverse, operator and
    scores all follow from it, at any damping, from one decomposition."""

    capabilities = frozenset({"eigen", "operator"})

    def eigen_form(self) -> EigenCurvature:
        self._check_fitted()
        return self.eigen_

    def inverse(self, vectors, damping=None):
        return self.eigen_form().inverse_matvec(vectors.to(torch.float64), self._damping(damping), self.eps)

    def curvature_matvec(self, vectors):
        return self.eigen_form().matvec(vectors.to(torch.float64))


class DenseEntry(EigenEntry):
    """An eigen entry built from dense [P, P] (or per-layer) matrices: skipped above the dense limit."""

    dense_what: ClassVar[str] = "a dense curvature"

    def skip(self, problem):
        return problem.dense_skip_reason(self.dense_what)
