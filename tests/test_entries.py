"""Every entry against a dense reference on a tiny problem."""

import numpy as np
import pytest
import torch

from conftest import PACKAGE_ENTRIES, PACKAGE_TASKS
from influence_bench.curvature import curvlinops_adapter
from influence_bench.curvature.eigen import EigenCurvature, KroneckerEigenBlock, LowRankEigenBlock
from influence_bench.entries import ENTRIES, MissingCapabilityError, NotFittedError, UnknownEntryError, get_entry
from influence_bench.metrics.matrix import matrix_metrics
from influence_bench.metrics.reference import exact_reference
from influence_bench.metrics.registry import MetricContext, compute_all
from influence_bench.problem import InfluenceProblem
from influence_bench.tasks import TASKS
from influence_bench.tasks.spec import TaskData
from influence_bench.testing import check_entry, parametrize_with_checks

# the entries that ship with the package, as registered before any test module was imported: plugin entries
# (tests/bench_plugins.py), registered for a while by other modules' tests, are never among them
BUILTIN = dict(PACKAGE_ENTRIES)


@pytest.fixture(scope="module")
def problem(tiny_problem):
    """The tiny problem afresh, its shared matrices computed before any entry is fitted, as a run does
    (runner/shared.py): the entries then read them. (The session's ``tiny_problem`` may already hold a GGN
    diagonal or layer blocks that another module's test had computed alone, equal to the GGN's only to rounding.)"""
    p = tiny_problem
    fresh = InfluenceProblem(p.model, TaskData(p.x_train, p.y_train, p.x_test, p.y_test), name=p.name)
    fresh.checkpoints = p.checkpoints
    _ = fresh.ggn, fresh.ggn_eigen, fresh.hessian
    return fresh


@pytest.fixture(scope="module")
def fitted(problem):
    return {name: cls().fit(problem) for name, cls in BUILTIN.items()}


def curvature_fidelity(entry, problem, damping):
    """Every section-5 metric of a fitted entry against the exact reference: name -> value."""
    reference = exact_reference(problem, damping)
    ihvp = entry.inverse(problem.test_grads, damping)
    ctx = MetricContext(entry, problem, reference, damping, entry.eps, ihvp, -ihvp @ problem.train_grads.T)
    return {name: m.value for name, m in compute_all(ctx).items()}


def test_only_the_package_entries_and_tasks_are_registered_here():
    """Test modules that register plugins (tests/bench_plugins.py) remove them again (tests/conftest.py), in
    whatever order the tests run."""
    assert ENTRIES == PACKAGE_ENTRIES, list(ENTRIES)
    assert TASKS == PACKAGE_TASKS, list(TASKS)


def test_registry_has_the_paper_chain():
    for name in ("hessian", "ggn", "block-ggn", "block-hessian", "ekfac", "kfac",
                 "kfac-eigvals-in-block-basis", "diag-ggn", "identity"):
        assert name in ENTRIES
    with pytest.raises(UnknownEntryError, match="valid entries: .*kfac"):
        get_entry("kfca")


@parametrize_with_checks(BUILTIN.values())
def test_conformance_kit(entry_cls, check, tiny_problem):
    """Every registered entry passes every check of the public kit (``pytest -k kfac-`` picks one), but the
    known failures it declares (``Entry.known_failures``), which must fail (strict xfail)."""
    check(entry_cls, tiny_problem)


def test_kit_catches_a_wrong_entry(tiny_problem):
    class SignFlipped(get_entry("ggn")):
        def scores(self, problem, damping=None, queries=None):
            return -super().scores(problem, damping, queries)

    with pytest.raises(AssertionError, match="scores_use_the_inverse"):
        check_entry(SignFlipped, tiny_problem)


def test_exact_entries_reproduce_the_shared_matrices(fitted, problem):
    assert torch.allclose(fitted["ggn"].eigen_form().dense(), problem.ggn, atol=1e-12)
    assert torch.allclose(fitted["hessian"].eigen_form().dense(), problem.hessian, atol=1e-12)
    block = fitted["block-ggn"].eigen_form().dense()
    for s in problem.layer_slices:
        assert torch.allclose(block[s, s], problem.ggn[s, s], atol=1e-12)
    s0, s1 = problem.layer_slices[:2]
    assert block[s0, s1].abs().max() == 0 and problem.ggn[s0, s1].abs().max() > 0
    assert torch.equal(torch.diagonal(fitted["diag-ggn"].eigen_form().dense()), torch.diagonal(problem.ggn))


def test_kfac_type2_on_one_data_point_is_the_exact_layer_block(tiny_problem):
    p = tiny_problem
    one = InfluenceProblem(p.model, TaskData(p.x_train[:1], p.y_train[:1], p.x_test, p.y_test))
    kfac = get_entry("kfac")().fit(one).eigen_form().dense()
    for s in one.layer_slices:
        assert torch.allclose(kfac[s, s], one.ggn[s, s], atol=1e-12)
    # and on many points it is not (K-FAC is an approximation)
    many = get_entry("kfac")().fit(tiny_problem).eigen_form().dense()
    s = tiny_problem.layer_slices[0]
    assert torch.linalg.norm(many[s, s] - tiny_problem.ggn[s, s]) > 1e-3 * torch.linalg.norm(tiny_problem.ggn[s, s])


def test_kronecker_factors_are_mean_loss_covariances(tiny_problem):
    (a, g), *_ = curvlinops_adapter.kronecker_factors(tiny_problem.model, tiny_problem.x_train, tiny_problem.y_train, tiny_problem.loss)
    x = torch.cat([tiny_problem.x_train, torch.ones(tiny_problem.n_train, 1, dtype=torch.float64)], dim=1)
    assert torch.allclose(a, x.T @ x / tiny_problem.n_train, atol=1e-12)


def test_ekfac_type2_keeps_the_trace_and_has_no_eigenvalue_mismatch(fitted, problem):
    ekfac = fitted["ekfac"].eigen_form()
    assert np.isclose(ekfac.trace(), float(torch.trace(problem.ggn)), rtol=1e-10)
    metrics = matrix_metrics(ekfac, problem.ggn)
    assert metrics["eigval_mismatch"] < 1e-10
    kfac = matrix_metrics(fitted["kfac"].eigen_form(), problem.ggn)
    assert kfac["eigval_mismatch"] > 1e-3  # K-FAC's eigenvalues are not the block's
    # same basis: identical basis mismatch
    assert np.isclose(kfac["basis_mismatch"], metrics["basis_mismatch"], rtol=1e-8)


def test_hybrid_has_block_basis_and_kfac_eigenvalues(fitted, problem):
    hybrid = fitted["kfac-eigvals-in-block-basis"].eigen_form()
    block = fitted["block-ggn"].eigen_form()
    kfac = fitted["kfac"].eigen_form()
    for h, b in zip(hybrid.blocks, block.blocks):
        assert torch.equal(h.eigvecs, b.eigvecs)
    for h, k in zip(hybrid.eigvals, kfac.eigvals):
        assert torch.equal(h, torch.sort(k).values)
    # block basis: zero basis mismatch inside the blocks, only the off-block part of G remains
    off_block = matrix_metrics(block, problem.ggn)["basis_mismatch"]
    assert np.isclose(matrix_metrics(hybrid, problem.ggn)["basis_mismatch"], off_block, rtol=1e-8)


def test_ggn_against_itself_is_perfect(fitted, problem):
    m = curvature_fidelity(fitted["ggn"], problem, damping=1e-4)
    assert m["rel_fro"] < 1e-10 and m["spectrum_err"] < 1e-12 and m["fidelity"] == pytest.approx(1.0)
    assert m["eigval_mismatch"] < 1e-10 and m["basis_mismatch"] < 1e-8
    assert m["topk_overlap_10"] == pytest.approx(1.0) and m["ihvp_err"] < 1e-10


def test_fidelity_metrics_against_dense_formulas(fitted, problem):
    entry = fitted["kfac"]
    c, g = entry.eigen_form().dense(), problem.ggn
    m = curvature_fidelity(entry, problem, damping=1e-3)
    assert m["rel_fro"] == pytest.approx(float(torch.linalg.norm(c - g) / torch.linalg.norm(g)), rel=1e-8)
    eig_c, eig_g = torch.linalg.eigvalsh(c), torch.linalg.eigvalsh(g)
    assert m["spectrum_err"] == pytest.approx(float(torch.linalg.norm(eig_c - eig_g) / torch.linalg.norm(eig_g)), rel=1e-6)
    q = torch.block_diag(*(block.basis() for block in entry.eigen_form().blocks))
    qgq = q.T @ g @ q
    d = torch.diagonal(qgq)
    lam = entry.eigen_form().all_eigvals()
    assert m["eigval_mismatch"] == pytest.approx(float(torch.linalg.norm(lam - d) / torch.linalg.norm(d)), rel=1e-8)
    assert m["basis_mismatch"] == pytest.approx(
        float(torch.linalg.norm(qgq - torch.diag(d)) / torch.linalg.norm(g)), rel=1e-6)
    s = problem.layer_slices[1]
    assert m["spectrum_err/layer1"] == pytest.approx(float(
        torch.linalg.norm(torch.linalg.eigvalsh(c[s, s]) - torch.linalg.eigvalsh(g[s, s]))
        / torch.linalg.norm(torch.linalg.eigvalsh(g[s, s]))), rel=1e-6)
    v_c = torch.linalg.eigh(c).eigenvectors[:, -10:]
    u_g = torch.linalg.eigh(g).eigenvectors[:, -10:]
    assert m["topk_overlap_10"] == pytest.approx(float((v_c.T @ u_g).square().sum() / 10), rel=1e-6)
    eye = torch.eye(g.shape[0], dtype=torch.float64)
    xc = torch.linalg.solve(c + 1e-3 * eye, problem.test_grads.T).T
    xg = torch.linalg.solve(g + 1e-3 * eye, problem.test_grads.T).T
    ratio = torch.linalg.norm(xc - xg, dim=1) / torch.linalg.norm(xg, dim=1)
    assert m["ihvp_err"] == pytest.approx(float(torch.median(ratio)), rel=1e-5)


def test_entry_without_curvature_reports_not_applicable(fitted, problem):
    entry = fitted["identity"]
    m = curvature_fidelity(entry, problem, damping=1e-4)
    for name in ("rel_fro", "spectrum_err", "eigval_mismatch", "basis_mismatch", "topk_overlap_10"):
        assert np.isnan(m[name])
    assert -1 <= m["fidelity"] <= 1
    # an inverse is enough for ihvp_err: the identity's is the distance of g from (G + lam I)^-1 g
    exact = exact_reference(problem, 1e-4).ihvp
    ratio = torch.linalg.norm(problem.test_grads - exact, dim=1) / torch.linalg.norm(exact, dim=1)
    assert m["ihvp_err"] == pytest.approx(float(torch.median(ratio)), rel=1e-10)
    with pytest.raises(MissingCapabilityError, match="no eigen form"):
        entry.eigen_form()


def test_unfitted_entry_says_so(tiny_problem):
    with pytest.raises(NotFittedError, match="call fit"):
        get_entry("kfac")().scores(tiny_problem)


def test_diagonal_form_round_trips():
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    curv = EigenCurvature.diagonal(values)
    assert torch.equal(curv.dense(), torch.diag(values))


def test_kronecker_block_is_the_permuted_kronecker_product_without_forming_it():
    """Q = P (Q_G (x) Q_A): the factor-wise projection equals the dense Kronecker basis in the suite's order."""
    gen = torch.Generator().manual_seed(0)
    q_g = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64)).Q
    q_a = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64)).Q  # 4 inputs + bias
    lam = torch.rand(15, generator=gen, dtype=torch.float64)
    block = KroneckerEigenBlock(q_g, q_a, lam, bias=True)
    # the row-major joint [W | b] ([3, 5]) -> the suite's [vec(W); b]
    perm = torch.tensor([o * 5 + i for o in range(3) for i in range(4)] + [o * 5 + 4 for o in range(3)])
    dense_basis = torch.kron(q_g, q_a)[perm]
    assert torch.allclose(block.basis(), dense_basis, atol=1e-14)
    v = torch.randn(2, 15, generator=gen, dtype=torch.float64)
    assert torch.allclose(block.map(v, lam), v @ (dense_basis * lam) @ dense_basis.T, atol=1e-13)
    g = torch.randn(15, 15, generator=gen, dtype=torch.float64)
    assert torch.allclose(block.basis_product(g + g.T), dense_basis.T @ (g + g.T) @ dense_basis, atol=1e-12)


def test_low_rank_block_inverts_exactly_on_the_whole_space():
    gen = torch.Generator().manual_seed(4)
    u = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64)).Q
    lam = torch.tensor([3.0, 0.5], dtype=torch.float64)
    curv = EigenCurvature([slice(0, 6)], [LowRankEigenBlock(u, lam)])
    dense = (u * lam) @ u.T
    v = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(dense + 0.1 * torch.eye(6, dtype=torch.float64), v.T).T
    assert torch.allclose(curv.inverse_matvec(v, 0.1), expected, atol=1e-12)
    assert not curv.complete_basis and torch.allclose(curv.dense(), dense, atol=1e-14)
