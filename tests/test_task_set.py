"""The fixed task set (issue 10): every task's training, loss, model and data against a reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from influence_bench.curvature import curvlinops_adapter, exact
from influence_bench.entries import make_entry
from influence_bench.problem import InfluenceProblem
from influence_bench.tasks import TASK_SET, TASK_VERSIONS, TASKS, get_task, register_task
from influence_bench.tasks.models import MLP
from influence_bench.tasks.spec import TaskData
from influence_bench.training import train_batched, train_single
from influence_bench.training.batched import fast_path_reason


def subset(data: TaskData, n_train: int, n_test: int) -> TaskData:
    return TaskData(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test])


def trained_problem(name: str, n_train: int = 120, n_test: int = 16, epochs: int = 3, **changes) -> InfluenceProblem:
    spec = dataclasses.replace(get_task(name), **changes)
    data = subset(spec.data, n_train, n_test)
    recipe = dataclasses.replace(spec.recipe, epochs=epochs)
    model = train_single(spec, data, torch.ones(n_train, dtype=torch.bool), seed=0, recipe=recipe)
    return InfluenceProblem(model, data, name=name, loss=spec.loss)


def dense(apply, n: int) -> torch.Tensor:
    return apply(torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("name", [*TASK_SET, "digits-mlp-cosine"])
def test_a_batch_of_one_follows_the_single_model_loop(name):
    """Every task's model, trained by the generic engine (and the MLP fast path where it applies) as a batch of
    one, ends where the plain PyTorch loop does: same initial weights, batches, loss and SGD steps."""
    spec = get_task(name)
    data = subset(spec.data, 160, 8)
    member = torch.ones(160, dtype=torch.bool)
    member[::7] = False
    recipe = dataclasses.replace(spec.recipe, epochs=2)
    single = train_single(spec, data, member, seed=3, recipe=recipe)
    engines = ["generic"] + ([] if fast_path_reason(spec) else ["mlp"])
    for engine in engines:
        stack = train_batched(spec, data, member[None], [3], recipe, engine=engine)
        for p, q in zip(single.parameters(), stack.model(0, spec).parameters()):
            assert torch.allclose(p.detach(), q, rtol=0, atol=2e-6), (name, engine)
        expected = spec.loss.per_example(single(data.x_test), data.y_test).detach()
        assert torch.allclose(stack.per_example_loss(data.x_test, data.y_test)[0], expected, atol=1e-5)


def test_the_task_set_declares_what_the_issue_asks():
    sizes = {name: get_task(name).n_params for name in TASK_SET}
    assert sizes["digits-logreg"] == 650 and sizes["digits-mlp"] == 6570
    assert 1000 < sizes["digits-cnn"] < 10_000 and sizes["wide-mlp"] >= 100_000
    assert get_task("diabetes-mlp").loss.name == "squared-error"
    assert fast_path_reason(get_task("digits-cnn")) is not None
    for name in TASK_SET:
        spec = get_task(name)
        assert sum(p.numel() for p in spec.make_model().parameters()) == spec.n_params
        assert spec.data.n_test >= 80


def test_label_noise_flips_ten_percent_of_the_training_labels_only():
    clean, noisy = get_task("digits-mlp"), get_task("digits-mlp-noisy")
    flipped = noisy.mislabeled
    assert int(flipped.sum()) == round(0.1 * clean.data.n_train)
    assert bool((noisy.data.y_train[flipped] != clean.data.y_train[flipped]).all())
    assert torch.equal(noisy.data.y_train[~flipped], clean.data.y_train[~flipped])
    assert torch.equal(noisy.data.y_test, clean.data.y_test) and torch.equal(noisy.data.x_train, clean.data.x_train)
    assert noisy.fingerprint != clean.fingerprint and clean.mislabeled is None


def test_squared_error_curvature_against_its_closed_form():
    """diabetes-mlp: the GGN is (2/n) sum J^T J (the squared error's Hessian in the output is 2), equal to
    curvlinops' with MSELoss; the Hessian to curvlinops'; gradients to autograd of each example's error."""
    p = trained_problem("diabetes-mlp", n_train=60, n_test=8)
    jac = exact.per_example_jacobians(p.model, p.x_train)  # [n, 1, P]
    closed = 2.0 * torch.einsum("ncp,ncq->pq", jac, jac) / p.n_train
    assert torch.allclose(p.ggn, closed, atol=1e-12 * float(closed.abs().max()))
    op = curvlinops_adapter.ggn_operator(p.model, p.x_train, p.y_train, p.loss)
    assert torch.allclose(dense(curvlinops_adapter.rows_matvec(op), p.n_params), closed, atol=1e-10)
    hess = curvlinops_adapter.hessian_operator(p.model, p.x_train, p.y_train, p.loss)
    assert torch.allclose(dense(curvlinops_adapter.rows_matvec(hess), p.n_params), p.hessian, atol=1e-10)
    model = p.model
    i = 5
    params = list(model.parameters())
    for q in params:
        q.requires_grad_(True)
    loss = ((model(p.x_train[i:i + 1]) - p.y_train[i:i + 1]) ** 2).sum()
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert torch.allclose(p.train_grads[i], expected, atol=1e-12)


def test_entries_use_the_tasks_loss_not_cross_entropy():
    """On the regression task the exact and Kronecker entries match curvlinops' operators built with MSELoss, and
    a curvature computed as if the loss were cross-entropy would be zero (a softmax of one output is constant)."""
    p = trained_problem("diabetes-mlp", n_train=60, n_test=8)
    v = torch.randn(3, p.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ggn = make_entry("ggn").fit(p)
    assert torch.allclose(ggn.curvature_matvec(v), v @ p.ggn, atol=1e-10)
    kfac = make_entry("kfac").fit(p)
    op = curvlinops_adapter.kfac_operator(p.model, p.x_train, p.y_train, p.loss)
    assert torch.allclose(kfac.curvature_matvec(v), curvlinops_adapter.rows_matvec(op)(v), atol=1e-8)
    assert float(exact.exact_ggn(p.model, p.x_train, "cross-entropy").abs().max()) < 1e-12 < float(p.ggn.abs().max())
    assert "squared-error" in (make_entry("ekfac-kronfluence").skip(p) or "squared-error")


def test_a_cnn_curvature_and_kfac_expand_against_reduce():
    """digits-cnn: the exact GGN (vmapped Jacobians through the convolutions) equals curvlinops'; K-FAC's eigen
    form equals curvlinops' K-FAC operator for both approximations, which differ here and not on an MLP."""
    p = trained_problem("digits-cnn", n_train=48, n_test=8, epochs=1)
    op = curvlinops_adapter.ggn_operator(p.model, p.x_train, p.y_train, p.loss)
    assert torch.allclose(dense(curvlinops_adapter.rows_matvec(op), p.n_params), p.ggn, atol=1e-10)
    assert len(p.layer_slices) == 3 and p.layer_slices[-1].stop == p.n_params
    v = torch.randn(4, p.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    products = {}
    for approx in ("expand", "reduce"):
        entry = make_entry(f"kfac[approx={approx}]" if approx == "reduce" else "kfac").fit(p)
        theirs = curvlinops_adapter.kfac_operator(p.model, p.x_train, p.y_train, p.loss, approx=approx)
        products[approx] = entry.curvature_matvec(v)
        assert torch.allclose(products[approx], curvlinops_adapter.rows_matvec(theirs)(v), rtol=1e-8, atol=1e-12)
    gap = torch.linalg.norm(products["expand"] - products["reduce"]) / torch.linalg.norm(products["expand"])
    assert gap > 1e-2
    mlp = trained_problem("digits-logreg", n_train=48, n_test=8, epochs=1)
    w = torch.randn(2, mlp.n_params, dtype=torch.float64)
    a, b = (make_entry(n).fit(mlp).curvature_matvec(w) for n in ("kfac", "kfac[approx=reduce]"))
    assert torch.allclose(a, b, atol=1e-12)


def test_mislabel_auc_is_the_self_influence_roc_auc():
    from sklearn.metrics import roc_auc_score

    from influence_bench.metrics.mislabel import self_influence

    p = trained_problem("digits-mlp-noisy", n_train=80, n_test=8, model=MLP((64, 10)))  # P = 650
    p = InfluenceProblem(p.model, TaskData(p.x_train, p.y_train, p.x_test, p.y_test), loss=p.loss,
                         mislabeled=get_task("digits-mlp-noisy").mislabeled[:80])
    entry = make_entry("ggn").fit(p)
    damping = 1e-3
    values = self_influence(entry, p.train_grads, damping)
    solved = torch.linalg.solve(p.ggn + damping * torch.eye(p.n_params, dtype=torch.float64), p.train_grads.T).T
    assert torch.allclose(values, (solved * p.train_grads).sum(1), rtol=1e-6)
    flipped = p.mislabeled.numpy()
    pos, neg = values.numpy()[flipped], values.numpy()[~flipped]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc_score(flipped, values.numpy()) == pytest.approx(pairwise)


def test_task_versions_coexist():
    base = get_task("digits-logreg")
    v2 = dataclasses.replace(base, name="digits-versioned", version=2,
                             recipe=dataclasses.replace(base.recipe, epochs=5))
    v1 = dataclasses.replace(base, name="digits-versioned", version=1)
    register_task(v2, "test")
    register_task(v1, "test")  # an older version registered later does not take the name
    assert get_task("digits-versioned") is v2 and get_task("digits-versioned.v1") is v1
    assert TASKS["digits-versioned"] is v2 and {"digits-versioned.v1", "digits-versioned.v2"} <= set(TASK_VERSIONS)
    assert v1.fingerprint != v2.fingerprint
    with pytest.raises(ValueError, match="a changed task is a new version"):
        register_task(dataclasses.replace(v1, description="edited in place"), "elsewhere")


def test_published_fingerprints_do_not_move_and_the_data_keys_the_cache():
    """digits-mlp v1 keeps the fingerprint its results were published with; the data's own bytes enter the
    cache key, so the same declaration on other data is another ground truth."""
    digits = get_task("digits-mlp")
    assert digits.fingerprint == "3d55c53762196616df97deac5067bf7e91eb3add36da3dcd5581bde8655470ae"
    other = dataclasses.replace(digits, load_arrays=lambda: (digits.arrays[0][:500], digits.arrays[1][:500]))
    assert other.fingerprint == digits.fingerprint and other.cache_dict() != digits.cache_dict()


def test_the_dual_solve_of_the_reference_is_the_dense_inverse(tiny_problem):
    """Above the dense limit the reference's inverse products come from the GGN's dual (Woodbury, float32
    preconditioner, exact-operator refinement): equal to the dense solve to the refinement's tolerance."""
    from influence_bench.metrics.reference import dual_solve

    p = tiny_problem
    rows = p.test_grads[:5]
    for damping in (1e-4, 1e-2):
        solved, residual, steps = dual_solve(p, rows, damping, tol=1e-11)
        dense = torch.linalg.solve(p.ggn + damping * torch.eye(p.n_params, dtype=torch.float64), rows.T).T
        assert residual < 1e-11 and steps < 30
        assert torch.allclose(solved, dense, rtol=0, atol=1e-8 * float(dense.abs().max()))


def test_the_ggn_square_root_chunks_by_memory(tiny_problem, monkeypatch):
    """A wide model's Jacobian chunks are cut by bytes, not only by points: the same GGN diagonal and blocks
    from chunks of a few points as from one chunk of all."""
    p = tiny_problem
    whole = exact.exact_ggn_diagonal(p.model, p.x_train, p.loss, chunk=10_000)
    monkeypatch.setattr(exact, "CHUNK_BYTES", 8 * 10 * p.n_params * 3)  # three points per chunk
    rows = list(exact._ggn_sqrt_rows(p.model, p.x_train, p.loss, 256))
    assert rows[0].shape[0] == 3 * 10 and len(rows) == -(-p.n_train // 3)
    assert torch.allclose(exact.exact_ggn_diagonal(p.model, p.x_train, p.loss), whole, atol=1e-14)
