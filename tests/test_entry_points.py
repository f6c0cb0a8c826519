"""Entry parameters: every point of a grid matches curvlinops' own operator (or a dense reference),
and a run names a point as ``entry[param=value,...]``."""

import itertools

import pytest
import torch

from influence_bench.curvature import curvlinops_adapter
from influence_bench.curvature.eigen import truncated_inverse
from influence_bench.entries import ENTRIES, UnknownEntryError, get_entry, make_entry, parse_point
from influence_bench.testing import entry_checks

KRONECKER_POINTS = [dict(fisher=f, separate=s) for f, s in itertools.product(("type-2", "mc", "empirical"), (False, True))]
KRONECKER_POINTS.append(dict(fisher="mc", samples=4, separate=True))


def _vectors(p, k=4, seed=3):
    return torch.randn(k, p.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _apply(op, v):
    return (op @ v.T.contiguous()).T


def _close(ours, theirs, rtol=1e-8):
    return torch.allclose(ours, theirs, rtol=rtol, atol=rtol * 1e-4 * float(theirs.abs().max()))


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
@pytest.mark.parametrize("point", KRONECKER_POINTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_kronecker_points_match_curvlinops_own_operator(name, point, tiny_problem):
    """The eigen form applied to vectors equals curvlinops' K-FAC / EK-FAC operator with the same settings."""
    p = tiny_problem
    make = {"kfac": curvlinops_adapter.kfac_operator, "ekfac": curvlinops_adapter.ekfac_operator}[name]
    op = make(p.model, p.x_train, p.y_train, p.loss, point["fisher"], point["separate"], point.get("samples", 1))
    v = _vectors(p)
    entry = get_entry(name)(**point).fit(p)
    assert _close(entry.curvature_matvec(v), _apply(op, v))
    # separate=True: one block per tensor (twice the blocks of a model with biases), none across weight and bias
    n_layers = len(p.layer_slices)
    assert len(entry.eigen_form().blocks) == (2 * n_layers if point["separate"] else n_layers)


def test_fisher_types_and_separation_change_the_curvature(tiny_problem):
    """The points are different curvatures (a grid that ignored a parameter would pass the test above trivially)."""
    v = _vectors(tiny_problem, k=1)
    out = {tuple(sorted(pt.items())): get_entry("kfac")(**pt).fit(tiny_problem).curvature_matvec(v) for pt in KRONECKER_POINTS}
    values = list(out.values())
    for a, b in itertools.combinations(range(len(values)), 2):
        assert not torch.allclose(values[a], values[b], rtol=1e-6), (list(out)[a], list(out)[b])


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("heuristic", [False, True])
def test_kfac_inverse_matches_curvlinops_inverse(separate, heuristic, tiny_problem):
    """exact damping and the heuristic pi-damping, each against KFACInverseLinearOperator."""
    p = tiny_problem
    op = curvlinops_adapter.kfac_operator(p.model, p.x_train, p.y_train, p.loss, "mc", separate)
    v = _vectors(p)
    damping = 1e-2
    theirs = _apply(curvlinops_adapter.kfac_inverse_operator(op, damping, heuristic), v)
    entry = make_entry(f"kfac[fisher=mc,separate={str(separate).lower()},inverse={'heuristic' if heuristic else 'exact'}]")
    ours = entry.fit(p).inverse(v, damping)
    assert _close(ours, theirs, rtol=1e-6)
    assert entry.inverse_is_exact is (not heuristic)


def test_heuristic_damping_differs_from_exact(tiny_problem):
    v = _vectors(tiny_problem, k=2)
    exact = make_entry("kfac").fit(tiny_problem).inverse(v, 1e-2)
    heuristic = make_entry("kfac[inverse=heuristic]").fit(tiny_problem).inverse(v, 1e-2)
    assert torch.linalg.norm(exact - heuristic) > 1e-2 * torch.linalg.norm(exact)


@pytest.mark.parametrize("name", ["block-ggn", "block-hessian"])
def test_blocks_per_tensor_are_curvlinops_matrix_restricted_to_each_tensor(name, tiny_problem):
    p = tiny_problem
    op = curvlinops_adapter.ggn_operator(p.model, p.x_train, p.y_train, p.loss) if name == "block-ggn" else \
        curvlinops_adapter.hessian_operator(p.model, p.x_train, p.y_train, p.loss)
    full = _apply(op, torch.eye(p.n_params, dtype=torch.float64))
    expected = torch.zeros_like(full)
    for s in p.tensor_slices:
        expected[s, s] = full[s, s]
    ours = make_entry(f"{name}[blocks=tensor]").fit(p).eigen_form().dense()
    assert torch.allclose(ours, expected, atol=1e-9 * float(full.abs().max()))
    w, b = p.tensor_slices[:2]  # the first layer's weight and bias: coupled in the layer block, apart here
    assert ours[w, b].abs().max() == 0 and full[w, b].abs().max() > 0


@pytest.mark.parametrize("negative", ["zero", "abs", "keep"])
def test_hessian_treatments_of_negative_eigenvalues(negative, tiny_problem):
    p = tiny_problem
    dense = _apply(curvlinops_adapter.hessian_operator(p.model, p.x_train, p.y_train, p.loss),
                   torch.eye(p.n_params, dtype=torch.float64))
    lam, q = torch.linalg.eigh((dense + dense.T) / 2)
    assert (lam < -1e-4).sum() > 0  # the tiny problem has negative directions, or this test shows nothing
    damping, eps = 1e-4, 1e-6
    if negative == "zero":
        inv = truncated_inverse(lam, damping, eps)
    elif negative == "abs":
        inv = 1.0 / (lam.abs() + damping)
    else:
        inv = 1.0 / (lam + damping)
    v = _vectors(p)
    expected = ((v @ q) * inv) @ q.T
    ours = make_entry(f"hessian[negative={negative}]", damping, eps).fit(p).inverse(v)
    assert _close(ours, expected, rtol=1e-6)


def test_points_have_canonical_names():
    assert parse_point("kfac[ separate=true , fisher=mc ]") == ("kfac", {"separate": "true", "fisher": "mc"})
    assert make_entry("kfac[separate=true,fisher=mc]").name == "kfac[fisher=mc,separate=true]"
    assert make_entry("kfac[fisher=type-2]").name == "kfac"  # a default is left out
    assert make_entry("block-ggn[blocks=tensor]").params == {"blocks": "tensor"}
    assert make_entry("kfac[fisher=mc,samples=4]").params["samples"] == 4


@pytest.mark.parametrize(("name", "message"), [
    ("kfac[fisher=mcc]", "fisher takes type-2, mc, empirical"),
    ("kfac[damping=1]", "has no parameter 'damping'; its parameters: fisher, samples, separate, approx, inverse"),
    ("kfac[samples=4]", "samples applies to fisher=mc only"),
    ("kfac[fisher]", "write param=value"),
    ("kfac[fisher=mc,fisher=mc]", "given twice"),
    ("identity[x=1]", "its parameters: none"),
])
def test_bad_points_say_what_is_valid(name, message):
    with pytest.raises(UnknownEntryError, match=message.replace("[", r"\[")):
        make_entry(name)


def test_grid_lists_every_valid_point_and_the_mc_variants_are_points():
    points = get_entry("kfac").grid()
    assert len(points) == (2 + 3) * 2 * 2 * 2  # (type-2, empirical, mc x 3 sample counts) x separate x approx x inverse
    assert "kfac-mc" not in ENTRIES and make_entry("kfac[fisher=mc]").params["fisher"] == "mc"


def test_a_point_runs_the_conformance_kit_under_its_own_name(tiny_problem):
    point = get_entry("ekfac").at(fisher="mc", separate=True)
    ids = [i for i, _ in entry_checks(point)]
    assert ids[0].startswith("ekfac[fisher=mc,separate=true]-")
    for _, check in entry_checks(point):
        check(point, tiny_problem)


def test_layer_spectrum_of_per_tensor_blocks_is_the_union_of_its_blocks(tiny_problem):
    """Per-layer metrics still apply when the blocks are finer than a layer (weight and bias apart)."""
    from influence_bench.metrics.spectrum import layer_eigvals

    curv = make_entry("kfac[separate=true]").fit(tiny_problem).eigen_form()
    dense = curv.dense()
    for layer in tiny_problem.layer_slices:
        expected = torch.linalg.eigvalsh(dense[layer, layer])
        assert torch.allclose(torch.sort(layer_eigvals(curv, layer)).values, expected, atol=1e-10)


def test_entry_lists_keep_the_commas_of_a_point_together():
    from influence_bench.entries import split_names

    assert split_names("identity, kfac[fisher=mc,separate=true],block-ggn[blocks=tensor]") == [
        "identity", "kfac[fisher=mc,separate=true]", "block-ggn[blocks=tensor]"]


def test_cli_names_a_bad_point_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from influence_bench.cli import app

    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["run", "--preset", "smoke", "--entries", "identity,kfac[fisher=mc,separate=maybe]",
                                      "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "entry 'kfac': separate=maybe is not in its grid; separate takes false, true" in message
    assert not out.exists()


def test_registry_keeps_the_chain_order_and_list_shows_each_grid():
    import json

    from typer.testing import CliRunner

    from influence_bench.cli import app

    assert list(ENTRIES)[:6] == ["hessian", "block-hessian", "ggn", "block-ggn", "ekfac", "kfac"]
    listed = {e["name"]: e["parameters"] for e in json.loads(CliRunner().invoke(app, ["list", "--json"]).stdout)["entries"]}
    assert listed["kfac"] == ("fisher=type-2|mc|empirical; samples=1|4|16; separate=false|true; approx=expand|reduce; "
                              "inverse=exact|heuristic")
    assert listed["identity"] == "-"
