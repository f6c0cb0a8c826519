"""The entries practitioners run instead of exact curvature (TRAK, TracIn, DataInf, the gradient cosine),
each against a dense or brute-force reference on the conformance kit's tiny problem."""

import pytest
import torch

from influence_bench.entries import make_entry
from influence_bench.entries.datainf import DataInf
from influence_bench.entries.gradient_cosine import GradientCosine
from influence_bench.entries.tracin import TracIn
from influence_bench.entries.trak import TRAK
from influence_bench.testing import check_entry, tiny_problem


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


def relative(got, expected):
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))


def test_trak_with_an_orthogonal_full_projection_is_the_gauss_newton_influence(problem):
    """R orthogonal [P, P]: R^T (R G R^T + d I)^-1 R = (G + d I)^-1, so TRAK's scores are the ggn entry's."""
    q, _ = torch.linalg.qr(torch.randn(problem.n_params, problem.n_params, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(3)))

    class Orthogonal(TRAK):
        def projection_matrix(self, n_params):
            return q.T

    trak = Orthogonal().fit(problem)  # its fit does not depend on the damping
    ggn = make_entry("ggn", eps=0.0).fit(problem)
    for damping in (1e-3, 1e-1):
        assert relative(trak.scores(problem, damping), ggn.scores(problem, damping)) < 1e-8
    random = TRAK(damping=1e-3, dim=256).fit(problem)  # a random projection is not the GGN influence
    assert relative(random.scores(problem), ggn.scores(problem, 1e-3)) > 1e-3


def test_trak_projections_are_seeded_and_scaled():
    gaussian = TRAK(dim=256, projection="gaussian").projection_matrix(400)
    rademacher = TRAK(dim=256).projection_matrix(400)
    assert torch.equal(rademacher, TRAK(dim=256).projection_matrix(400))  # the same seed, the same R
    assert set(rademacher.unique().tolist()) == {-1 / 16, 1 / 16}
    assert abs(float((gaussian ** 2).sum(0).mean()) - 1.0) < 0.05  # E[R^T R] = I: columns of unit norm


def test_trak_over_checkpoints_averages_each_checkpoints_own_projected_influence(problem):
    damping = 1e-2
    ensemble = TRAK(damping=damping, dim=256, checkpoints="all").fit(problem)
    r = ensemble.projection_matrix(problem.n_params)
    expected = 0
    for _, model in problem.checkpoints:  # brute force: each checkpoint's dense GGN and gradients
        from influence_bench.curvature import exact

        g = exact.exact_ggn(model, problem.x_train, problem.loss)
        train = exact.per_example_gradients(model, problem.x_train, problem.y_train, problem.loss)
        test = exact.per_example_gradients(model, problem.x_test, problem.y_test, problem.loss)
        kernel = r @ g @ r.T
        expected = expected - (test @ r.T) @ torch.linalg.solve(kernel + damping * torch.eye(256, dtype=torch.float64),
                                                                r @ train.T)
    assert relative(ensemble.scores(problem), expected / len(problem.checkpoints)) < 1e-7
    assert ensemble.has("scores") and not TRAK(dim=256).has("scores")


def test_tracin_with_one_checkpoint_is_the_learning_rate_weighted_gradient_dot_product(problem):
    lr = problem.checkpoints[-1][0]
    last = TracIn(checkpoints="last").fit(problem)
    assert torch.allclose(last.scores(problem), -lr * problem.test_grads @ problem.train_grads.T, rtol=1e-10, atol=0)
    from influence_bench.curvature import exact

    expected = sum(-rate * exact.per_example_gradients(m, problem.x_test, problem.y_test, problem.loss)
                   @ exact.per_example_gradients(m, problem.x_train, problem.y_train, problem.loss).T for rate, m in problem.checkpoints)
    assert relative(TracIn().fit(problem).scores(problem), expected) < 1e-12
    assert len(problem.checkpoints) == 3 and relative(expected, last.scores(problem)) > 1e-2  # the earlier ones count


def test_tracin_without_checkpoints_is_skipped_with_its_reason(problem):
    from influence_bench.problem import InfluenceProblem
    from influence_bench.tasks.spec import TaskData

    data = TaskData(problem.x_train, problem.y_train, problem.x_test, problem.y_test)
    bare = InfluenceProblem(problem.model, data, name="bare")
    assert "checkpoints" in TracIn().skip(bare) and "checkpoints" in TRAK(checkpoints="all").skip(bare)
    assert TRAK().skip(bare) is None
    with pytest.raises(ValueError, match="checkpoints"):
        TracIn().fit(bare)


@pytest.mark.parametrize("blocks", ["layer", "tensor"])
def test_datainf_matches_its_closed_form_computed_densely(problem, blocks):
    damping = 3e-2
    entry = DataInf(damping=damping, blocks=blocks).fit(problem)
    v = torch.randn(4, problem.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.empty_like(v)
    n = problem.n_train
    for block in problem.block_slices(blocks):
        g = problem.train_grads[:, block]
        eye = torch.eye(g.shape[1], dtype=torch.float64)
        dense = sum(eye - torch.outer(gi, gi) / (damping + gi @ gi) for gi in g) / (n * damping)
        expected[:, block] = v[:, block] @ dense.T
    assert relative(entry.inverse(v), expected) < 1e-12
    layer = DataInf(damping=damping).fit(problem).inverse(v)
    assert blocks == "layer" or relative(layer, expected) > 1e-6  # per tensor is another approximation


def test_gradient_cosine_is_the_negative_cosine_of_each_pair(problem):
    scores = GradientCosine().fit(problem).scores(problem)
    for j, i in [(0, 0), (3, 17), (11, 95)]:
        a, b = problem.test_grads[j], problem.train_grads[i]
        assert abs(float(scores[j, i]) + float(a @ b / (a.norm() * b.norm()))) < 1e-12
    assert float(scores.abs().max()) <= 1.0 + 1e-12


@pytest.mark.parametrize("entry_cls", [TRAK.at(checkpoints="all", dim=256), TRAK.at(projection="gaussian", dim=256),
                                       TracIn.at(checkpoints="last"), DataInf.at(blocks="tensor")],
                         ids=lambda c: c.point_label)
def test_the_other_points_pass_the_conformance_kit(entry_cls):
    check_entry(entry_cls)
