"""The entry contract and the registry.

An entry is a way to approximate ``(C + damping I)^-1`` in ``s[j, i] = - g_j^T (C + damping I)^-1 g_i``
(PROTOCOL.md section 2). Its one duty is ``inverse(vectors)``: the damped inverse applied to a batch
of vectors ``[k, P]``. Everything else is an optional capability, declared as data in
``capabilities``:

- ``"eigen"``: ``eigen_form()`` gives the curvature as eigen blocks (``EigenCurvature``), with
  Kronecker factors kept as factors; the eps rule of PROTOCOL.md section 2 applies;
- ``"operator"``: ``curvature_matvec(vectors)`` gives ``C v`` (the curvature itself, undamped);
- ``"scores"``: the entry computes its own scores (a method without a curvature inverse).

Parameters are declared as a grid (``parameters``: name -> allowed values, the first the default,
in the spirit of Benchopt); a run names a point of it, ``kfac[fisher=mc,separate=true]``, and the
entry's ``name`` is that point in canonical form (declared order, defaults left out), so one class
covers what would otherwise be copies.

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
from influence_bench.naming import (
    UnknownEntryError,
    coerce_point,
    full_point,
    parse_point,
    point_name,
    split_names,
    unknown_entry,
    unknown_parameter,
)
from influence_bench.problem import InfluenceProblem

__all__ = ["ENTRIES", "ORIGINS", "CAPABILITIES", "UnknownEntryError", "parse_point", "split_names", "register", "unregister",
           "get_entry", "make_entry", "Entry", "EntryLoadError", "EigenEntry", "DenseEntry", "NotFittedError", "MissingCapabilityError"]

ENTRIES: dict[str, type["Entry"]] = {}
ORIGINS: dict[str, str] = {}  # entry name -> where it was registered from (entry point or module)
CAPABILITIES = frozenset({"eigen", "operator", "scores"})
SCORE_CHUNK = 64  # test queries whose inverse products are held at once


class NotFittedError(RuntimeError):
    pass


class EntryLoadError(ImportError):
    """An entry whose module (an entry point of an installed package) failed to import: the message
    carries the traceback. A run turns it into a failure row and goes on with the others."""


class MissingCapabilityError(TypeError):
    """An optional capability was used on an entry that does not declare it."""


def register(cls: type["Entry"], origin: str | None = None) -> type["Entry"]:
    """Class decorator: add an entry to the registry under ``cls.name``. ``origin`` says where it comes
    from (an entry point of an installed package, or the class's module): a second entry of the same
    name is an error naming both origins."""
    if not (isinstance(cls, type) and issubclass(cls, Entry)):
        raise TypeError(f"{cls!r} is not an Entry subclass: an entry is a class deriving from "
                        "influence_bench.entries.Entry (or EigenEntry)")
    origin = origin or f"{cls.__module__}:{cls.__qualname__}"
    existing = ENTRIES.get(cls.name)
    if existing is cls:
        ORIGINS[cls.name] = origin if "entry point" in origin else ORIGINS.get(cls.name, origin)
        return cls
    if existing is not None:
        raise ValueError(f"two entries are named {cls.name!r}: {ORIGINS.get(cls.name, existing.__module__)} and "
                         f"{origin}; rename one of them (or uninstall one package)")
    unknown = set(cls.capabilities) - CAPABILITIES
    if unknown:
        raise ValueError(f"entry {cls.name!r} declares unknown capabilities {sorted(unknown)}; "
                         f"known: {sorted(CAPABILITIES)}")
    ENTRIES[cls.name] = cls
    ORIGINS[cls.name] = origin
    return cls


def unregister(name: str) -> None:
    """Remove an entry from the registry (tests that register one remove it again)."""
    ENTRIES.pop(name, None)


def get_entry(name: str) -> type["Entry"]:
    """The class of an entry, by its registered name (any parameter point of it: ``kfac[fisher=mc]``)."""
    base, _ = parse_point(name)
    try:
        return ENTRIES[base]
    except KeyError:
        from influence_bench.plugins import entry_failures

        failed = entry_failures()
        if base in failed:
            raise EntryLoadError(failed[base]) from None
        raise unknown_entry(base, list(ENTRIES)) from None


def make_entry(name: str, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS) -> "Entry":
    """An entry from its name with an optional parameter point: ``make_entry("kfac[fisher=mc]")``."""
    cls = get_entry(name)
    _, raw = parse_point(name)
    return cls(damping=damping, eps=eps, **cls.coerce_params(raw))


class Entry:
    name: ClassVar[str]
    description: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    has_damping: ClassVar[bool] = True  # False: the damping changes nothing (no curvature), not tuned
    # dense matrices of the problem it reads ("ggn", "hessian"): a run computes them once, shares them
    # between entries and times them separately
    uses: ClassVar[frozenset[str]] = frozenset()
    # True: it reads the reference training's checkpoints (``problem.checkpoints``), which a run then
    # provides (``groundtruth.reference_checkpoints``)
    needs_checkpoints: ClassVar[bool] = False
    # relative accuracy of ``inverse`` against a dense solve of the entry's own curvature that the
    # conformance kit expects (iterative solvers are approximate by design)
    inverse_rtol: ClassVar[float] = 1e-7
    # the parameter grid: name -> allowed values, the first is the default (a run names one point)
    parameters: ClassVar[dict[str, tuple]] = {}
    point_label: ClassVar[str | None] = None  # set on classes made by ``at``: the point's name
    # checks of the conformance kit (``influence_bench.testing``) it is known to fail: the check's name without
    # ``check_`` -> the reason. The kit reads it from an instance, so where it depends on the parameter point
    # a class may define it as a property of ``self.params``.
    known_failures: ClassVar[dict[str, str]] = {}

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS, **params: Any):
        self.damping = damping
        self.eps = eps
        self.params = self.validate_params(params)
        self.name = self.point_name(self.params)

    # -- the parameter grid ------------------------------------------------------------------------
    @classmethod
    def coerce_params(cls, raw: dict[str, str]) -> dict[str, Any]:
        """Text values (from a name such as ``kfac[fisher=mc]``) as the grid's typed values."""
        return coerce_point(cls.name, cls.parameters, raw)

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every declared parameter, defaults filled in; unknown names or values outside the grid raise."""
        for key, value in params.items():
            if key not in cls.parameters:
                raise unknown_parameter(cls.name, cls.parameters, key)
            if value not in cls.parameters[key]:
                raise UnknownEntryError(f"entry {cls.name!r}: {key}={value!r} is not in its grid {cls.parameters[key]}")
        full = full_point(cls.parameters, params)
        reason = cls.invalid_point(full)
        if reason:
            raise UnknownEntryError(f"entry {cls.point_name(full)!r}: {reason}")
        return full

    @classmethod
    def invalid_point(cls, params: dict[str, Any]) -> str | None:
        """Why a combination of valid values makes no sense (``samples`` without ``fisher=mc``), or None."""
        return None

    @classmethod
    def point_name(cls, params: dict[str, Any]) -> str:
        """The canonical name of a point: declared order, parameters at their default left out."""
        return point_name(cls.name, cls.parameters, params)

    @classmethod
    def grid(cls) -> list[dict[str, Any]]:
        """Every valid point of the grid."""
        import itertools

        points = [dict(zip(cls.parameters, values)) for values in itertools.product(*cls.parameters.values())]
        return [p for p in points if cls.invalid_point(p) is None]

    @classmethod
    def at(cls, **params: Any) -> type["Entry"]:
        """A subclass fixed at one point of the grid, for code that builds entries from a class
        (the conformance kit): ``check_entry(KFAC.at(fisher="mc"))``."""
        point = cls.validate_params(params)
        base = cls

        def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS, **more: Any):
            base.__init__(self, damping, eps, **{**point, **more})

        def __reduce__(self):  # a class made here has no importable name: pickle the instance by its recipe,
            return _entry_at_point, (base, point), self.__getstate__()  # its state as its own __getstate__ says

        return type(f"{cls.__name__}AtPoint", (cls,), {
            "__init__": __init__, "__reduce__": __reduce__, "__module__": cls.__module__,
            "point_label": cls.point_name(point)})

    def get_params(self) -> dict[str, Any]:
        return {"damping": self.damping, "eps": self.eps, **self.params}

    @property
    def inverse_is_exact(self) -> bool:
        """Whether ``inverse`` is the eps-truncated damped inverse of the entry's own curvature (False for
        a deliberately different damping scheme, such as K-FAC's heuristic pi-damping)."""
        return True

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
        """(C + damping I)^-1 v for each row of vectors [k, P]: [k, P] float64. An entry with scores of
        its own (capability ``scores``) may have none: it raises MissingCapabilityError."""
        if self.has("scores"):
            raise MissingCapabilityError(f"entry {self.name!r} computes its own scores; it has no inverse")
        raise NotImplementedError

    # -- optional capabilities ----------------------------------------------------------------
    def eigen_form(self) -> EigenCurvature:
        raise MissingCapabilityError(f"entry {self.name!r} declares no eigen form")

    def curvature_matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """C v for each row of vectors [k, P] (undamped)."""
        raise MissingCapabilityError(f"entry {self.name!r} declares no curvature operator")

    def undamped_limit(self, vectors: torch.Tensor) -> torch.Tensor:
        """lim damping * (C + damping I)^-1 v as damping grows: v itself, unless the entry's inverse lives
        in a subspace (TRAK: R^T R v). The conformance kit checks it."""
        return vectors.to(torch.float64)

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
        out = torch.empty(test.shape[0], train.shape[0], dtype=torch.float64, device=train.device)
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

            op = curvlinops_adapter.as_operator(self.curvature_matvec, problem.n_params, device=problem.device)
            return curvlinops_adapter.trace_estimate(op) / problem.n_params
        raise MissingCapabilityError(f"entry {self.name!r} has no curvature whose eigenvalues could scale a damping grid")


def _entry_at_point(base: type[Entry], point: dict[str, Any]) -> Entry:
    """An empty instance of ``base.at(**point)``: how such an instance unpickles (pickle then applies its
    state, through ``__setstate__`` where the class defines one)."""
    cls = base.at(**point)
    return cls.__new__(cls)


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
