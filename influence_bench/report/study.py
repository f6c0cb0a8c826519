"""The paper's study across task versions: leave-one-out beside LDS, the state of each reference
model (is it at a stationary point?), and the verdicts on the paper's claims (``claims.py``).

A report is written for one results directory (the leaderboard); further directories of the same
study (the cosine version, the paper preset at one alpha) add their claims and their reference
model's state, so that each verdict is shown per task version.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.report import claims, tables

SHARED = schema.SHARED_GRADIENTS
LOO_METRICS = {"loo_pearson": "Pearson", "loo_spearman": "Spearman"}


def run_label(results: pd.DataFrame) -> str:
    """``digits-mlp-cosine (standard)``: how a task version is named across the report."""
    return f"{tables.constant(results, 'task')} ({tables.constant(results, 'preset')})"


def loo_table(results: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per entry: LDS at the ranking alpha and LOO Pearson / Spearman [95% CI], on both tracks; a last row
    with the noise ceilings."""
    columns: dict[str, pd.Series] = {}
    ceiling: list[str] = []
    for track in schema.TRACKS:
        lds = tables.metric_rows(results, track, schema.LDS, schema.RANKING_ALPHA)
        columns[f"LDS α={schema.RANKING_ALPHA:g} ({track})"] = lds.apply(
            lambda r: tables.with_ci(r.value, r.ci_low, r.ci_high), axis=1) if len(lds) else pd.Series(dtype=str)
        ceiling.append(tables.decimals(lds.ceiling.mean()) if len(lds) else tables.NA)
        for metric, label in LOO_METRICS.items():
            rows = tables.metric_rows(results, track, metric)
            columns[f"LOO {label} ({track})"] = rows.apply(
                lambda r: tables.with_ci(r.value, r.ci_low, r.ci_high), axis=1) if len(rows) else pd.Series(dtype=str)
            ceiling.append(tables.decimals(rows.ceiling.mean()) if len(rows) else tables.NA)
    entries = [e for e in order if any(e in c.index for c in columns.values())]
    table = pd.DataFrame({"entry": entries, **{k: [v.get(e, tables.NA) for e in entries] for k, v in columns.items()}})
    return pd.concat([table, pd.DataFrame([["noise ceiling", *ceiling]], columns=table.columns)], ignore_index=True)


def has_loo(results: pd.DataFrame) -> bool:
    return bool((results.metric.isin(list(LOO_METRICS))).any())


def _shared(results: pd.DataFrame, metric: str, track: str = "diagnostics", alpha: float | None = None) -> float:
    rows = results[(results.entry == SHARED) & (results.track == track) & (results.metric == metric)]
    if alpha is not None:
        rows = rows[np.isclose(rows.alpha.astype(float), alpha)]
    return float(rows.value.iloc[0]) if len(rows) else float("nan")


def _scientific(x: float) -> str:
    return tables.NA if pd.isna(x) else f"{x:.2e}"


def _count(x: float) -> str:
    return tables.NA if pd.isna(x) else f"{int(x):,}"


def versions_table(runs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per task version: the reference model's training loss, gradient norm and negative Hessian
    eigenvalues, the LDS ceiling at the ranking alpha, the LOO ceilings, and the exact entries' LOO."""
    rows = []
    for label, results in runs.items():
        pearson = tables.metric_rows(results, "fixed", "loo_pearson").value
        loo = {e: float(pearson.get(e, np.nan)) for e in ("ggn", "hessian")}
        rows.append({
            "task version": label,
            "train loss": _scientific(_shared(results, "reference_train_loss")),
            "gradient norm": _scientific(_shared(results, "reference_grad_norm")),
            "negative Hessian eigenvalues (beyond round-off)": _count(
                _shared(results, "reference_negative_hessian_eigenvalues_beyond_noise")),
            f"LDS ceiling α={schema.RANKING_ALPHA:g}": tables.decimals(
                _shared(results, "noise_ceiling", "fixed", schema.RANKING_ALPHA)),
            "LOO ceiling (Pearson / Spearman)": " / ".join(tables.decimals(_shared(results, f"loo_{m}_ceiling", "fixed"))
                                                           for m in ("pearson", "spearman")),
            "LOO Pearson: ggn / hessian": " / ".join(tables.decimals(loo[e]) for e in ("ggn", "hessian")),
        })
    return pd.DataFrame(rows)


CLAIMS_TEXT = (
    "Each claim of the reference paper with the suite's verdict, computed from the paired bootstrap draws of "
    "the results (averaged over the α of each run), never written by hand: a claim holds when its paired 95% "
    "interval is above 0, is contradicted when it is below 0, and is otherwise not resolved. The chain runs in "
    "the suite's configuration (block-GGN per layer, type-2 K-FAC and EK-FAC with weight and bias together, "
    "exact damping) and in the authors' (block-GGN per tensor, MC Fisher with one sample, weight and bias apart, "
    "K-FAC with the heuristic π-damping), on both damping tracks, per task version. A claim over several "
    "comparisons shows the numbers of the one that decides it.")


def claims_for(runs: Mapping[str, tuple[pd.DataFrame, object]]) -> pd.DataFrame:
    """The claims table over every run that has at least one rung of a configuration."""
    found = claims.claims_table(runs)
    ran = {label: set(table.entry) for label, (table, _) in runs.items()}
    wanted = [any(rung in ran[row.task] for rung in claims.CONFIGURATIONS[row.configuration].values())
              for row in found.itertuples()]
    return found[wanted].reset_index(drop=True)
