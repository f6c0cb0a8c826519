"""The conformance kit itself (``influence_bench.testing``): each check catches a deliberately broken entry,
with the message it gives; known failures are data; ``run_checks`` reports and never raises.

The broken entries are subclasses of built-in ones, never registered. Those that must survive pickling up
to the point of their own bug are defined at module level (pickle finds a class by its name); an entry that
writes to its problem is fitted on a copy of the tiny problem of its own.
"""

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from influence_bench.curvature.eigen import DenseEigenBlock, EigenCurvature
from influence_bench.entries import Entry, get_entry
from influence_bench.entries.gradient_cosine import GradientCosine
from influence_bench.entries.hessian import BlockHessian, Hessian
from influence_bench.entries.identity import Identity
from influence_bench.problem import InfluenceProblem
from influence_bench.tasks.spec import TaskData
from influence_bench.testing import (
    CHECKS,
    STATUSES,
    CheckOutcome,
    check_beats_gradient_dot_product_on_convex_task,
    check_curvature_is_symmetric_psd,
    check_entry,
    check_fit_leaves_problem_unchanged,
    check_query_subset_matches_rows,
    check_same_seed_same_scores,
    check_survives_pickling,
    entry_checks,
    fitted,
    known_failures,
    parametrize_with_checks,
    run_checks,
    tiny_convex_problem,
)

GGN = get_entry("ggn")


@pytest.fixture
def own_problem(tiny_problem):
    """A copy of the tiny problem (model, data, gradients), for an entry that writes to its problem."""
    p = tiny_problem
    data = TaskData(p.x_train.clone(), p.y_train.clone(), p.x_test.clone(), p.y_test.clone())
    problem = InfluenceProblem(copy.deepcopy(p.model), data, name="own-copy")
    problem.set_gradients(p.train_grads.clone(), p.test_grads.clone())
    return problem


# -- fit leaves the problem unchanged ------------------------------------------------------------------
def test_fit_that_writes_to_the_gradients_is_caught(own_problem):
    class CentresInPlace(Identity):
        def fit(self, problem):
            problem.train_grads -= problem.train_grads.mean(0)  # meant: a centred copy
            return super().fit(problem)

    with pytest.raises(AssertionError, match=r"fit modified the problem's train_grads \(compared bit for bit"):
        check_fit_leaves_problem_unchanged(CentresInPlace, own_problem)


def test_fit_that_perturbs_the_model_and_undoes_it_is_caught(own_problem):
    """w * 1.1 / 1.1 is w up to rounding, not bit for bit."""

    class FiniteDifference(Identity):
        def fit(self, problem):
            with torch.no_grad():
                weight = problem.model[0].weight
                weight *= 1.1
                weight /= 1.1
            return super().fit(problem)

    with pytest.raises(AssertionError, match=r"fit modified the problem's model\.0\.weight \("):
        check_fit_leaves_problem_unchanged(FiniteDifference, own_problem)


# -- the same seed gives the same scores ----------------------------------------------------------
def test_entry_drawing_from_an_unseeded_generator_is_caught(tiny_problem):
    class Unseeded(Identity):
        def fit(self, problem):
            self.jitter_ = float(np.random.default_rng().normal())  # fresh entropy: torch.manual_seed does not reach it
            return self

        def inverse(self, vectors, damping=None):
            return super().inverse(vectors, damping) * (1 + 1e-3 * self.jitter_)

    with pytest.raises(AssertionError, match=r"two fits after torch.manual_seed\(0\) gave different scores"):
        check_same_seed_same_scores(Unseeded, tiny_problem)


def test_entry_drawing_from_torchs_global_generator_passes_and_the_callers_generator_is_kept(tiny_problem):
    class GlobalNoise(Identity):
        def fit(self, problem):
            self.jitter_ = float(torch.randn(()))
            return self

        def inverse(self, vectors, damping=None):
            return super().inverse(vectors, damping) * (1 + 1e-3 * self.jitter_)

    state = torch.get_rng_state()
    check_same_seed_same_scores(GlobalNoise, tiny_problem)
    assert torch.equal(torch.get_rng_state(), state)


# -- a subset of queries ------------------------------------------------------------------------------
def test_scores_of_own_that_reorder_the_queries_are_caught(tiny_problem):
    class SortsQueries(GradientCosine):
        def scores(self, problem, damping=None, queries=None):
            return super().scores(problem, damping, None if queries is None else queries.sort().values)

    with pytest.raises(AssertionError, match=r"scores for a subset of queries \[2, 0\] differ from those rows"):
        check_query_subset_matches_rows(SortsQueries, tiny_problem)


def test_scores_that_ignore_the_queries_are_caught(tiny_problem):
    class IgnoresQueries(Identity):
        def scores(self, problem, damping=None, queries=None):
            return super().scores(problem, damping)

    with pytest.raises(AssertionError, match=r"scores for queries \[2, 0\] must be \[2, n_train\] = \(2, 96\), "
                                             r"got \(12, 96\)"):
        check_query_subset_matches_rows(IgnoresQueries, tiny_problem)


# -- pickling ----------------------------------------------------------------------------------------
class HoldsALambda(Identity):
    def fit(self, problem):
        self.transform_ = lambda v: v
        return self

    def inverse(self, vectors, damping=None):
        return self.transform_(super().inverse(vectors, damping))


class RebuildsAnotherCurvature(GGN):
    """Leaves its eigen form out of its pickle and rebuilds a wrong one (the identity) afterwards."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "eigen_"} | {"n_params_": self.eigen_.dim}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.eigen_ = EigenCurvature.diagonal(torch.ones(state["n_params_"], dtype=torch.float64))


def test_unpicklable_state_is_caught(tiny_problem):
    with pytest.raises(AssertionError, match=r"the fitted entry does not survive pickling \((AttributeError|"
                                             r"PicklingError): Can't (get|pickle) local object"):
        check_survives_pickling(HoldsALambda, tiny_problem)


def test_state_that_unpickles_into_other_scores_is_caught(tiny_problem):
    with pytest.raises(AssertionError, match=r"the unpickled entry's scores differ from the fitted entry's by "
                                             r"\d\.\d\de[+-]\d+ \(relative\), more than 1e-12"):
        check_survives_pickling(RebuildsAnotherCurvature, tiny_problem)


def test_operator_entries_pickle_without_their_operator_and_rebuild_it(tiny_problem):
    """cg and lissa hold curvlinops' GGN operator, whose closures do not pickle: they leave it out and
    rebuild it, and the rebuilt one gives the same curvature-vector products."""
    v = torch.randn(2, tiny_problem.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in ("cg", "lissa"):
        entry = fitted(get_entry(name), tiny_problem)
        clone = pickle.loads(pickle.dumps(entry))
        assert clone.operator_ is not entry.operator_
        assert torch.equal(clone.curvature_matvec(v), entry.curvature_matvec(v))


def test_a_point_made_by_at_survives_pickling_as_the_call_that_makes_it(tiny_problem):
    check_survives_pickling(get_entry("kfac").at(fisher="mc", separate=True), tiny_problem)


# -- a symmetric positive semi-definite curvature -----------------------------------------------------
def test_indefinite_curvature_is_caught(tiny_problem):
    class NegatedGGN(GGN):
        def fit(self, problem):
            self.eigen_ = EigenCurvature.from_dense(-problem.ggn)
            return self

    with pytest.raises(AssertionError, match=r"the curvature is not positive semi-definite: smallest eigenvalue "
                                             r"-\d\.\d+e[+-]\d+, largest magnitude \d\.\d+e[+-]\d+ \(\d+ of 485 below"):
        check_curvature_is_symmetric_psd(NegatedGGN, tiny_problem)


def test_asymmetric_curvature_operator_is_caught(tiny_problem):
    class Asymmetric(Entry):
        name = "asymmetric"
        capabilities = frozenset({"operator"})

        def fit(self, problem):
            self.curvature_ = problem.ggn + 1e-3 * torch.triu(torch.ones_like(problem.ggn), diagonal=1)
            return self

        def curvature_matvec(self, vectors):
            return vectors @ self.curvature_.T

        def inverse(self, vectors, damping=None):
            eye = torch.eye(self.curvature_.shape[0], dtype=torch.float64)
            return torch.linalg.solve(self.curvature_ + self._damping(damping) * eye, vectors.T).T

    with pytest.raises(AssertionError, match=r"the curvature is not symmetric: max \|C - C\^T\| = 1\.000e-03"):
        check_curvature_is_symmetric_psd(Asymmetric, tiny_problem)


# -- beating the gradient dot product on a convex task -------------------------------------------------
def test_curvature_that_holds_its_inverse_eigenvalues_is_caught(tiny_problem):
    class StoresTheInverse(GGN):
        """Its eigen form carries 1 / (lam + damping), the inverse's eigenvalues, instead of lam."""

        def fit(self, problem):
            (block,) = problem.ggn_eigen.blocks
            inverse = 1.0 / (block.eigvals.clamp_min(0) + self.damping)
            self.eigen_ = EigenCurvature(problem.ggn_eigen.slices, [DenseEigenBlock(block.eigvecs, inverse)])
            return self

    with pytest.raises(AssertionError, match=r"on the convex task its scores correlate with the exact influence at a "
                                             r"mean Spearman of 0\.\d+, no better than the gradient dot product's "
                                             r"0\.2\d+ \(damping 0\.0001\)"):
        check_beats_gradient_dot_product_on_convex_task(StoresTheInverse, tiny_problem)


def test_the_convex_task_is_logistic_regression_whose_hessian_is_its_ggn():
    problem = tiny_convex_problem()
    assert problem.n_params == 65 * 10 and len(problem.layer_slices) == 1
    assert torch.allclose(problem.hessian, problem.ggn, rtol=0, atol=1e-12 * float(problem.ggn.abs().max()))
    assert float(torch.linalg.eigvalsh(problem.hessian)[0]) > -1e-12


# -- known failures as data; run_checks and check_entry -------------------------------------------------
class IndefiniteOnPurpose(GGN):
    known_failures = {"curvature_is_symmetric_psd": "its curvature is -G, on purpose",
                      "beats_gradient_dot_product_on_convex_task": "the inverse of -G keeps only G's near-null space"}

    def fit(self, problem):
        self.eigen_ = EigenCurvature.from_dense(-problem.ggn)
        return self


def test_run_checks_reports_every_check_and_a_known_failure(tiny_problem):
    outcomes = run_checks(IndefiniteOnPurpose, tiny_problem)
    assert [o.id for o in outcomes] == [i for i, _ in entry_checks(IndefiniteOnPurpose)]
    assert [o.check for o in outcomes] == [c.__name__.removeprefix("check_") for c in CHECKS]
    assert all(isinstance(o, CheckOutcome) and o.status in STATUSES and o.seconds >= 0 for o in outcomes)
    by_check = {o.check: o for o in outcomes}
    psd = by_check["curvature_is_symmetric_psd"]
    assert psd.id == "ggn-curvature_is_symmetric_psd" and psd.status == "known failure"
    assert psd.message.startswith("its curvature is -G, on purpose (failed as declared: the curvature is not positive")
    assert by_check["fit_returns_self"].status == "passed" and by_check["fit_returns_self"].message == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        psd.status = "passed"
    assert by_check["beats_gradient_dot_product_on_convex_task"].status == "known failure"
    assert [o.status for o in outcomes].count("passed") == len(CHECKS) - 2
    check_entry(IndefiniteOnPurpose, tiny_problem)  # its failures are declared


def test_a_declared_failure_that_passes_is_an_unexpected_pass(tiny_problem):
    class ClaimsTooMuch(Identity):
        known_failures = {"same_seed_same_scores": "(it does not fail)"}

    outcome = {o.check: o for o in run_checks(ClaimsTooMuch, tiny_problem)}["same_seed_same_scores"]
    assert outcome.status == "unexpected pass"
    assert outcome.message == "declared a known failure ((it does not fail)), yet it passed"
    with pytest.raises(AssertionError, match=r"^identity-same_seed_same_scores: declared a known failure"):
        check_entry(ClaimsTooMuch, tiny_problem)


def test_a_crash_inside_a_check_is_a_failed_outcome_and_check_entry_names_the_first(tiny_problem):
    class Crashes(Identity):
        def inverse(self, vectors, damping=None):
            raise RuntimeError("no inverse today")

    outcomes = {o.check: o for o in run_checks(Crashes, tiny_problem)}
    assert outcomes["inverse_shape_dtype_finite"].status == "failed"
    assert outcomes["inverse_shape_dtype_finite"].message == "RuntimeError: no inverse today"
    assert outcomes["init_stores_parameters"].status == "passed"
    with pytest.raises(AssertionError, match=r"^identity-inverse_shape_dtype_finite: RuntimeError: no inverse today"):
        check_entry(Crashes, tiny_problem)


def test_known_failures_name_checks_of_the_kit():
    class Misspelt(Identity):
        known_failures = {"curvature_is_psd": "?"}

    with pytest.raises(ValueError, match=r"names \['curvature_is_psd'\], which are no checks of the kit"):
        known_failures(Misspelt)


def test_known_failures_may_depend_on_the_parameter_point():
    reason = known_failures(Hessian)["curvature_is_symmetric_psd"]
    assert "indefinite" in reason and known_failures(Hessian.at(negative="keep")) == {"curvature_is_symmetric_psd": reason}
    assert known_failures(Hessian.at(negative="abs")) == {} and known_failures(BlockHessian.at(negative="abs")) == {}
    assert known_failures(get_entry("kfac")) == {} and known_failures(get_entry("kfac").at(inverse="heuristic"))


def test_parametrize_with_checks_marks_known_failures_strict_xfail():
    (names, params), = [parametrize_with_checks([Hessian, Hessian.at(negative="abs")]).mark.args]
    assert names == ("entry_cls", "check") and len(params) == 2 * len(CHECKS)
    marked = {p.id: p.marks for p in params if p.marks}
    assert list(marked) == ["hessian-curvature_is_symmetric_psd"]
    (mark,) = marked["hessian-curvature_is_symmetric_psd"]
    assert mark.name == "xfail" and mark.kwargs["strict"] and "indefinite" in mark.kwargs["reason"]


@parametrize_with_checks([Hessian.at(negative="abs"), Hessian.at(negative="keep"), BlockHessian.at(negative="abs")])
def test_the_hessian_points_pass_the_kit_but_their_declared_failures(entry_cls, check, tiny_problem):
    """|H| is positive semi-definite and passes the check that H (negative=zero or keep) fails as declared."""
    check(entry_cls, tiny_problem)
