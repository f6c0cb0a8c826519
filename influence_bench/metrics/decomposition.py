"""The decomposition chain (PROTOCOL.md section 6): where attribution accuracy is lost.

Rungs H -> GGN -> block-GGN -> EK-FAC -> K-FAC. The drop of a step is LDS(previous) - LDS(next);
its share is the drop over the whole GGN -> K-FAC drop. The two changes from block-GGN to K-FAC do
not commute, so they are also taken in the other order through the hybrid (block-GGN eigenbasis
with K-FAC eigenvalues), and their average is a two-player Shapley split of the loss.
"""

from __future__ import annotations

import math

import pandas as pd

CHAIN = ("hessian", "ggn", "block-ggn", "ekfac", "kfac")
HYBRID = "kfac-eigvals-in-block-basis"


def chain_table(lds: dict[str, float]) -> pd.DataFrame:
    """One row per step of the chain: from, to, LDS of both, drop and share of the GGN -> K-FAC drop."""
    total = lds.get("ggn", math.nan) - lds.get("kfac", math.nan)
    rows = []
    for a, b in zip(CHAIN[:-1], CHAIN[1:]):
        drop = lds.get(a, math.nan) - lds.get(b, math.nan)
        share = drop / total if a != "hessian" and total and math.isfinite(total) else math.nan
        rows.append({"step": f"{a} -> {b}", "from": a, "to": b, "lds_from": lds.get(a, math.nan),
                     "lds_to": lds.get(b, math.nan), "drop": drop, "share_of_ggn_to_kfac": share})
    return pd.DataFrame(rows)


def basis_eigenvalue_split(lds: dict[str, float]) -> pd.DataFrame:
    """The block-GGN -> K-FAC drop split into a basis and an eigenvalue part, in both orders."""
    block, ekfac, hybrid, kfac = (lds.get(k, math.nan) for k in ("block-ggn", "ekfac", HYBRID, "kfac"))
    basis_first = {"basis": block - ekfac, "eigenvalues": ekfac - kfac}  # block -> EK-FAC -> K-FAC
    eigen_first = {"eigenvalues": block - hybrid, "basis": hybrid - kfac}  # block -> hybrid -> K-FAC
    total = block - kfac
    rows = []
    for part in ("basis", "eigenvalues"):
        shapley = (basis_first[part] + eigen_first[part]) / 2
        rows.append({"change": part, "basis_first": basis_first[part], "eigenvalues_first": eigen_first[part],
                     "shapley": shapley, "share_of_block_to_kfac": shapley / total if total else math.nan})
    return pd.DataFrame(rows)
