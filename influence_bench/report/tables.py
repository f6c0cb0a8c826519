"""The numbers of the leaderboard: ranking and its groups, Borda count, Pareto front, and the tables formatted
as strings.

Everything here is a pure function of the long results table, of the paired bootstrap draws (bootstrap.npz) and
of decomposition.csv / split.csv / damping_grid.csv; the formatted tables are pandas DataFrames of strings, ready
for the templates.

A comparison counts only where it is resolved (PROTOCOL.md section 9): LDS by its paired 95% interval, time and
memory by a margin beyond their run-to-run spread, the deterministic fidelity metrics beyond a small tolerance.
Two runs of the same commit must give the same ranks, groups and Pareto front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.metrics.paired import difference_interval, verdict

RANKING_ALPHA = schema.RANKING_ALPHA
SHARED_GRADIENTS = schema.SHARED_GRADIENTS
TRACKS = schema.TRACKS
NA = "n/a"
ESTIMATED_MARK = "~"

# -- when a difference counts --------------------------------------------------------------------
# Timings wander between runs of the same commit: two standard runs (--jobs 2) measured an entry's total
# time 1.37x apart (arnoldi, 11.2 / 15.4 s) and sub-second entries up to 1.7x apart (kfac, 0.58 / 0.34 s).
TIME_MARGIN = 1.0  # the slower must take more than twice as long ...
TIME_FLOOR_S = 1.0  # ... and more than a second longer
# A time difference must also exceed twice the larger measured run-to-run spread (score_s_spread) of the pair.
SPREAD_FACTOR = 2.0
# Peak resident memory moves by allocator and import noise: a relative part for large processes (two
# standard runs measured cg's peak at 1,470 and 1,620 MB) ...
MEMORY_MARGIN = 0.25
# ... and an absolute part for small ones (interpreter, torch and library pages differ by tens of MB).
MEMORY_FLOOR_MB = 50.0
# fidelity and eigval_mismatch are deterministic but float32 curvature moves them in the 4th decimal.
DETERMINISTIC_TOLERANCE = 1e-3

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
SPREAD_METRIC = "score_s_spread"
GPU_METRIC = "gpu_peak_mb"  # present only in results measured where CUDA was available


# -- number formats ---------------------------------------------------------------------------
def decimals(x: float) -> str:
    """3 decimals, for scores and relative errors ("n/a" for NaN)."""
    if pd.isna(x):
        return NA
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def signed(x: float) -> str:
    """3 decimals with a sign, for differences ("n/a" for NaN)."""
    if pd.isna(x):
        return NA
    text = f"{x:+.3f}"
    return "+0.000" if text == "-0.000" else text


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


def difference_with_ci(value: float, low: float, high: float) -> str:
    """A difference and its paired interval; the interval is n/a where the bootstrap draws are missing."""
    if pd.isna(value):
        return NA
    interval = f"[{signed(low)}, {signed(high)}]" if pd.notna(low) and pd.notna(high) else "[n/a]"
    return f"{signed(value)} {interval}"


def arrow(higher_is_better: bool | None) -> str:
    return {True: " ↑", False: " ↓"}.get(higher_is_better, "")


def truthy(value) -> bool:
    """A bool cell as parquet (bool), CSV (True/False strings) or a missing value gives it."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if pd.notna(value) else False


def marked(text: str, estimated) -> str:
    """A formatted value with the estimate mark ("~0.123") where it was computed from an estimate."""
    return f"{ESTIMATED_MARK}{text}" if truthy(estimated) and text != NA else text


def resolution(low: float, high: float) -> str:
    """The verdict of a paired interval, worded for a table; "n/a" where it is missing."""
    if pd.isna(low) or pd.isna(high):
        return NA
    return verdict(low, high)


# -- the paired bootstrap draws ---------------------------------------------------------------------
bootstrap_key = schema.bootstrap_key


KEY_PATTERN = re.compile(r"^(?P<track>[^|]+)\|(?P<alpha>[0-9.]+)\|(?P<entry>.+)$")


@dataclass(frozen=True)
class Bootstrap:
    """Every entry's LDS on the same B paired resamples, by (track, alpha, entry); ``available`` is False where
    the results directory has no bootstrap.npz (an older run): then every interval is NaN."""

    draws: Mapping[tuple[str, float, str], np.ndarray] = field(default_factory=dict)
    available: bool = True

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Bootstrap":
        """From bootstrap.npz's keys ``track|alpha|entry`` (``schema.bootstrap_key``)."""
        draws = {}
        for key, values in arrays.items():
            match = KEY_PATTERN.match(key)
            if match is None:
                raise ValueError(f"key {key!r} is not track|alpha|entry")
            draws[(match["track"], round(float(match["alpha"]), 1), match["entry"])] = np.asarray(values, float)
        return cls(draws)

    @classmethod
    def missing(cls) -> "Bootstrap":
        return cls({}, available=False)

    def get(self, entry: str, track: str = "tuned", alpha: float = RANKING_ALPHA) -> np.ndarray | None:
        return self.draws.get((track, round(float(alpha), 1), entry))

    def interval(self, a: str, b: str, track: str = "tuned", alpha: float = RANKING_ALPHA) -> tuple[float, float]:
        """Paired 95% interval of LDS(a) - LDS(b); NaN where either entry has no draws."""
        boot_a, boot_b = self.get(a, track, alpha), self.get(b, track, alpha)
        if boot_a is None or boot_b is None or boot_a.shape != boot_b.shape:
            return math.nan, math.nan
        return difference_interval(boot_a, boot_b)


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
    return results[results.status.isin(schema.FAILURE_STATUSES)]


def skipped(results: pd.DataFrame) -> pd.DataFrame:
    return results[results.status == "skipped"]


def ranked_entries(results: pd.DataFrame) -> list[str]:
    """Entries that ran (an ok row, none failed, not the shared-gradient row), best tuned LDS at alpha 0.5 first."""
    ran = set(results[results.status == "ok"].entry)
    names = sorted(ran - set(failed(results).entry) - {SHARED_GRADIENTS})
    lds = metric_rows(results, "tuned", "lds", RANKING_ALPHA).value.reindex(names)
    return sorted(names, key=lambda e: (-lds[e] if pd.notna(lds[e]) else math.inf, e))


# -- the ranking's groups ---------------------------------------------------------------------
def lds_groups(order: list[str], lds: pd.Series, boot: Bootstrap) -> pd.Series:
    """Group ranks down the ranking: an entry shares the previous entry's rank unless their paired interval on
    the tuned track at alpha 0.5 excludes 0 (a missing interval resolves nothing). A group's rank is the position
    of its first member (1, 1, 3). An entry without a tuned LDS never joins one with it."""
    ranks: list[int] = []
    for position, entry in enumerate(order):
        if position:
            previous = order[position - 1]
            same_kind = pd.isna(lds.get(entry)) == pd.isna(lds.get(previous))
            if same_kind and verdict(*boot.interval(previous, entry)) == "not resolved":
                ranks.append(ranks[-1])
                continue
        ranks.append(position + 1)
    return pd.Series(ranks, index=pd.Index(order, name="entry"), dtype=int)


def rank_labels(ranks: pd.Series) -> list[str]:
    """"3" for a rank held alone, "3=" for one shared by a group."""
    counts = ranks.value_counts()
    return [f"{r}=" if counts[r] > 1 else str(r) for r in ranks]


# -- who beats whom, per metric: a square boolean frame, [a, b] = a beats b ---------------------------
def no_wins(index: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(False, index=index, columns=index)


def lds_wins(entries: list[str], boot: Bootstrap, higher_is_better: bool = True, track: str = "tuned",
             alpha: float = RANKING_ALPHA) -> pd.DataFrame:
    """a beats b when the paired interval of LDS(a) - LDS(b) is entirely above 0 (below, if lower were better)."""
    wins = no_wins(pd.Index(entries))
    for a in entries:
        for b in entries:
            if a != b:
                wins.loc[a, b] = verdict(*boot.interval(a, b, track, alpha)) == ("higher" if higher_is_better
                                                                                  else "lower")
    return wins


def tolerance_wins(values: pd.Series, higher_is_better: bool,
                   tolerance: float = DETERMINISTIC_TOLERANCE) -> pd.DataFrame:
    """a beats b when it is better by more than the tolerance; NaN (not applicable) neither wins nor loses."""
    v = values.astype(float).to_numpy() * (1 if higher_is_better else -1)
    with np.errstate(invalid="ignore"):
        wins = (v[:, None] - v[None, :]) > tolerance
    return pd.DataFrame(wins, index=values.index, columns=values.index)


def margin_wins(values: pd.Series, higher_is_better: bool, margin: np.ndarray | float,
                floor: float = 0.0) -> pd.DataFrame:
    """For positive quantities: a beats b when the worse exceeds the better by the relative margin and the floor.
    Lower is better: v_b > v_a * (1 + margin[a, b]) + floor; higher is better: v_a > v_b * (1 + margin) + floor."""
    v = values.astype(float).to_numpy()
    small, large = (v[:, None], v[None, :]) if not higher_is_better else (v[None, :], v[:, None])  # a's, b's
    with np.errstate(invalid="ignore"):
        wins = large > small * (1 + np.asarray(margin)) + floor
    return pd.DataFrame(wins, index=values.index, columns=values.index)


def time_margins(spread: pd.Series) -> np.ndarray:
    """[a, b]: max(TIME_MARGIN, SPREAD_FACTOR x the larger finite run-to-run spread of a and b)."""
    s = spread.astype(float).fillna(0.0).clip(lower=0.0).to_numpy()
    return np.maximum(TIME_MARGIN, SPREAD_FACTOR * np.maximum(s[:, None], s[None, :]))


def time_wins(time: pd.Series, spread: pd.Series | None = None, higher_is_better: bool = False) -> pd.DataFrame:
    spread = pd.Series(math.nan, index=time.index) if spread is None else spread.reindex(time.index)
    return margin_wins(time, higher_is_better, time_margins(spread), TIME_FLOOR_S)


def memory_wins(memory: pd.Series, higher_is_better: bool = False) -> pd.DataFrame:
    return margin_wins(memory, higher_is_better, MEMORY_MARGIN, MEMORY_FLOOR_MB)


# -- Borda count and Pareto front -------------------------------------------------------------
def borda_points(wins: Mapping[str, pd.DataFrame], index: pd.Index) -> pd.Series:
    """Per entry, one point for every entry it beats on every metric: the sum of each win matrix's rows."""
    points = pd.Series(0, index=index, dtype=int)
    for matrix in wins.values():
        points += matrix.reindex(index=index, columns=index, fill_value=False).sum(axis=1).astype(int)
    return points


def competition_ranks(points: pd.Series) -> pd.Series:
    """1 for the most points; ties share the better rank (1, 1, 3)."""
    return points.rank(method="min", ascending=False).astype(int)


def pareto_front(time: pd.Series, lds: pd.Series, faster: pd.DataFrame, better: pd.DataFrame) -> list[str]:
    """Entries no other entry dominates, fastest first. faster / better: the time and LDS win matrices.

    a dominates b when a is not resolved-slower and resolved-better on LDS, or resolved-faster and not
    resolved-worse on LDS. Entries without a time or an LDS are left out."""
    points = pd.DataFrame({"time": time, "lds": lds}).dropna()
    names = list(points.index)
    f = faster.reindex(index=names, columns=names, fill_value=False).to_numpy(bool)
    g = better.reindex(index=names, columns=names, fill_value=False).to_numpy(bool)
    dominates = (~f.T & g) | (f & ~g.T)  # [a, b]
    np.fill_diagonal(dominates, False)
    return fastest_first(points[~dominates.any(axis=0)])


def fastest_first(points: pd.DataFrame) -> list[str]:
    """Entries of a frame with columns time and lds, fastest first, then best LDS, then by name."""
    points = points.assign(_name=points.index)
    return list(points.sort_values(["time", "lds", "_name"], ascending=[True, False, True]).index)


def ranking(results: pd.DataFrame, boot: Bootstrap | None = None) -> pd.DataFrame:
    """One row per entry in ranking order: the numbers of the ranking table, its groups and the paired difference
    to the next entry, the Borda points and overall rank, and whether it is on the Pareto front."""
    boot = Bootstrap.missing() if boot is None else boot
    order = ranked_entries(results)
    index = pd.Index(order, name="entry")
    tuned = metric_rows(results, "tuned", "lds", RANKING_ALPHA).reindex(order)
    table = pd.DataFrame(index=index)
    table["ci_low"], table["ci_high"], table["ceiling"] = tuned.ci_low, tuned.ci_high, tuned.ceiling
    # the fixed track on the same held-out queries as the tuned one, where the run recorded it
    fixed_metric = "lds_heldout" if (results.metric == "lds_heldout").any() else "lds"
    table["lds_fixed"] = metric_rows(results, "fixed", fixed_metric, RANKING_ALPHA).value.reindex(order)
    for column, (track, metric, alpha) in BORDA_METRICS.items():
        rows = metric_rows(results, track, metric, alpha).reindex(order)
        table[column] = rows.value.astype(float)
        table[f"{column}_estimated"] = [truthy(e) for e in rows.estimated]
    table["spread"] = metric_rows(results, "cost", SPREAD_METRIC).value.reindex(order).astype(float)

    table["rank"] = lds_groups(order, table.lds_tuned, boot)
    following = order[1:] + [None]
    intervals = [boot.interval(a, b) if b is not None else (math.nan, math.nan) for a, b in zip(order, following)]
    table["diff_next"] = table.lds_tuned - table.lds_tuned.shift(-1)
    table["diff_low"] = [low for low, _ in intervals]
    table["diff_high"] = [high for _, high in intervals]
    table["verdict_next"] = [resolution(low, high) if b is not None else ""
                             for (low, high), b in zip(intervals, following)]

    directions = {c: direction(results, track, metric) for c, (track, metric, _) in BORDA_METRICS.items()}
    wins = {}
    for column, higher in directions.items():
        if higher is None:  # a metric without rows is NaN for everyone
            continue
        if column == "lds_tuned":
            wins[column] = lds_wins(order, boot, higher)
            without = table.index[table.lds_tuned.isna()]  # no LDS: neither wins nor loses, whatever the draws
            wins[column].loc[without, :] = False
            wins[column].loc[:, without] = False
        elif column == "total_s":
            wins[column] = time_wins(table.total_s, table.spread, higher)
        elif column == "peak_rss_mb":
            wins[column] = memory_wins(table.peak_rss_mb, higher)
        else:
            wins[column] = tolerance_wins(table[column], higher)
    table["points"] = borda_points(wins, index)
    table["overall"] = competition_ranks(table.points)
    faster = wins.get("total_s", time_wins(table.total_s, table.spread))
    better = wins.get("lds_tuned", no_wins(index))
    front = pareto_front(table.total_s, table.lds_tuned, faster, better)
    table["pareto"] = table.index.isin(front)
    return table


def pareto_members(rank: pd.DataFrame) -> list[str]:
    """The Pareto front of a ranking table, fastest first."""
    on = rank[rank.pareto]
    return fastest_first(pd.DataFrame({"time": on.total_s, "lds": on.lds_tuned}, index=on.index))


# -- formatted tables -------------------------------------------------------------------------
def ranking_table(rank: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    def header(column: str, label: str) -> str:
        track, metric, _ = BORDA_METRICS[column]
        return label + arrow(direction(results, track, metric))

    return pd.DataFrame({
        "rank": rank_labels(rank["rank"]),
        "entry": rank.index,
        header("lds_tuned", f"LDS@{RANKING_ALPHA} tuned [95% CI]"): [
            with_ci(v, lo, hi) for v, lo, hi in zip(rank.lds_tuned, rank.ci_low, rank.ci_high)],
        "Δ to next [paired 95% CI]": [
            difference_with_ci(d, lo, hi) if v else "" for d, lo, hi, v in
            zip(rank.diff_next, rank.diff_low, rank.diff_high, rank.verdict_next)],
        "vs next": rank.verdict_next.tolist(),
        "noise ceiling": rank.ceiling.map(decimals),
        f"LDS@{RANKING_ALPHA} fixed": rank.lds_fixed.map(decimals),
        header("fidelity", "fidelity"): [marked(decimals(v), e) for v, e in
                                         zip(rank.fidelity, rank.fidelity_estimated)],
        header("eigval_mismatch", "eigval_mismatch"): [marked(decimals(v), e) for v, e in
                                                       zip(rank.eigval_mismatch, rank.eigval_mismatch_estimated)],
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
    """The fidelity metrics per entry; "~" marks a value computed from an estimate, n/a one that does not apply."""
    table = pd.DataFrame({"entry": order})
    for metric in FIDELITY_METRICS:
        rows = metric_rows(results, "fixed", metric).reindex(order)
        cells = [marked(decimals(v), e) if s == "ok" else NA
                 for v, s, e in zip(rows.value, rows.status, rows.estimated)]
        table[metric + arrow(direction(results, "fixed", metric))] = cells
    return table


def any_estimated(results: pd.DataFrame, metrics=FIDELITY_METRICS) -> bool:
    rows = results[results.metric.isin(metrics) & (results.status == "ok")]
    return any(truthy(e) for e in rows.estimated)


def spread_text(x: float) -> str:
    return NA if pd.isna(x) else f"{100 * x:.0f}%"


def cost_table(results: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """fit, score and total time, the score time's run-to-run spread and peak memory per entry, and the gradients
    every entry shares."""
    table = pd.DataFrame({"entry": order})
    on_gpu = bool((results.metric == GPU_METRIC).any())
    for metric, label in {**COST_METRICS, **({GPU_METRIC: "GPU peak (MB)"} if on_gpu else {})}.items():
        table[label] = metric_rows(results, "cost", metric).value.reindex(order).map(significant).to_numpy()
        if metric == "score_s":
            table["score spread"] = metric_rows(results, "cost", SPREAD_METRIC).value.reindex(order).map(
                spread_text).to_numpy()
    shared = results[(results.entry == SHARED_GRADIENTS) & (results.track == "cost")]
    labels = {"gradient_s": "(shared) per-example gradients", "ggn_s": "(shared) dense exact GGN",
              "ggn_eigen_s": "(shared) eigendecomposition of the GGN",
              "hessian_s": "(shared) dense exact Hessian", "reference_s": "(shared) GGN reference for the metrics"}
    extra = [{"entry": label, "fit (s)": significant(value), "score (s)": "—", "score spread": "—",
              "total (s)": significant(value), "peak memory (MB)": "—", **({"GPU peak (MB)": "—"} if on_gpu else {})}
             for metric, label in labels.items() for value in shared[shared.metric == metric].value]
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    return table


# -- damping ------------------------------------------------------------------------------------
def grid_rows(grid: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """damping_grid.csv rows of the ranked entries, with bool columns as bools."""
    rows = grid[grid.entry.isin(order)].copy()
    for column in ("chosen", "is_fixed", "at_edge"):
        rows[column] = [truthy(v) for v in rows[column]]
    for column in ("damping", "factor", "dev_lds"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows


def damping_summary(grid: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per entry with a grid: chosen damping, its factor of the mean eigenvalue, dev LDS at the pick and at the
    fixed damping, at edge."""
    rows = grid_rows(grid, order)
    out = []
    for entry in [e for e in order if e in set(rows.entry)]:
        points = rows[rows.entry == entry]
        chosen, fixed = points[points.chosen], points[points.is_fixed]
        pick = chosen.iloc[0] if len(chosen) else None
        out.append({
            "entry": entry,
            "damping": pick.damping if pick is not None else math.nan,
            "factor": pick.factor if pick is not None else math.nan,
            "chosen_is_fixed": bool(pick.is_fixed) if pick is not None else False,
            "dev_chosen": pick.dev_lds if pick is not None else math.nan,
            "dev_fixed": fixed.dev_lds.iloc[0] if len(fixed) else math.nan,
            "at_edge": bool(pick.at_edge) if pick is not None else False,
        })
    columns = ["entry", "damping", "factor", "chosen_is_fixed", "dev_chosen", "dev_fixed", "at_edge"]
    return pd.DataFrame(out, columns=columns)


def damping_table(grid: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    summary = damping_summary(grid, order)
    return pd.DataFrame({
        "entry": summary.entry,
        "chosen damping": summary.damping.map(significant),
        "× mean eigenvalue": ["fixed damping" if fixed else significant(f)
                              for f, fixed in zip(summary.factor, summary.chosen_is_fixed)],
        f"dev LDS@{RANKING_ALPHA} chosen": summary.dev_chosen.map(decimals),
        f"dev LDS@{RANKING_ALPHA} fixed": summary.dev_fixed.map(decimals),
        "at edge": ["yes" if e else "no" for e in summary.at_edge],
    }).reset_index(drop=True)


# -- the decomposition chain ------------------------------------------------------------------------
def at_mean_and_ranking_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of decomposition.csv / split.csv at alpha "mean" and at alpha 0.5, mean first, per track."""
    alpha = table.alpha.astype(str)
    keep = (alpha == "mean") | np.isclose(pd.to_numeric(alpha, errors="coerce"), RANKING_ALPHA)
    chosen = table[keep].assign(_mean_first=alpha[keep] != "mean")
    chosen = chosen.sort_values(["track", "_mean_first"], kind="stable").drop(columns="_mean_first")
    return chosen.assign(alpha=[a if a == "mean" else f"{float(a):g}" for a in chosen.alpha.astype(str)])


def change_verdict(low: float, high: float) -> str:
    """A drop (LDS before - after) is "lost" when resolved above 0, "gained" when resolved below 0."""
    return {"higher": "lost (resolved)", "lower": "gained (resolved)", "not resolved": "not resolved",
            NA: NA}[resolution(low, high)]


def decomposition_table(decomposition: pd.DataFrame) -> pd.DataFrame:
    rows = at_mean_and_ranking_alpha(decomposition)
    return pd.DataFrame({
        "track": rows.track, "α": rows.alpha, "step": rows.step,
        "LDS before": rows.lds_from.map(decimals), "LDS after": rows.lds_to.map(decimals),
        "drop [paired 95% CI]": [difference_with_ci(d, lo, hi) for d, lo, hi in
                                 zip(rows["drop"], rows.drop_ci_low, rows.drop_ci_high)],
        "accuracy": [change_verdict(lo, hi) for lo, hi in zip(rows.drop_ci_low, rows.drop_ci_high)],
        "share of GGN → K-FAC drop": rows.share_of_ggn_to_kfac.map(decimals),
    }).reset_index(drop=True)


def split_table(split: pd.DataFrame) -> pd.DataFrame:
    rows = at_mean_and_ranking_alpha(split)
    return pd.DataFrame({
        "track": rows.track, "α": rows.alpha, "change": rows.change,
        "basis first": rows.basis_first.map(decimals), "eigenvalues first": rows.eigenvalues_first.map(decimals),
        "Shapley [paired 95% CI]": [difference_with_ci(d, lo, hi) for d, lo, hi in
                                    zip(rows.shapley, rows.shapley_ci_low, rows.shapley_ci_high)],
        "accuracy": [change_verdict(lo, hi) for lo, hi in zip(rows.shapley_ci_low, rows.shapley_ci_high)],
        "share of block-GGN → K-FAC drop": rows.share_of_block_to_kfac.map(decimals),
    }).reset_index(drop=True)


def summary_rows(table: pd.DataFrame, track: str) -> tuple[pd.DataFrame, str]:
    """The rows of one track at alpha "mean" (else at alpha 0.5), and how to name that alpha."""
    rows = at_mean_and_ranking_alpha(table)
    rows = rows[rows.track == track]
    if (rows.alpha == "mean").any():
        return rows[rows.alpha == "mean"], "mean over α"
    return rows, f"α = {RANKING_ALPHA}"


def chain_conclusions(decomposition: pd.DataFrame, split: pd.DataFrame) -> list[str]:
    """One sentence per track saying which steps (and which parts of the split) are resolved: never a comparison
    of point estimates."""
    sentences = []
    for track in TRACKS:
        steps, where = summary_rows(decomposition, track)
        parts, _ = summary_rows(split, track)
        if steps.empty and parts.empty:
            continue
        found = {}
        for name, low, high in [*zip(steps.step, steps.drop_ci_low, steps.drop_ci_high),
                                *((f"the {c} change (Shapley)", lo, hi) for c, lo, hi in
                                  zip(parts.change, parts.shapley_ci_low, parts.shapley_ci_high))]:
            found.setdefault(change_verdict(low, high), []).append(str(name))
        said = [f"{kind}: {', '.join(names)}" for kind, names in found.items()]
        sentences.append(f"{track.capitalize()} damping, {where}: " + "; ".join(said) + ".")
    return sentences


# -- the entries that did not run ----------------------------------------------------------------------
def failed_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = failed(results).drop_duplicates("entry").sort_values("entry")
    return pd.DataFrame({"entry": rows.entry, "status": rows.status, "message": rows.message.fillna("")}).reset_index(
        drop=True)


def skipped_table(results: pd.DataFrame) -> pd.DataFrame:
    """Entries that declined a task (the whole run, or one metric), with their reason."""
    rows = skipped(results).drop_duplicates(["entry", "track", "metric"]).sort_values(["entry", "track", "metric"])
    what = ["everything" if m == "status" else f"{m} ({t})" for m, t in zip(rows.metric, rows.track)]
    return pd.DataFrame({"entry": rows.entry, "skipped": what, "reason": rows.message.fillna("")}).reset_index(
        drop=True)


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
