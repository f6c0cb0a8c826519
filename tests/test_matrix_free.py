"""The matrix-free entries (cg, lissa, arnoldi) against dense references on the tiny problem."""

import pytest
import torch

import influence_bench.entries  # noqa: F401  (registers the dense entries, ``ggn`` among them)
import influence_bench.entries.arnoldi as arnoldi
import influence_bench.entries.cg as cg
import influence_bench.entries.lissa as lissa
from influence_bench.curvature import curvlinops_adapter
from influence_bench.entries import get_entry


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))


def dense_solve(problem, rows: torch.Tensor, damping: float) -> torch.Tensor:
    """(G + damping I)^-1 v for each row [k, P], from the dense GGN."""
    eye = torch.eye(problem.n_params, dtype=torch.float64)
    return torch.linalg.solve(problem.ggn + damping * eye, rows.T).T


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny problem's products are small: on a shared 2-core machine a second intra-op thread
    only waits for a core (a GGN product took 30x longer under load), so this module runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows(tiny_problem):
    return tiny_problem.test_grads[3:9]  # [6, P]: other rows than the kit's


# the whole conformance kit runs on these entries in tests/test_entries.py (``pytest -k cg-`` picks one)


# -- cg ----------------------------------------------------------------------------------------------
def test_cg_converges_to_the_dense_solve_and_reports_iterations(tiny_problem, rows):
    entry = cg.CG(tol=1e-10, max_iter=500).fit(tiny_problem)
    assert entry.diagnostics() == {}
    error = relative_error(entry.inverse(rows, 1e-2), dense_solve(tiny_problem, rows, 1e-2))
    assert error < 1e-6
    used = entry.diagnostics()["cg_iterations_last"]
    assert 10 < used < 500  # converged before max_iter, after more than a handful of products
    entry.inverse(rows, 1.0)  # an easy system: fewer iterations
    diagnostics = entry.diagnostics()
    assert diagnostics["cg_iterations_last"] < used == diagnostics["cg_iterations_max"]


def test_cg_max_iter_is_used(tiny_problem, rows):
    expected = dense_solve(tiny_problem, rows, 1e-2)
    entry = cg.CG(max_iter=2).fit(tiny_problem)
    assert relative_error(entry.inverse(rows, 1e-2), expected) > 0.1
    assert entry.diagnostics()["cg_iterations_last"] == 2


def test_lanczos_gives_curvlinops_cg_iterates_for_every_damping(tiny_problem, rows):
    """One Lanczos run per vector, read at two dampings, equals curvlinops' CG run at each damping
    for the same number of iterations (the same Krylov iterates), and costs no further products."""
    shared = cg.CG(max_iter=15, tol=1e-30).fit(tiny_problem)
    separate = cg.CG(max_iter=15, tol=1e-30, solver="curvlinops").fit(tiny_problem)
    calls = []
    shared.operator_ = _counting(shared.operator_, calls)
    for damping in (1e-2, 1e-1):
        ours, theirs = shared.inverse(rows, damping), separate.inverse(rows, damping)
        assert relative_error(ours, theirs) < 1e-6
        assert shared.diagnostics()["cg_iterations_last"] == separate.diagnostics()["cg_iterations_last"] == 15
    assert len(calls) == 15  # the second damping reused the first Lanczos run
    # after 15 iterations neither has converged at 1e-2: they agree on the iterate, not on the solution
    assert relative_error(ours, dense_solve(tiny_problem, rows, 1e-1)) > 1e-8


def test_cg_keeps_a_large_basis_in_float32_and_bounds_its_cache(tiny_problem, rows, monkeypatch):
    """Above FLOAT64_BASIS_BYTES the basis is float32, and the iterates stay within 1e-5 of the float64
    ones; above CACHE_BYTES the oldest runs are dropped, and a dropped row is run again, not lost."""
    exact64 = cg.CG(max_iter=15, tol=1e-30).fit(tiny_problem).inverse(rows, 1e-2)
    monkeypatch.setattr(cg, "FLOAT64_BASIS_BYTES", 0)
    one_run = 15 * 3 * tiny_problem.n_params * 4  # three rows' float32 basis
    monkeypatch.setattr(cg, "CACHE_BYTES", one_run)
    entry = cg.CG(max_iter=15, tol=1e-30).fit(tiny_problem)
    calls = []
    entry.operator_ = _counting(entry.operator_, calls)
    first, second = entry.inverse(rows[:3], 1e-2), entry.inverse(rows[3:], 1e-2)
    assert [run.basis.dtype for run in entry.krylov_.values()] == [torch.float32]  # the first run was dropped
    assert relative_error(torch.cat([first, second]), exact64) < 1e-5
    assert relative_error(torch.cat([first, second]), exact64) > 0  # float32 storage, not float64
    entry.inverse(rows[3:], 1e-1)
    assert len(calls) == 30  # the cached rows were reused at a new damping
    again = entry.inverse(rows[:3], 1e-2)
    assert len(calls) == 45 and torch.equal(again, first)  # the dropped rows: Lanczos again, same iterates


def test_rows_matvec_in_chunks_equals_one_product(tiny_problem, rows):
    operator = tiny_problem.ggn_operator
    whole = curvlinops_adapter.rows_matvec(operator, chunk=len(rows))(rows)
    pieces = curvlinops_adapter.rows_matvec(operator, chunk=4)(rows)
    assert torch.allclose(pieces, whole, rtol=1e-12, atol=1e-14)
    assert torch.allclose(whole, rows @ tiny_problem.ggn, rtol=1e-8, atol=1e-12)


def _counting(operator, calls):
    """The operator, with every product recorded in ``calls``."""
    matvec = curvlinops_adapter.rows_matvec(operator)

    def counted(v):
        calls.append(v.shape[0])
        return matvec(v)

    return curvlinops_adapter.as_operator(counted, operator.shape[0])


# -- lissa -------------------------------------------------------------------------------------------
def test_lissa_minibatch_ggn_is_curvlinops_ggn(tiny_problem, rows):
    p = tiny_problem
    x, y = p.x_train[10:26], p.y_train[10:26]
    batch = curvlinops_adapter.ggn_operator(p.model, x, y, p.loss)
    expected = curvlinops_adapter.rows_matvec(batch)(rows)
    assert relative_error(lissa.minibatch_ggn(p.model, p.loss)(x, rows), expected) < 1e-12
    dense = curvlinops_adapter.rows_matvec(batch)(torch.eye(p.n_params, dtype=torch.float64))
    top = float(torch.linalg.eigvalsh(dense)[-1])
    assert abs(lissa.minibatch_top_eigenvalue(p.model, x, p.loss) - top) < 1e-10 * top


def test_lissa_full_batch_is_the_truncated_neumann_series(tiny_problem, rows):
    """batch_size=None: h_T / scale = (1/scale) sum_{t=0}^{T} (I - (G + d I)/scale)^t v, in G's eigenbasis."""
    damping, scale, depth = 1e-2, 3.0, 40
    lam, q = torch.linalg.eigh(tiny_problem.ggn)
    mu = lam + damping
    series = (1 - (1 - mu / scale) ** (depth + 1)) / mu  # (1/scale) sum_t (1 - mu/scale)^t
    expected = ((rows @ q) * series) @ q.T
    entry = lissa.LiSSA(batch_size=None, depth=depth, scale=scale).fit(tiny_problem)
    assert relative_error(entry.inverse(rows, damping), expected) < 1e-10
    # and curvlinops' deterministic Neumann series (its scale multiplies the operator: 1 / ours)
    neumann = curvlinops_adapter.neumann_inverse(tiny_problem.ggn_operator, damping, num_terms=depth, scale=1 / scale)
    assert relative_error(curvlinops_adapter.rows_matvec(neumann)(rows), expected) < 1e-10
    # the automatic full-batch scale is 1.5 (largest eigenvalue of G + damping)
    auto = lissa.LiSSA(batch_size=None, depth=1).fit(tiny_problem)
    assert auto._scale(damping) == pytest.approx(1.5 * (float(lam[-1]) + damping), rel=1e-6)


def test_lissa_converges_toward_the_dense_solve_with_depth(tiny_problem, rows):
    expected = dense_solve(tiny_problem, rows, 1e-2)
    errors = [relative_error(lissa.LiSSA(depth=depth).fit(tiny_problem).inverse(rows, 1e-2), expected)
              for depth in (100, lissa.LiSSA().depth, 600)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] <= lissa.LiSSA.inverse_rtol  # the defaults
    assert errors[2] < 0.45


def test_lissa_is_deterministic_for_a_seed_and_rowwise(tiny_problem, rows):
    entry = lissa.LiSSA(depth=50).fit(tiny_problem)
    first = entry.inverse(rows)
    assert torch.equal(entry.inverse(rows), first)
    assert torch.equal(lissa.LiSSA(depth=50).fit(tiny_problem).inverse(rows), first)
    # each row's result does not depend on the other rows (the kit checks this only to inverse_rtol)
    assert relative_error(entry.inverse(rows[[4, 1]]), first[[4, 1]]) < 1e-10
    other_seed = lissa.LiSSA(depth=50, seed=1).fit(tiny_problem).inverse(rows)
    assert relative_error(other_seed, first) > 1e-3


def test_lissa_fails_loudly_when_it_diverges(tiny_problem, rows):
    top = float(torch.linalg.eigvalsh(tiny_problem.ggn)[-1])
    entry = lissa.LiSSA(scale=0.01 * top).fit(tiny_problem)
    with pytest.raises(FloatingPointError, match="diverged.*scale"):
        entry.inverse(rows, 1e-2)


# -- arnoldi -----------------------------------------------------------------------------------------
def test_arnoldi_with_k_equal_p_is_the_ggn_entry(tiny_problem):
    full = arnoldi.Arnoldi(k=tiny_problem.n_params).fit(tiny_problem)
    ggn = get_entry("ggn")().fit(tiny_problem)
    for damping in (None, 1e-2):
        expected = ggn.scores(tiny_problem, damping)
        assert relative_error(full.scores(tiny_problem, damping), expected) < 1e-8


def test_arnoldi_finds_the_top_eigenpairs(tiny_problem, rows):
    k, damping = 10, 1e-2
    entry = arnoldi.Arnoldi(k=k).fit(tiny_problem)
    block = entry.eigen_form().blocks[0]
    lam, q = torch.linalg.eigh(tiny_problem.ggn)
    top_lam, top_q = lam[-k:].flip(0), q[:, -k:].flip(1)
    assert torch.allclose(block.top_eigvals, top_lam, rtol=1e-6, atol=0)
    assert torch.allclose(block.u.T @ block.u, torch.eye(k, dtype=torch.float64), atol=1e-10)
    # the damped inverse of the rank-k curvature, complement eigenvalue 0, on the whole space
    coords = rows @ top_q
    expected = (coords / (top_lam + damping)) @ top_q.T + (rows - coords @ top_q.T) / damping
    assert relative_error(entry.inverse(rows, damping), expected) < 1e-8
    assert relative_error(entry.curvature_matvec(rows), (coords * top_lam) @ top_q.T) < 1e-8
