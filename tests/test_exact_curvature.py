"""The shared exact quantities against independent dense references."""

import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

from influence_bench.curvature import curvlinops_adapter
from influence_bench.curvature.eigen import EigenCurvature, truncated_inverse
from influence_bench.curvature.exact import flatten, named_params, unflatten


def _mean_loss(problem):
    params = named_params(problem.model)

    def loss(v):
        logits = functional_call(problem.model, unflatten(v, params), (problem.x_train,))
        return F.cross_entropy(logits, problem.y_train)

    return loss, flatten(params)


def test_exact_ggn_equals_curvlinops_operator(tiny_problem):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = curvlinops_adapter.ggn_operator(tiny_problem.model, tiny_problem.x_train, tiny_problem.y_train, tiny_problem.loss)
    reference = op @ torch.eye(tiny_problem.n_params, dtype=torch.float64)
    ggn = tiny_problem.ggn
    assert torch.linalg.norm(ggn - reference) / torch.linalg.norm(reference) < 1e-8


def test_exact_hessian_equals_torch_func_hessian(tiny_problem):
    loss, flat = _mean_loss(tiny_problem)
    reference = hessian(loss)(flat)
    assert torch.linalg.norm(tiny_problem.hessian - reference) / torch.linalg.norm(reference) < 1e-10
    # the Hessian and the GGN differ (the residual term is not zero for a trained-but-imperfect net)
    assert torch.linalg.norm(tiny_problem.hessian - tiny_problem.ggn) > 1e-6


def test_per_example_gradients_match_autograd(tiny_problem):
    model = tiny_problem.model
    for i in (0, 7):
        model.zero_grad()
        params = [p.requires_grad_(True) for p in model.parameters()]
        loss = F.cross_entropy(model(tiny_problem.x_train[i : i + 1]), tiny_problem.y_train[i : i + 1])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
        for p in params:
            p.requires_grad_(False)
        assert torch.allclose(tiny_problem.train_grads[i], g, atol=1e-12)
    # and the mean of the per-example gradients is the gradient of the mean loss
    loss, flat = _mean_loss(tiny_problem)
    assert torch.allclose(tiny_problem.train_grads.mean(0), torch.func.grad(loss)(flat), atol=1e-12)


def test_truncated_inverse_drops_directions_at_or_below_eps():
    lam = torch.tensor([-1.0, -1e-4, 0.0, 1.0], dtype=torch.float64)
    inv = truncated_inverse(lam, damping=1e-4, eps=1e-6)
    assert inv.tolist() == [0.0, 0.0, 1 / 1e-4, 1 / (1 + 1e-4)]


def test_eigen_curvature_inverse_matches_dense_solve():
    torch.manual_seed(0)
    a = torch.randn(7, 7, dtype=torch.float64)
    spd = a @ a.T + 0.1 * torch.eye(7, dtype=torch.float64)
    curv = EigenCurvature.from_dense(spd)
    v = torch.randn(3, 7, dtype=torch.float64)
    expected = torch.linalg.solve(spd + 0.5 * torch.eye(7, dtype=torch.float64), v.T).T
    assert torch.allclose(curv.inverse_matvec(v, 0.5), expected, atol=1e-12)
    assert torch.allclose(curv.dense(), spd, atol=1e-12)


def test_ggn_blocks_and_diagonal_computed_alone_match_the_full_ggn(tiny_problem):
    from influence_bench.curvature.exact import exact_ggn_blocks, exact_ggn_diagonal

    p = tiny_problem
    blocks = exact_ggn_blocks(p.model, p.x_train, p.layer_slices, p.loss, chunk=17)
    for block, s in zip(blocks, p.layer_slices):
        assert torch.allclose(block, p.ggn[s, s], atol=1e-14)
    assert torch.allclose(exact_ggn_diagonal(p.model, p.x_train, p.loss, chunk=17), torch.diagonal(p.ggn), atol=1e-14)
