"""The decomposition chain (PROTOCOL.md section 6): where attribution accuracy is lost.

Rungs H -> GGN -> block-GGN -> EK-FAC -> K-FAC. The drop of a step is LDS(previous) - LDS(next),
with a paired bootstrap 95% interval (PROTOCOL.md section 9) and whether it is resolved; its share is
the drop over the whole GGN -> K-FAC drop. The two changes from block-GGN to K-FAC do not commute,
so they are also taken in the other order through the hybrid (block-GGN eigenbasis with K-FAC
eigenvalues), and their average is a two-player Shapley split of the loss, also with its interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from influence_bench.metrics.paired import difference_interval, verdict

CHAIN = ("hessian", "ggn", "block-ggn", "ekfac", "kfac")
HYBRID = "kfac-eigvals-in-block-basis"
HYBRID_RUNG = "hybrid"
# the chain in the suite's configuration (PROTOCOL.md section 6) and in the authors' (section 10): rung -> entry;
# the hybrid rung (block-GGN eigenbasis with K-FAC eigenvalues) is optional
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "ours": {"hessian": "hessian", "ggn": "ggn", "block-ggn": "block-ggn", "ekfac": "ekfac", "kfac": "kfac",
             HYBRID_RUNG: HYBRID},
    "authors": {"hessian": "hessian", "ggn": "ggn", "block-ggn": "block-ggn[blocks=tensor]",
                "ekfac": "ekfac[fisher=mc,separate=true]", "kfac": "kfac[fisher=mc,separate=true,inverse=heuristic]"},
}
AUTHORS_ENTRIES = tuple(CONFIGURATIONS["authors"].values())
NAN = float("nan")


def _interval(values: np.ndarray | None) -> tuple[float, float]:
    if values is None:
        return NAN, NAN
    return difference_interval(values, np.zeros_like(values))


def chain_table(lds: dict[str, float], boot: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per step of the chain: LDS of both rungs, the drop with its paired interval, and its share."""
    boot = boot or {}
    total = lds.get("ggn", NAN) - lds.get("kfac", NAN)
    rows = []
    for a, b in zip(CHAIN[:-1], CHAIN[1:]):
        drop = lds.get(a, NAN) - lds.get(b, NAN)
        low, high = difference_interval(boot[a], boot[b]) if a in boot and b in boot else (NAN, NAN)
        share = drop / total if a != "hessian" and total and math.isfinite(total) else NAN
        rows.append({"step": f"{a} -> {b}", "from": a, "to": b, "lds_from": lds.get(a, NAN),
                     "lds_to": lds.get(b, NAN), "drop": drop, "drop_ci_low": low, "drop_ci_high": high,
                     "resolved": verdict(low, high) != "not resolved" if math.isfinite(low) else False,
                     "share_of_ggn_to_kfac": share})
    return pd.DataFrame(rows)


def _split(block, ekfac, hybrid, kfac) -> dict[str, dict[str, float]]:
    """Basis and eigenvalue parts of block - kfac in both orders (works on floats or arrays)."""
    basis_first = {"basis": block - ekfac, "eigenvalues": ekfac - kfac}  # block -> EK-FAC -> K-FAC
    eigen_first = {"eigenvalues": block - hybrid, "basis": hybrid - kfac}  # block -> hybrid -> K-FAC
    return {part: {"basis_first": basis_first[part], "eigenvalues_first": eigen_first[part],
                   "shapley": (basis_first[part] + eigen_first[part]) / 2} for part in ("basis", "eigenvalues")}


def basis_eigenvalue_split(lds: dict[str, float], boot: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The block-GGN -> K-FAC drop split into a basis and an eigenvalue part, in both orders."""
    names = ("block-ggn", "ekfac", HYBRID, "kfac")
    point = _split(*(lds.get(k, NAN) for k in names))
    boot = boot or {}
    drawn = _split(*(boot[k] for k in names)) if all(k in boot for k in names) else None
    total = lds.get("block-ggn", NAN) - lds.get("kfac", NAN)
    rows = []
    for part in ("basis", "eigenvalues"):
        low, high = _interval(drawn[part]["shapley"] if drawn else None)
        rows.append({"change": part, **point[part], "shapley_ci_low": low, "shapley_ci_high": high,
                     "share_of_block_to_kfac": point[part]["shapley"] / total if total else NAN})
    return pd.DataFrame(rows)
