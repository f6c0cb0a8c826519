import math

import pytest

from influence_bench.metrics.decomposition import basis_eigenvalue_split, chain_table

LDS = {"hessian": 0.50, "ggn": 0.48, "block-ggn": 0.40, "ekfac": 0.36, "kfac": 0.20,
       "kfac-eigvals-in-block-basis": 0.30}


def test_chain_drops_and_shares():
    table = chain_table(LDS).set_index("step")
    assert table.loc["ggn -> block-ggn", "drop"] == pytest.approx(0.08)
    assert table.loc["ekfac -> kfac", "drop"] == pytest.approx(0.16)
    # shares of the GGN -> K-FAC drop (0.28) add up to one
    shares = table.loc[["ggn -> block-ggn", "block-ggn -> ekfac", "ekfac -> kfac"], "share_of_ggn_to_kfac"]
    assert shares.sum() == pytest.approx(1.0)
    assert shares["ekfac -> kfac"] == pytest.approx(0.16 / 0.28)
    assert math.isnan(table.loc["hessian -> ggn", "share_of_ggn_to_kfac"])


def test_basis_eigenvalue_split_in_both_orders():
    split = basis_eigenvalue_split(LDS).set_index("change")
    # basis first: block -> ekfac (basis) = 0.04, ekfac -> kfac (eigenvalues) = 0.16
    # eigenvalues first: block -> hybrid (eigenvalues) = 0.10, hybrid -> kfac (basis) = 0.10
    assert split.loc["basis", "basis_first"] == pytest.approx(0.04)
    assert split.loc["eigenvalues", "basis_first"] == pytest.approx(0.16)
    assert split.loc["eigenvalues", "eigenvalues_first"] == pytest.approx(0.10)
    assert split.loc["basis", "eigenvalues_first"] == pytest.approx(0.10)
    assert split.loc["basis", "shapley"] == pytest.approx(0.07)
    assert split.loc["eigenvalues", "shapley"] == pytest.approx(0.13)
    assert split.shapley.sum() == pytest.approx(LDS["block-ggn"] - LDS["kfac"])


def test_missing_rungs_are_nan_not_zero():
    table = chain_table({"ggn": 0.5, "kfac": 0.3}).set_index("step")
    assert math.isnan(table.loc["ggn -> block-ggn", "drop"])
