"""The conformance kit for entries, in the spirit of scikit-learn's ``check_estimator``.

A researcher who writes an entry runs ``check_entry(MyEntry)`` (or parametrises a pytest with
``entry_checks``) before submitting it: every check is a plain function on a tiny problem with a
dense reference, and raises AssertionError with a message that says what is wrong.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Callable, Iterator

import torch

from influence_bench.entries.base import Entry, MissingCapabilityError, NotFittedError
from influence_bench.problem import InfluenceProblem

Check = Callable[[type[Entry], InfluenceProblem], None]
_FITTED: dict[tuple[type, int], Entry] = {}


def fitted(cls: type[Entry], problem: InfluenceProblem) -> Entry:
    """``cls()`` fitted on the problem, once per (class, problem): the checks read it, never refit it."""
    key = (cls, id(problem))
    if key not in _FITTED:
        _FITTED[key] = cls().fit(problem)
    return _FITTED[key]


@lru_cache(maxsize=1)
def tiny_problem() -> InfluenceProblem:
    """digits with a 64-6-5-10 MLP (485 parameters), 96 training and 12 test points, trained 30 epochs."""
    from influence_bench.tasks import get_task
    from influence_bench.tasks.spec import TaskData
    from influence_bench.training import train_batched, train_single

    digits = get_task("digits-mlp")
    spec = dataclasses.replace(digits, name="digits-tiny-check", layer_sizes=(64, 6, 5, 10))
    d = digits.data
    data = TaskData(d.x_train[:96], d.y_train[:96], d.x_test[:12], d.y_test[:12])
    recipe = dataclasses.replace(spec.recipe, epochs=30)
    model = train_single(spec, data, torch.ones(data.n_train, dtype=torch.bool), seed=0, recipe=recipe)
    problem = InfluenceProblem(model, data, name="tiny-check")
    kept: list[tuple[float, torch.nn.Module]] = []  # checkpoints after epochs 10 and 20, for the entries that trace training

    def keep(epoch: int, lr: float, stack) -> None:
        if epoch in (10, 20):
            kept.append((lr, stack.model(0, spec)))

    train_batched(spec, data, torch.ones(1, data.n_train, dtype=torch.bool), [0], recipe, at_epoch_end=keep)
    problem.set_checkpoints([m for _, m in kept] + [model], [lr for lr, _ in kept] + [recipe.learning_rates()[-1]])
    return problem


def _own_curvature(entry: Entry, problem: InfluenceProblem) -> torch.Tensor:
    """The entry's own curvature as a dense [P, P] matrix, from its eigen form or its operator."""
    if entry.has("eigen"):
        return entry.eigen_form().dense()
    eye = torch.eye(problem.n_params, dtype=torch.float64)
    return entry.curvature_matvec(eye)


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    return bool(torch.linalg.norm(got - expected) <= rtol * torch.linalg.norm(expected) + 1e-300)


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


def check_fit_returns_self(cls: type[Entry], problem: InfluenceProblem) -> None:
    entry = cls()
    assert entry.fit(problem) is entry, "fit(problem) must return self"
    assert entry.is_fitted(), "fit must leave fitted state in attributes ending in _"


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
    scores = fitted(cls, problem).scores(problem)
    assert tuple(scores.shape) == (problem.n_test, problem.n_train), (
        f"scores must be [n_test, n_train] = {(problem.n_test, problem.n_train)}, got {tuple(scores.shape)}")
    assert scores.dtype == torch.float64, f"scores must be float64, got {scores.dtype}"
    assert torch.isfinite(scores).all(), "scores contain NaN or inf"


def check_scores_use_the_inverse(cls: type[Entry], problem: InfluenceProblem) -> None:
    """s = - g_test (C + damping I)^-1 g_train^T, at two dampings, also for a subset of queries."""
    entry = fitted(cls, problem)
    if entry.has("scores"):
        return  # an entry with scores of its own is checked against its own reference
    for damping in (entry.damping, 1e-1):
        expected = -entry.inverse(problem.test_grads, damping) @ problem.train_grads.T
        got = entry.scores(problem, damping=damping)
        assert _close(got, expected, max(entry.inverse_rtol, 1e-9)), (
            f"scores at damping {damping} differ from -(C + damping I)^-1 g_test . g_train")
    queries = torch.tensor([2, 0])
    assert _close(entry.scores(problem, queries=queries), entry.scores(problem)[queries], max(entry.inverse_rtol, 1e-9)), (
        "scores for a subset of queries differ from those rows of the full scores")


def check_inverse_matches_dense_solve(cls: type[Entry], problem: InfluenceProblem) -> None:
    """(C + damping I)^-1 v against a dense eigen-solve of the entry's own curvature, eps-truncated."""
    entry = fitted(cls, problem)
    if not (entry.has("eigen") or entry.has("operator")):
        return  # no curvature: nothing to solve against (the inverse is declared, e.g. the identity)
    if not entry.inverse_is_exact:
        return  # a declared other damping scheme (K-FAC's pi-damping): tested against its own reference
    dense = _own_curvature(entry, problem)
    assert torch.allclose(dense, dense.T, atol=1e-8 * float(dense.abs().max())), "the curvature is not symmetric"
    damping = 1e-2
    lam, q = torch.linalg.eigh(dense + damping * torch.eye(dense.shape[0], dtype=dense.dtype))
    inv = torch.where(lam > entry.eps, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))
    v = problem.test_grads[:3]
    expected = ((v @ q) * inv) @ q.T
    got = entry.inverse(v, damping)
    error = float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))
    assert error <= entry.inverse_rtol, (
        f"inverse differs from a dense solve of the entry's own curvature by {error:.2e} (relative), "
        f"more than its declared inverse_rtol {entry.inverse_rtol:g}")


def check_large_damping_gives_gradient_dot_product(cls: type[Entry], problem: InfluenceProblem) -> None:
    """As damping grows, damping * s -> - g_test^T g_train (the curvature stops mattering), or the entry's
    declared limit (``Entry.undamped_limit``: TRAK's is the projected dot product)."""
    entry = fitted(cls, problem)
    if not entry.has_damping or entry.has("scores"):
        return
    scale = float(torch.linalg.norm(_own_curvature(entry, problem), ord=2)) if (
        entry.has("eigen") or entry.has("operator")) else 1.0
    damping = 1e6 * max(scale, 1.0)
    dot = -entry.undamped_limit(problem.test_grads) @ problem.train_grads.T
    got = damping * entry.scores(problem, damping=damping)  # = dot + O(||C|| / damping) = dot (1 + 1e-6)
    assert torch.allclose(got, dot, rtol=1e-4, atol=1e-4 * float(dot.abs().max())), (
        "at a huge damping the scores should approach the gradient dot product / damping")


CHECKS: tuple[Check, ...] = (
    check_init_stores_parameters,
    check_fit_returns_self,
    check_capabilities_are_declared,
    check_inverse_shape_dtype_finite,
    check_scores_shape_dtype_finite,
    check_scores_use_the_inverse,
    check_inverse_matches_dense_solve,
    check_large_damping_gives_gradient_dot_product,
)


def entry_checks(cls: type[Entry]) -> Iterator[tuple[str, Check]]:
    """(id, check) pairs, for ``pytest.mark.parametrize``."""
    for check in CHECKS:
        yield f"{cls.point_label or cls.name}-{check.__name__.removeprefix('check_')}", check


def check_entry(cls: type[Entry], problem: InfluenceProblem | None = None) -> None:
    """Run every check on ``cls``; the first failure raises AssertionError naming the check."""
    problem = problem or tiny_problem()
    for check_id, check in entry_checks(cls):
        try:
            check(cls, problem)
        except AssertionError as exc:
            raise AssertionError(f"{check_id}: {exc}") from exc
