"""The conformance kit for entries, in the spirit of scikit-learn's ``check_estimator`` and
``parametrize_with_checks``.

A researcher who writes an entry checks it before submitting it::

    from influence_bench.testing import check_entry, run_checks

    check_entry(MyEntry)  # raises AssertionError naming the first failing check
    for outcome in run_checks(MyEntry):  # or: every check's outcome, never raising
        print(outcome.id, outcome.status, outcome.message)

or runs every check as a test of its own (``pytest -k my-entry-`` picks one entry's)::

    @parametrize_with_checks([MyEntry, MyEntry.at(fisher="mc")])
    def test_conformance(entry_cls, check):
        check(entry_cls, tiny_problem())

Every check is a plain function ``check_<property>(cls, problem)`` on a tiny problem with a dense
reference; it raises AssertionError with a message that says what is wrong. A check that an entry is
known to fail is declared as data on its class: ``known_failures = {"curvature_is_symmetric_psd":
"why"}`` (the check's name without ``check_``). The kit reads it from an instance, ``cls().known_failures``,
so a class whose known failures depend on its parameter point may define it as a property of
``self.params``. A declared check is expected to fail: ``parametrize_with_checks`` marks it
``xfail(strict=True)``, so a declaration that is no longer true fails too.

The checks fit each class once per problem (``torch.manual_seed(0)`` first) and share that fit and its
scores (``fitted``). ``check_beats_gradient_dot_product_on_convex_task`` runs on the kit's own convex
task (``tiny_convex_problem``), whatever problem is given.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import sys
import time
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries.base import Entry, MissingCapabilityError, NotFittedError
from influence_bench.problem import InfluenceProblem

__all__ = ["Check", "CheckOutcome", "CHECKS", "DeviceDiscipline", "STATUSES", "check_entry", "run_checks", "parametrize_with_checks",
           "entry_checks", "known_failures", "fitted", "tiny_problem", "tiny_convex_problem",
           "check_init_stores_parameters", "check_fit_returns_self", "check_fit_leaves_problem_unchanged",
           "check_capabilities_are_declared", "check_inverse_shape_dtype_finite", "check_scores_shape_dtype_finite",
           "check_scores_use_the_inverse", "check_query_subset_matches_rows", "check_inverse_matches_dense_solve",
           "check_large_damping_gives_gradient_dot_product", "check_same_seed_same_scores", "check_survives_pickling",
           "check_curvature_is_symmetric_psd", "check_beats_gradient_dot_product_on_convex_task"]

Check = Callable[[type[Entry], InfluenceProblem], None]
PASSED, FAILED, KNOWN_FAILURE, UNEXPECTED_PASS = "passed", "failed", "known failure", "unexpected pass"
STATUSES = (PASSED, FAILED, KNOWN_FAILURE, UNEXPECTED_PASS)
SEED = 0  # torch.manual_seed before every fit of the kit
PICKLE_RTOL = 1e-12
PSD_RTOL = 1e-10  # smallest eigenvalue >= -PSD_RTOL * largest magnitude


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """One check of one entry class, as ``run_checks`` reports it."""

    id: str  # "kfac-scores_use_the_inverse": the test id, which ``pytest -k`` picks
    check: str  # the check's name without ``check_``, as ``known_failures`` names it
    status: str  # "passed", "failed", "known failure" (failed as declared) or "unexpected pass"
    message: str  # why it failed; for a known failure the declared reason, then the failure; "" when passed
    seconds: float


# -- the problems -----------------------------------------------------------------------------------
def _digits_slice_problem(layer_sizes: tuple[int, ...], name: str, checkpoint_epochs: tuple[int, ...]) -> InfluenceProblem:
    """digits with an MLP of ``layer_sizes``, 96 training and 12 test points, trained 30 epochs (seed 0); the
    checkpoints after ``checkpoint_epochs`` and the final model, for the entries that trace training."""
    from influence_bench.tasks import get_task
    from influence_bench.tasks.models import MLP
    from influence_bench.tasks.spec import TaskData
    from influence_bench.training import train_batched, train_single

    digits = get_task("digits-mlp")
    spec = dataclasses.replace(digits, name=f"digits-{name}", model=MLP(layer_sizes))
    d = digits.data
    data = TaskData(d.x_train[:96], d.y_train[:96], d.x_test[:12], d.y_test[:12])
    recipe = dataclasses.replace(spec.recipe, epochs=30)
    everyone = torch.ones(data.n_train, dtype=torch.bool)
    model = train_single(spec, data, everyone, seed=0, recipe=recipe)
    problem = InfluenceProblem(model, data, name=name)
    kept: list[tuple[float, torch.nn.Module]] = []

    def keep(epoch: int, lr: float, stack) -> None:
        if epoch in checkpoint_epochs:
            kept.append((lr, stack.model(0, spec)))

    if checkpoint_epochs:
        train_batched(spec, data, everyone[None], [0], recipe, at_epoch_end=keep)
    problem.set_checkpoints([m for _, m in kept] + [model], [lr for lr, _ in kept] + [recipe.learning_rates()[-1]])
    # the shared dense matrices first, as a run computes them before any entry (runner/shared.py): every fit
    # then reads the same ones (a GGN block computed alone equals the dense GGN's slice only to round-off,
    # so which came first would otherwise decide whether two fits agree bit for bit)
    _ = problem.ggn, problem.ggn_eigen, problem.hessian
    return problem


@lru_cache(maxsize=1)
def tiny_problem() -> InfluenceProblem:
    """digits with a 64-6-5-10 MLP (485 parameters), 96 training and 12 test points, trained 30 epochs;
    checkpoints after epochs 10 and 20 and the final model."""
    return _digits_slice_problem((64, 6, 5, 10), "tiny-check", (10, 20))


@lru_cache(maxsize=1)
def tiny_convex_problem() -> InfluenceProblem:
    """Multinomial logistic regression (one Linear(64, 10), 650 parameters) on the tiny problem's data:
    its loss is convex, its Hessian is its GGN, and -g_j^T (H + lam I)^-1 g_i is the exact influence.
    One checkpoint, the final model."""
    return _digits_slice_problem((64, 10), "tiny-convex-check", ())


# -- one seeded fit per class and problem, shared by the checks ----------------------------------------
DATA_TENSORS = ("x_train", "y_train", "x_test", "y_test", "train_grads", "test_grads")


def _problem_tensors(problem: InfluenceProblem) -> dict[str, torch.Tensor]:
    """What fit must leave as it found it: the model's parameters and buffers, and the data tensors."""
    tensors = {f"model.{n}": t for n, t in problem.model.named_parameters()}
    tensors.update({f"model.{n}": t for n, t in problem.model.named_buffers()})
    tensors.update({n: getattr(problem, n) for n in DATA_TENSORS})
    return tensors


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (a NaN equals the same NaN; -0.0 differs from 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.detach().flatten().contiguous().view(torch.uint8),
                       b.detach().flatten().contiguous().view(torch.uint8))


def _with_rng(state: torch.Tensor, compute: Callable[[], Any]) -> Any:
    """``compute()`` with torch's global generator at ``state``; the caller's generator left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        return compute()


class _Fit:
    """``torch.manual_seed(0)``, ``cls()``, ``fit(problem)``: what fit returned, which of the problem's
    tensors it changed (against copies taken before), and, on first use, the scores computed next (with
    the generator as fit left it) and the entry's own curvature as a dense matrix."""

    def __init__(self, cls: type[Entry], problem: InfluenceProblem):
        self.problem = problem  # held, so that the id that keys the cache stays this problem's
        for name in cls.uses:  # the shared dense matrices it reads are computed before any fit, as a run does
            if problem.dense_allowed:
                getattr(problem, name)
        before = {n: t.detach().clone() for n, t in _problem_tensors(problem).items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            self.entry = cls()
            self.returned = self.entry.fit(problem)
            self.rng_after_fit = torch.get_rng_state()
        after = _problem_tensors(problem)
        self.changed = [n for n in before if n not in after or not _same_bits(before[n], after[n])]
        self.changed += [n for n in after if n not in before]

    @functools.cached_property
    def scores(self) -> torch.Tensor:
        return _with_rng(self.rng_after_fit, lambda: self.entry.scores(self.problem))

    @functools.cached_property
    def curvature(self) -> torch.Tensor:
        """The entry's own curvature as a dense [P, P] matrix, from its eigen form or its operator."""
        if self.entry.has("eigen"):
            return self.entry.eigen_form().dense()
        eye = torch.eye(self.problem.n_params, dtype=torch.float64)
        return self.entry.curvature_matvec(eye)


_FITS: dict[tuple[type, int], _Fit] = {}


def _fit(cls: type[Entry], problem: InfluenceProblem) -> _Fit:
    key = (cls, id(problem))
    if key not in _FITS:
        _FITS[key] = _Fit(cls, problem)
    return _FITS[key]


def fitted(cls: type[Entry], problem: InfluenceProblem) -> Entry:
    """``cls()`` fitted on the problem (``torch.manual_seed(0)`` first), once per (class, problem): the
    checks read it, never refit it."""
    return _fit(cls, problem).entry


def _declares_curvature(entry: Entry) -> bool:
    """An eigen form or a curvature operator, and no scores of its own."""
    return (entry.has("eigen") or entry.has("operator")) and not entry.has("scores")


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    return bool(torch.linalg.norm(got - expected) <= rtol * torch.linalg.norm(expected) + 1e-300)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected).clamp_min(1e-300))


# -- the checks -------------------------------------------------------------------------------------
def check_init_stores_parameters(cls: type[Entry], problem: InfluenceProblem) -> None:
    entry = cls(damping=3e-3, eps=2e-7)
    params = entry.get_params()
    assert params["damping"] == 3e-3 and params["eps"] == 2e-7, "__init__ must store damping and eps as given"
    assert not entry.is_fitted(), "__init__ must not fit anything (no attribute ending in _ before fit)"
    try:
        entry.scores(problem)
    except NotFittedError:
        pass
    else:
        raise AssertionError("scores() before fit() must raise NotFittedError")


def check_fit_returns_self(cls: type[Entry], problem: InfluenceProblem) -> None:
    """fit(problem) on a fresh instance returns self and leaves fitted state in attributes ending in _."""
    fit = _fit(cls, problem)
    assert fit.returned is fit.entry, f"fit(problem) must return self, it returned {type(fit.returned).__name__}"
    assert fit.entry.is_fitted(), "fit must leave fitted state in attributes ending in _"


def check_fit_leaves_problem_unchanged(cls: type[Entry], problem: InfluenceProblem) -> None:
    """fit changes none of the model's parameters and buffers, nor x, y and the gradients, bit for bit."""
    changed = _fit(cls, problem).changed
    assert not changed, (f"fit modified the problem's {', '.join(changed)} (compared bit for bit with copies taken "
                         f"before fit): an entry reads the problem and never writes to it")


def check_capabilities_are_declared(cls: type[Entry], problem: InfluenceProblem) -> None:
    """What an entry declares it can do, it does; the rest raises MissingCapabilityError."""
    entry = fitted(cls, problem)
    v = torch.randn(2, problem.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for capability, call in (("eigen", entry.eigen_form), ("operator", lambda: entry.curvature_matvec(v))):
        if entry.has(capability):
            call()
        else:
            try:
                call()
            except MissingCapabilityError:
                continue
            raise AssertionError(f"{capability!r} is not declared, yet it did not raise MissingCapabilityError")


def check_inverse_shape_dtype_finite(cls: type[Entry], problem: InfluenceProblem) -> None:
    """inverse maps [k, P] to finite float64 [k, P]; an entry with scores of its own may have none
    (it raises MissingCapabilityError)."""
    entry = fitted(cls, problem)
    v = torch.randn(3, problem.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    try:
        out = entry.inverse(v)
    except MissingCapabilityError:
        assert entry.has("scores"), "only an entry with scores of its own may have no inverse"
        return
    assert tuple(out.shape) == (3, problem.n_params), f"inverse must map [k, P] to [k, P], got {tuple(out.shape)}"
    assert out.dtype == torch.float64, f"inverse must return float64, got {out.dtype}"
    assert torch.isfinite(out).all(), "inverse returned NaN or inf"


def check_scores_shape_dtype_finite(cls: type[Entry], problem: InfluenceProblem) -> None:
    scores = _fit(cls, problem).scores
    assert tuple(scores.shape) == (problem.n_test, problem.n_train), (
        f"scores must be [n_test, n_train] = {(problem.n_test, problem.n_train)}, got {tuple(scores.shape)}")
    assert scores.dtype == torch.float64, f"scores must be float64, got {scores.dtype}"
    assert torch.isfinite(scores).all(), "scores contain NaN or inf"


def check_scores_use_the_inverse(cls: type[Entry], problem: InfluenceProblem) -> None:
    """s = - g_test (C + damping I)^-1 g_train^T, at the entry's damping and at 0.1."""
    fit = _fit(cls, problem)
    entry = fit.entry
    if entry.has("scores"):
        return  # an entry with scores of its own is checked against its own reference
    for damping in (entry.damping, 1e-1):
        expected = -entry.inverse(problem.test_grads, damping) @ problem.train_grads.T
        got = fit.scores if damping == entry.damping else entry.scores(problem, damping=damping)
        assert _close(got, expected, max(entry.inverse_rtol, 1e-9)), (
            f"scores at damping {damping} differ from -(C + damping I)^-1 g_test . g_train")


def check_query_subset_matches_rows(cls: type[Entry], problem: InfluenceProblem) -> None:
    """scores(problem, queries=[2, 0]) are rows 2 and 0 of the full scores, in that order (every entry,
    those with scores of their own too)."""
    fit = _fit(cls, problem)
    queries = torch.tensor([min(2, problem.n_test - 1), 0])
    got = fit.entry.scores(problem, queries=queries)
    expected = fit.scores[queries]
    assert tuple(got.shape) == tuple(expected.shape), (
        f"scores for queries {queries.tolist()} must be [{len(queries)}, n_train] = {tuple(expected.shape)}, "
        f"got {tuple(got.shape)}")
    assert _close(got, expected, max(fit.entry.inverse_rtol, 1e-9)), (
        f"scores for a subset of queries {queries.tolist()} differ from those rows of the full scores "
        f"by {_relative(got, expected):.2e} (relative)")


def check_inverse_matches_dense_solve(cls: type[Entry], problem: InfluenceProblem) -> None:
    """(C + damping I)^-1 v against a dense eigen-solve of the entry's own curvature, eps-truncated."""
    fit = _fit(cls, problem)
    entry = fit.entry
    if not (entry.has("eigen") or entry.has("operator")):
        return  # no curvature: nothing to solve against (the inverse is declared, e.g. the identity)
    if not entry.inverse_is_exact:
        return  # a declared other damping scheme (K-FAC's pi-damping): tested against its own reference
    dense = fit.curvature
    assert torch.allclose(dense, dense.T, atol=1e-8 * float(dense.abs().max())), "the curvature is not symmetric"
    damping = 1e-2
    lam, q = torch.linalg.eigh(dense + damping * torch.eye(dense.shape[0], dtype=dense.dtype))
    inv = torch.where(lam > entry.eps, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))
    v = problem.test_grads[:3]
    expected = ((v @ q) * inv) @ q.T
    got = entry.inverse(v, damping)
    error = _relative(got, expected)
    assert error <= entry.inverse_rtol, (
        f"inverse differs from a dense solve of the entry's own curvature by {error:.2e} (relative), "
        f"more than its declared inverse_rtol {entry.inverse_rtol:g}")


def check_large_damping_gives_gradient_dot_product(cls: type[Entry], problem: InfluenceProblem) -> None:
    """As damping grows, damping * s -> - g_test^T g_train (the curvature stops mattering), or the entry's
    declared limit (``Entry.undamped_limit``: TRAK's is the projected dot product)."""
    fit = _fit(cls, problem)
    entry = fit.entry
    if not entry.has_damping or entry.has("scores"):
        return
    scale = float(torch.linalg.norm(fit.curvature, ord=2)) if (entry.has("eigen") or entry.has("operator")) else 1.0
    damping = 1e6 * max(scale, 1.0)
    dot = -entry.undamped_limit(problem.test_grads) @ problem.train_grads.T
    got = damping * entry.scores(problem, damping=damping)  # = dot + O(||C|| / damping) = dot (1 + 1e-6)
    assert torch.allclose(got, dot, rtol=1e-4, atol=1e-4 * float(dot.abs().max())), (
        "at a huge damping the scores should approach the gradient dot product / damping")


def check_same_seed_same_scores(cls: type[Entry], problem: InfluenceProblem) -> None:
    """torch.manual_seed(0), a fresh instance, fit, scores: twice in a row, and the scores agree bit for bit.
    (Both fits here, not the kit's shared one: a fit from another moment of the process may have run with
    another number of threads, whose round-off differs.)"""
    first = _Fit(cls, problem).scores
    again = _Fit(cls, problem).scores
    assert _same_bits(first, again), (
        f"two fits after torch.manual_seed({SEED}) gave different scores (largest difference "
        f"{float((first - again).abs().max()):.3g}): draw random numbers from torch's global generator or from "
        f"a generator of the entry's own with a fixed seed")


def check_survives_pickling(cls: type[Entry], problem: InfluenceProblem) -> None:
    """pickle.loads(pickle.dumps(fitted entry)) gives the same scores (to 1e-12, relative). (An instance of a
    class made by ``Entry.at`` pickles as the recipe ``Base.at(**point)`` and its attributes.)"""
    fit = _fit(cls, problem)
    try:
        clone = pickle.loads(pickle.dumps(fit.entry))
    except Exception as exc:  # noqa: BLE001 - whatever pickle raises is this check's failure
        raise AssertionError(
            f"the fitted entry does not survive pickling ({type(exc).__name__}: {exc}): keep no lambdas, closures "
            f"or handles in its state, or leave them out in __getstate__ and rebuild them") from exc
    got = _with_rng(fit.rng_after_fit, lambda: clone.scores(problem))
    assert _close(got, fit.scores, PICKLE_RTOL), (
        f"the unpickled entry's scores differ from the fitted entry's by {_relative(got, fit.scores):.2e} "
        f"(relative), more than {PICKLE_RTOL:g}")


def check_curvature_is_symmetric_psd(cls: type[Entry], problem: InfluenceProblem) -> None:
    """A declared curvature (dense from the eigen form, else the operator applied to I) is symmetric and
    positive semi-definite: smallest eigenvalue >= -1e-10 x the largest magnitude."""
    fit = _fit(cls, problem)
    if not (fit.entry.has("eigen") or fit.entry.has("operator")):
        return  # declares no curvature
    dense = fit.curvature
    size, asymmetry = float(dense.abs().max()), float((dense - dense.T).abs().max())
    assert asymmetry <= 1e-8 * size, (
        f"the curvature is not symmetric: max |C - C^T| = {asymmetry:.3e}, max |C| = {size:.3e}")
    eigvals = torch.linalg.eigvalsh((dense + dense.T) / 2)
    smallest, largest = float(eigvals[0]), float(eigvals.abs().max())
    assert smallest >= -PSD_RTOL * largest, (
        f"the curvature is not positive semi-definite: smallest eigenvalue {smallest:.3e}, largest magnitude "
        f"{largest:.3e} ({int((eigvals < -PSD_RTOL * largest).sum())} of {len(eigvals)} below -{PSD_RTOL:g} x it)")


@lru_cache(maxsize=1)
def _convex_hessian_eigen() -> EigenCurvature:
    return EigenCurvature.from_dense(tiny_convex_problem().hessian)


def _mean_spearman(scores: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over test points of the Spearman correlation over training points (NaN where undefined)."""
    from influence_bench.metrics.correlation import spearman_columns

    with np.errstate(all="ignore"):
        return float(np.nanmean(spearman_columns(scores.T.cpu().numpy(), reference.T.cpu().numpy())))


@lru_cache(maxsize=8)
def _convex_references(damping: float) -> tuple[torch.Tensor, float]:
    """The exact influence -g_j^T (H + damping I)^-1 g_i on the convex task, and the gradient dot product's
    mean Spearman correlation with it."""
    problem = tiny_convex_problem()
    exact = -_convex_hessian_eigen().inverse_matvec(problem.test_grads, damping) @ problem.train_grads.T
    dot = -problem.test_grads @ problem.train_grads.T
    return exact, _mean_spearman(dot, exact)


def check_beats_gradient_dot_product_on_convex_task(cls: type[Entry], problem: InfluenceProblem) -> None:
    """On the kit's convex task (``tiny_convex_problem``, whatever problem is given) the scores correlate
    better with the exact influence -g_j^T (H + damping I)^-1 g_i than the gradient dot product -g_j^T g_i
    does (mean over test points of Spearman over training points; H the exact Hessian, damping the
    entry's). An entry that declares no curvature passes."""
    if not _declares_curvature(cls()):
        return  # declares no curvature: nothing to beat the dot product with
    convex = tiny_convex_problem()
    reason = cls().skip(convex)
    assert reason is None, f"declined the convex task: {reason}"
    fit = _fit(cls, convex)
    exact, dot = _convex_references(fit.entry.damping)
    ours = _mean_spearman(fit.scores, exact)
    assert ours > dot, (
        f"on the convex task its scores correlate with the exact influence at a mean Spearman of {ours:.4f}, "
        f"no better than the gradient dot product's {dot:.4f} (damping {fit.entry.damping:g})")


CHECKS: tuple[Check, ...] = (
    check_init_stores_parameters,
    check_fit_returns_self,
    check_fit_leaves_problem_unchanged,
    check_capabilities_are_declared,
    check_inverse_shape_dtype_finite,
    check_scores_shape_dtype_finite,
    check_scores_use_the_inverse,
    check_query_subset_matches_rows,
    check_inverse_matches_dense_solve,
    check_large_damping_gives_gradient_dot_product,
    check_same_seed_same_scores,
    check_survives_pickling,
    check_curvature_is_symmetric_psd,
    check_beats_gradient_dot_product_on_convex_task,
)


# -- running them -----------------------------------------------------------------------------------
def _name(check: Check) -> str:
    return check.__name__.removeprefix("check_")


def entry_checks(cls: type[Entry]) -> Iterator[tuple[str, Check]]:
    """(id, check) pairs; the id is ``"{point label or name}-{check without check_}"``, which ``pytest -k`` picks."""
    for check in CHECKS:
        yield f"{cls.point_label or cls.name}-{_name(check)}", check


def known_failures(cls: type[Entry]) -> dict[str, str]:
    """The checks the class declares it fails (name without ``check_`` -> reason), read from ``cls()``
    (``Entry.known_failures``: a property where it depends on the parameter point). A name that is no
    check raises ValueError."""
    try:
        declared = cls().known_failures
    except Exception:  # noqa: BLE001 - a constructor that fails is check_init_stores_parameters' to report
        declared = vars(cls).get("known_failures", {})
    declared = dict(declared) if isinstance(declared, Mapping) else {}
    unknown = sorted(set(declared) - {_name(c) for c in CHECKS})
    if unknown:
        raise ValueError(f"{cls.__name__}.known_failures names {unknown}, which are no checks of the kit; "
                         f"its checks: {', '.join(_name(c) for c in CHECKS)}")
    return declared


def parametrize_with_checks(classes: Iterable[type[Entry]]):
    """``pytest.mark.parametrize(("entry_cls", "check"), ...)`` over every (class, check) pair, with the ids
    of ``entry_checks``; a declared known failure is marked ``xfail(strict=True, reason=...)``."""
    import pytest

    params = []
    for cls in classes:
        known = known_failures(cls)
        for check_id, check in entry_checks(cls):
            reason = known.get(_name(check))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason is not None else []
            params.append(pytest.param(cls, check, id=check_id, marks=marks))
    return pytest.mark.parametrize(("entry_cls", "check"), params)


def _outcomes(cls: type[Entry], problem: InfluenceProblem) -> Iterator[tuple[CheckOutcome, BaseException | None]]:
    """Each check's outcome, in order, with the exception it raised (None where it passed)."""
    known = known_failures(cls)
    for check_id, check in entry_checks(cls):
        name, error, message = _name(check), None, ""
        start = time.perf_counter()
        try:
            check(cls, problem)
        except AssertionError as exc:
            error, message = exc, str(exc) or "AssertionError"
        except Exception as exc:  # noqa: BLE001 - a crash inside a check is that check's failure
            error, message = exc, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        if name not in known:
            status = FAILED if error is not None else PASSED
        elif error is not None:
            status, message = KNOWN_FAILURE, f"{known[name]} (failed as declared: {message})"
        else:
            status, message = UNEXPECTED_PASS, f"declared a known failure ({known[name]}), yet it passed"
        yield CheckOutcome(check_id, name, status, message, seconds), error


def run_checks(cls: type[Entry], problem: InfluenceProblem | None = None) -> list[CheckOutcome]:
    """Every check on ``cls``, never raising for a failing one: a ``CheckOutcome`` each, in order."""
    problem = tiny_problem() if problem is None else problem
    return [outcome for outcome, _ in _outcomes(cls, problem)]


def check_entry(cls: type[Entry], problem: InfluenceProblem | None = None) -> None:
    """Run the checks on ``cls`` in order; the first that fails (a declared known failure excepted) or
    passes although declared a known failure raises AssertionError naming it."""
    problem = tiny_problem() if problem is None else problem
    for outcome, error in _outcomes(cls, problem):
        if outcome.status in (FAILED, UNEXPECTED_PASS):
            raise AssertionError(f"{outcome.id}: {outcome.message}") from error


# -- device discipline ------------------------------------------------------------------------------
_FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.eye, torch.arange, torch.linspace,
                        torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor,
                        torch.as_tensor, torch.empty_strided})


class DeviceDiscipline(torch.overrides.TorchFunctionMode):
    """Records every tensor that code of ``packages`` creates without naming its device.

    An entry runs on the device of its problem (``InfluenceProblem(device=...)``); a factory call such
    as ``torch.zeros(n)`` in its code puts that tensor on the CPU whatever the problem's device, and the
    first product with a GPU tensor fails. This finds such calls on a CPU-only machine::

        with DeviceDiscipline(("my_entries",)) as found:
            MyEntry().fit(problem).scores(problem)
        assert not found.calls, found.calls  # {"my_entries/entry.py:42": "zeros", ...}

    ``*_like`` factories and operations on tensors follow their inputs and are not recorded; neither
    are calls inside torch or inside packages not listed (their authors' business).
    """

    def __init__(self, packages: tuple[str, ...] = ("influence_bench",)):
        super().__init__()
        self.packages = tuple(packages)
        self.calls: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
                frame = frame.f_back
            where = frame.f_code.co_filename if frame is not None else ""
            for package in self.packages:
                marker = f"{os.sep}{package}{os.sep}"
                if marker in where:
                    self.calls.setdefault(f"{package}/{where.split(marker, 1)[1]}:{frame.f_lineno}", func.__name__)
        return func(*args, **kwargs)
