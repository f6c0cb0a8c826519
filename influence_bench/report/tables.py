"""The numbers of the leaderboard: ranking, Borda count, Pareto front, and the tables formatted as strings.

Everything here is a pure function of the long results table (and of decomposition.csv / split.csv);
the formatted tables are pandas DataFrames of strings, ready for the templates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

RANKING_ALPHA = 0.5
SHARED_GRADIENTS = "(shared gradients)"
NA = "n/a"

# ranking column -> (track, metric, alpha): the metrics of the ranking table, each one Borda count vote
BORDA_METRICS: dict[str, tuple[str, str, float | None]] = {
    "lds_tuned": ("tuned", "lds", RANKING_ALPHA),
    "fidelity": ("fixed", "fidelity", None),
    "eigval_mismatch": ("fixed", "eigval_mismatch", None),
    "total_s": ("cost", "total_s", None),
    "peak_rss_mb": ("cost", "peak_rss_mb", None),
}
FIDELITY_METRICS = ("rel_fro", "spectrum_err", "eigval_mismatch", "basis_mismatch", "topk_overlap_10",
                    "topk_overlap_100", "ihvp_err", "fidelity")
COST_METRICS = {"fit_s": "fit (s)", "score_s": "score (s)", "total_s": "total (s)", "peak_rss_mb": "peak memory (MB)"}
TRACKS = ("fixed", "tuned")


# -- number formats ---------------------------------------------------------------------------
def decimals(x: float) -> str:
    """3 decimals, for scores and relative errors ("n/a" for NaN)."""
    if pd.isna(x):
        return NA
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def significant(x: float) -> str:
    """3 significant digits, for times, memory and dampings ("n/a" for NaN)."""
    if pd.isna(x):
        return NA
    if abs(x) >= 1000:
        return f"{float(f'{x:.3g}'):.0f}"
    return f"{x:.3g}"


def with_ci(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return NA
    return f"{decimals(value)} [{decimals(low)}, {decimals(high)}]"


def arrow(higher_is_better: bool | None) -> str:
    return {True: " ↑", False: " ↓"}.get(higher_is_better, "")


# -- selecting from the long table ----------------------------------------------------------------
def metric_rows(results: pd.DataFrame, track: str, metric: str, alpha: float | None = None) -> pd.DataFrame:
    """The rows of one metric on one track (at one alpha if given), indexed by entry."""
    rows = results[(results.track == track) & (results.metric == metric)]
    if alpha is not None:
        rows = rows[np.isclose(rows.alpha.astype(float), alpha)]
    return rows.drop_duplicates("entry").set_index("entry")


def direction(results: pd.DataFrame, track: str, metric: str) -> bool | None:
    """higher_is_better of a metric as the results table records it; None where the metric has no rows."""
    recorded = metric_rows(results, track, metric).higher_is_better.dropna()
    return bool(recorded.iloc[0]) if len(recorded) else None


def failed(results: pd.DataFrame) -> pd.DataFrame:
    return results[results.status == "failed"]


def ranked_entries(results: pd.DataFrame) -> list[str]:
    """Entries that ran (not failed, not the shared-gradient row), best tuned LDS at alpha 0.5 first."""
    names = sorted(set(results.entry) - set(failed(results).entry) - {SHARED_GRADIENTS})
    lds = metric_rows(results, "tuned", "lds", RANKING_ALPHA).value.reindex(names)
    return sorted(names, key=lambda e: (-lds[e] if pd.notna(lds[e]) else math.inf, e))


# -- Borda count and Pareto front -------------------------------------------------------------
def beaten_counts(values: pd.Series, higher_is_better: bool) -> pd.Series:
    """Per entry, how many entries it strictly beats; NaN (not applicable) neither scores nor counts as beaten."""
    signed = values.astype(float) if higher_is_better else -values.astype(float)
    present = signed.dropna().to_numpy()
    return pd.Series([int((present < v).sum()) if pd.notna(v) else 0 for v in signed], index=values.index)


def borda_points(values: pd.DataFrame, higher_is_better: dict[str, bool]) -> pd.Series:
    """Total Borda points per entry (row) over the metrics (columns)."""
    points = pd.Series(0, index=values.index)
    for metric in values.columns:
        points += beaten_counts(values[metric], higher_is_better[metric])
    return points


def competition_ranks(points: pd.Series) -> pd.Series:
    """1 for the most points; ties share the better rank (1, 1, 3)."""
    return points.rank(method="min", ascending=False).astype(int)


def pareto_front(time: pd.Series, score: pd.Series) -> list[str]:
    """Entries no other entry dominates (at most as slow and at least as good, strictly so in one), fastest first."""
    points = pd.DataFrame({"time": time, "score": score}).dropna()
    points = points.sort_values(["time", "score"], ascending=[True, False], kind="stable")
    front: list[str] = []
    best, last = -math.inf, None
    for entry, t, s in zip(points.index, points.time, points.score):
        if s > best or (t, s) == last:  # (t, s) == last: an exact tie with a front point, which cannot dominate it
            front.append(entry)
            best, last = s, (t, s)
    return front


def ranking(results: pd.DataFrame) -> pd.DataFrame:
    """One row per entry in ranking order: the numbers of the ranking table, Borda points and overall rank."""
    order = ranked_entries(results)
    tuned = metric_rows(results, "tuned", "lds", RANKING_ALPHA).reindex(order)
    table = pd.DataFrame(index=pd.Index(order, name="entry"))
    table["rank"] = range(1, len(order) + 1)
    table["ci_low"], table["ci_high"], table["ceiling"] = tuned.ci_low, tuned.ci_high, tuned.ceiling
    # the fixed track on the same held-out queries as the tuned one, where the run recorded it
    fixed_metric = "lds_heldout" if (results.metric == "lds_heldout").any() else "lds"
    table["lds_fixed"] = metric_rows(results, "fixed", fixed_metric, RANKING_ALPHA).value.reindex(order)
    for column, (track, metric, alpha) in BORDA_METRICS.items():
        table[column] = metric_rows(results, track, metric, alpha).value.reindex(order).astype(float)
    directions = {c: direction(results, track, metric) for c, (track, metric, _) in BORDA_METRICS.items()}
    voting = [c for c, d in directions.items() if d is not None]  # a metric without rows is NaN for everyone
    table["points"] = borda_points(table[voting], directions)
    table["overall"] = competition_ranks(table.points)
    return table


# -- formatted tables -------------------------------------------------------------------------
def ranking_table(rank: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    def header(column: str, label: str) -> str:
        track, metric, _ = BORDA_METRICS[column]
        return label + arrow(direction(results, track, metric))

    return pd.DataFrame({
        "rank": rank["rank"].astype(str),
        "entry": rank.index,
        header("lds_tuned", f"LDS@{RANKING_ALPHA} tuned [95% CI]"): [
            with_ci(v, lo, hi) for v, lo, hi in zip(rank.lds_tuned, rank.ci_low, rank.ci_high)],
        "noise ceiling": rank.ceiling.map(decimals),
        f"LDS@{RANKING_ALPHA} fixed": rank.lds_fixed.map(decimals),
        header("fidelity", "fidelity"): rank.fidelity.map(decimals),
        header("eigval_mismatch", "eigval_mismatch"): rank.eigval_mismatch.map(decimals),
        header("total_s", "total time (s)"): rank.total_s.map(significant),
        header("peak_rss_mb", "peak memory (MB)"): rank.peak_rss_mb.map(significant),
        "overall": [f"{o} ({p} pts)" for o, p in zip(rank.overall, rank.points)],
    }).reset_index(drop=True)


def lds_table(results: pd.DataFrame, track: str, order: list[str]) -> pd.DataFrame:
    """LDS [95% CI] per alpha of every entry on one track, its damping, and a last row with the noise ceiling."""
    rows = results[(results.track == track) & (results.metric == "lds") & results.entry.isin(order)]
    alphas = sorted(rows.alpha.dropna().unique())
    table = pd.DataFrame({"entry": order})
    for alpha in alphas:
        at = rows[rows.alpha == alpha].drop_duplicates("entry").set_index("entry").reindex(order)
        table[f"α={alpha:g}"] = [with_ci(v, lo, hi) for v, lo, hi in zip(at.value, at.ci_low, at.ci_high)]
    table["damping"] = rows.groupby("entry").damping.first().reindex(order).map(significant).to_numpy()
    ceiling = rows.groupby("alpha").ceiling.mean()
    ceiling_row = ["noise ceiling", *(decimals(ceiling[a]) for a in alphas), ""]
    return pd.concat([table, pd.DataFrame([ceiling_row], columns=table.columns)], ignore_index=True)


def fidelity_table(results: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"entry": order})
    for metric in FIDELITY_METRICS:
        rows = metric_rows(results, "fixed", metric).reindex(order)
        cells = [decimals(v) if s == "ok" else NA for v, s in zip(rows.value, rows.status)]
        table[metric + arrow(direction(results, "fixed", metric))] = cells
    return table


def cost_table(results: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """fit, score and total time and peak memory per entry, and the gradients every entry shares."""
    table = pd.DataFrame({"entry": order})
    for metric, label in COST_METRICS.items():
        table[label] = metric_rows(results, "cost", metric).value.reindex(order).map(significant).to_numpy()
    gradients = metric_rows(results, "cost", "gradient_s").value
    if SHARED_GRADIENTS in gradients.index:
        seconds = significant(gradients[SHARED_GRADIENTS])
        shared = {"entry": SHARED_GRADIENTS, "fit (s)": seconds, "score (s)": "—", "total (s)": seconds,
                  "peak memory (MB)": "—"}
        table = pd.concat([table, pd.DataFrame([shared])], ignore_index=True)
    return table


def at_mean_and_ranking_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of decomposition.csv / split.csv at alpha "mean" and at alpha 0.5, mean first, per track."""
    alpha = table.alpha.astype(str)
    keep = (alpha == "mean") | np.isclose(pd.to_numeric(alpha, errors="coerce"), RANKING_ALPHA)
    chosen = table[keep].assign(_mean_first=alpha[keep] != "mean")
    chosen = chosen.sort_values(["track", "_mean_first"], kind="stable").drop(columns="_mean_first")
    return chosen.assign(alpha=[a if a == "mean" else f"{float(a):g}" for a in chosen.alpha.astype(str)])


def decomposition_table(decomposition: pd.DataFrame) -> pd.DataFrame:
    rows = at_mean_and_ranking_alpha(decomposition)
    return pd.DataFrame({
        "track": rows.track, "α": rows.alpha, "step": rows.step,
        "LDS before": rows.lds_from.map(decimals), "LDS after": rows.lds_to.map(decimals),
        "drop": rows["drop"].map(decimals), "share of GGN → K-FAC drop": rows.share_of_ggn_to_kfac.map(decimals),
    }).reset_index(drop=True)


def split_table(split: pd.DataFrame) -> pd.DataFrame:
    rows = at_mean_and_ranking_alpha(split)
    return pd.DataFrame({
        "track": rows.track, "α": rows.alpha, "change": rows.change,
        "basis first": rows.basis_first.map(decimals), "eigenvalues first": rows.eigenvalues_first.map(decimals),
        "Shapley": rows.shapley.map(decimals),
        "share of block-GGN → K-FAC drop": rows.share_of_block_to_kfac.map(decimals),
    }).reset_index(drop=True)


def failed_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = failed(results).drop_duplicates("entry").sort_values("entry")
    return pd.DataFrame({"entry": rows.entry, "message": rows.message.fillna("")}).reset_index(drop=True)


def constant(results: pd.DataFrame, column: str) -> str:
    """The value of a provenance column (all distinct values, joined, should a table mix runs)."""
    return ", ".join(str(v) for v in results[column].dropna().unique()) or NA


def provenance(results: pd.DataFrame) -> list[tuple[str, str]]:
    versions = ", ".join(f"{name} {constant(results, f'{name}_version')}"
                         for name in ("influence_bench", "torch", "curvlinops", "numpy", "python"))
    fields = {"task": "task", "task version": "task_version", "preset": "preset", "masks per alpha": "n_masks",
              "retraining seeds": "n_seeds", "seeds": "seeds"}
    return [*((label, constant(results, column)) for label, column in fields.items()),
            ("versions", versions), ("git commit", constant(results, "git_commit")),
            ("machine", constant(results, "machine")), ("timestamp", constant(results, "timestamp"))]
