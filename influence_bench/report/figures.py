"""The leaderboard's figures, drawn with seaborn on matplotlib's Agg canvas and returned as PNG bytes.

No pyplot: every figure is a ``matplotlib.figure.Figure`` with its own Agg canvas, so nothing global
(backend, rcParams) changes. Fixed sizes, dpi and PNG metadata make the bytes reproducible.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from influence_bench import schema
from influence_bench.report.tables import RANKING_ALPHA, TRACKS, grid_rows, pareto_members, resolution

DPI = 110
PNG_METADATA = {"Software": None}
EIGVAL_FLOOR = 1e-12
REFERENCE = "ggn"  # spectra.npz: ggn/layer{i} is the exact GGN
RUNG_LABELS = {"hessian": "Hessian", "ggn": "GGN", "block-ggn": "block-GGN", "ekfac": "EK-FAC", "kfac": "K-FAC"}


@dataclass(frozen=True)
class FigureInfo:
    name: str
    alt: str
    caption: str


FIGURES = {
    f.name: f
    for f in (
        FigureInfo("lds_vs_alpha", "LDS against alpha per entry with 95% CI bands and the noise ceiling, "
                   "fixed and tuned damping tracks",
                   "LDS against α (shaded: 95% CI; dashed black: noise ceiling). Left: fixed damping, right: tuned."),
        FigureInfo("pareto", f"Tuned LDS at alpha {RANKING_ALPHA} against total time per entry, with the Pareto front",
                   f"Tuned LDS at α = {RANKING_ALPHA} against fit + score time (log scale). Ringed and joined: the "
                   "Pareto front, the entries no other entry beats by a resolved margin on one axis without being "
                   "resolved worse on the other."),
        FigureInfo("damping", "Dev-half LDS against damping per entry, with each entry's chosen damping and the "
                   "fixed damping marked",
                   f"LDS at α = {RANKING_ALPHA} on the dev half of the test queries against damping (log scale), one "
                   "line per entry over its grid. Star: the chosen damping; open square: the fixed damping, also "
                   "the dotted vertical line."),
        FigureInfo("spectra", "Sorted eigenvalue spectra per layer of each curvature against the exact GGN",
                   "Eigenvalues per layer, largest first (log scale, clipped at 1e-12); the thick black line is "
                   "the exact GGN."),
        FigureInfo("waterfall", "Waterfall of the LDS along the chain Hessian, GGN, block-GGN, EK-FAC, K-FAC",
                   "LDS (mean over α) along the chain: full bars are rungs, floating bars the change of each step "
                   "(red: accuracy lost, green: gained, both resolved by the paired interval; hatched grey: not "
                   "resolved)."),
    )
}


# -- plumbing -------------------------------------------------------------------------------
def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def mark_not_available(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"n/a: {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def entry_colors(entries: list[str]) -> dict[str, tuple]:
    """A colour per entry, by name: the ten dark tab20 shades first, then the light ones."""
    palette = sns.color_palette("tab20", 20)
    shades = palette[0::2] + palette[1::2]
    return {e: shades[i % len(shades)] for i, e in enumerate(sorted(entries))}


# -- the figures ------------------------------------------------------------------------------
def lds_vs_alpha(results: pd.DataFrame, order: list[str], colors: dict[str, tuple]) -> Figure:
    fig, axes = new_figure(12, 4.8, len(TRACKS))
    for ax, track in zip(axes, TRACKS):
        rows = results[(results.track == track) & (results.metric == "lds") & results.entry.isin(order)]
        if rows.empty:
            mark_not_available(ax, f"no LDS on the {track} track")
            continue
        for entry in order:
            line = rows[rows.entry == entry].sort_values("alpha")
            ax.plot(line.alpha, line.value, marker="o", ms=3.5, lw=1.4, color=colors[entry], label=entry)
            ax.fill_between(line.alpha, line.ci_low, line.ci_high, color=colors[entry], alpha=0.08, lw=0)
        ceiling = rows.groupby("alpha").ceiling.mean()
        ax.plot(ceiling.index, ceiling.to_numpy(), ls="--", lw=1.6, color="black", label="noise ceiling")
        ax.set(title=f"{track} damping", xlabel="α (fraction of the training set kept)", ylabel="LDS")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def pareto(rank: pd.DataFrame, colors: dict[str, tuple]) -> Figure:
    """Tuned LDS at alpha 0.5 against total time, labelled points and the Pareto front as a step line."""
    fig, (ax,) = new_figure(9, 5.6)
    points = rank[rank.total_s > 0][["total_s", "lds_tuned"]].dropna()  # log-scale x needs positive times
    if points.empty:
        mark_not_available(ax, "no entry has both a tuned LDS and a time")
        return fig
    for entry, (seconds, lds) in points.iterrows():
        ax.scatter(seconds, lds, s=45, color=colors[entry], edgecolor="black", lw=0.5, zorder=3)
        ax.annotate(entry, (seconds, lds), xytext=(5, 4), textcoords="offset points", fontsize=8)
    front = points.loc[[e for e in pareto_members(rank) if e in points.index]]
    if len(front):
        ax.plot(front.total_s, front.lds_tuned, color="black", lw=1.1, ls="--", zorder=2)
        ax.scatter(front.total_s, front.lds_tuned, s=150, facecolor="none", edgecolor="black", lw=1.3, zorder=4,
                   label="Pareto front (resolved)")
    ax.set_xscale("log")
    ax.set(xlabel="total time: fit + score (s, log scale)", ylabel=f"LDS at α = {RANKING_ALPHA}, tuned damping",
           title="Accuracy against cost")
    ax.legend(loc="best", fontsize=8)
    return fig


def layer_indices(spectra: dict[str, np.ndarray]) -> list[int]:
    return sorted(int(key.rsplit("/layer", 1)[1]) for key in spectra if key.startswith(f"{REFERENCE}/layer"))


def descending(eigvals: np.ndarray) -> np.ndarray:
    return np.clip(np.sort(eigvals)[::-1], EIGVAL_FLOOR, None)


def spectra_figure(spectra: dict[str, np.ndarray], order: list[str], colors: dict[str, tuple]) -> Figure:
    layers = layer_indices(spectra)
    fig, axes = new_figure(min(4.4 * max(len(layers), 1), 15), 4.6, max(len(layers), 1))
    if not layers:
        mark_not_available(axes[0], "no spectra.npz with the exact GGN spectra")
        return fig
    for ax, layer in zip(axes, layers):
        reference = descending(spectra[f"{REFERENCE}/layer{layer}"])
        ax.plot(np.arange(1, reference.size + 1), reference, color="black", lw=3.2, zorder=2, label="exact GGN")
        for entry in order:
            key = f"{entry}/layer{layer}"
            if entry != REFERENCE and key in spectra:
                values = descending(spectra[key])
                ax.plot(np.arange(1, values.size + 1), values, color=colors[entry], lw=1.2, zorder=3, label=entry)
        ax.set_yscale("log")
        ax.set(title=f"layer {layer}", xlabel="rank", ylabel="eigenvalue")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def chain_lds(decomposition: pd.DataFrame, track: str) -> dict[str, float]:
    """LDS (mean over alpha) of every rung of the chain present on a track, in chain order."""
    rows = decomposition[(decomposition.track == track) & (decomposition.alpha.astype(str) == "mean")]
    rungs: dict[str, float] = {}
    for _, step in rows.iterrows():
        rungs.setdefault(step["from"], step.lds_from)
        rungs[step["to"]] = step.lds_to
    return {rung: float(lds) for rung, lds in rungs.items() if pd.notna(lds)}


def chain_resolved(decomposition: pd.DataFrame, track: str) -> dict[tuple[str, str], bool]:
    """(from, to) -> whether the step's drop (mean over alpha) is resolved by its paired interval."""
    rows = decomposition[(decomposition.track == track) & (decomposition.alpha.astype(str) == "mean")]
    return {(a, b): resolution(low, high) in ("higher", "lower")
            for a, b, low, high in zip(rows["from"], rows["to"], rows.drop_ci_low, rows.drop_ci_high)}


def waterfall_bars(rungs: dict[str, float],
                   resolved: dict[tuple[str, str], bool] | None = None) -> list[tuple[str, float, float, str]]:
    """(label, bottom, top, kind) bars: totals at the first rung, GGN and the last rung, changes between (kind
    "change" where resolved, "unresolved" where the step's interval contains 0 or is missing)."""
    resolved = {} if resolved is None else resolved
    names = list(rungs)
    totals = {names[0], REFERENCE, names[-1]}
    bars = []
    for i, name in enumerate(names):
        if i:
            before = rungs[names[i - 1]]
            label = f"{RUNG_LABELS.get(names[i - 1], names[i - 1])}\n→ {RUNG_LABELS.get(name, name)}"
            kind = "change" if resolved.get((names[i - 1], name), False) else "unresolved"
            bars.append((label, before, rungs[name], kind))
        if name in totals:
            bars.append((RUNG_LABELS.get(name, name), 0.0, rungs[name], "total"))
    return bars


def draw_waterfall(ax: Axes, bars: list[tuple[str, float, float, str]]) -> None:
    for x, (_label, bottom, top, kind) in enumerate(bars):
        color = {"total": "0.45", "unresolved": "0.85"}.get(kind, "tab:red" if top < bottom else "tab:green")
        ax.bar(x, top - bottom, bottom=bottom, color=color, width=0.65, edgecolor="black", lw=0.5,
               hatch="//" if kind == "unresolved" else None)
        text = f"{top:.3f}" if kind == "total" else f"{top - bottom:+.3f}"
        downwards = top < bottom
        ax.annotate(text, (x, top), xytext=(0, -3 if downwards else 3), textcoords="offset points", ha="center",
                    va="top" if downwards else "bottom", fontsize=8)
        if x + 1 < len(bars):
            ax.plot([x + 0.33, x + 0.67], [top, top], color="0.3", lw=0.8)
    ends = [0.0, *(end for _, bottom, top, _ in bars for end in (bottom, top))]
    pad = 0.12 * (max(ends) - min(ends) or 1.0)
    ax.set_ylim(min(ends) - (pad if min(ends) < 0 else 0), max(ends) + pad)  # bars' sticky edges defeat margins
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)


def waterfall(decomposition: pd.DataFrame) -> Figure:
    fig, axes = new_figure(12, 4.6, len(TRACKS))
    for ax, track in zip(axes, TRACKS):
        rungs = chain_lds(decomposition, track)
        if len(rungs) < 2:
            mark_not_available(ax, f"fewer than two rungs of the chain on the {track} track")
            continue
        draw_waterfall(ax, waterfall_bars(rungs, chain_resolved(decomposition, track)))
        ax.set(title=f"{track} damping (mean over α)", ylabel="LDS")
    return fig


def damping_figure(grid: pd.DataFrame, order: list[str], colors: dict[str, tuple]) -> Figure:
    """Dev-half LDS against damping (log x), one line per entry over its grid; the pick and the fixed point marked."""
    fig, (ax,) = new_figure(9, 5.2)
    rows = grid_rows(grid, order)
    rows = rows[(rows.damping > 0) & rows.dev_lds.notna()]  # a log axis needs positive dampings
    if rows.empty:
        mark_not_available(ax, "no damping_grid.csv with dev-half LDS per grid point")
        return fig
    for entry in [e for e in order if e in set(rows.entry)]:
        line = rows[rows.entry == entry].sort_values("damping")
        ax.plot(line.damping, line.dev_lds, marker="o", ms=3, lw=1.3, color=colors[entry], label=entry)
        chosen, fixed = line[line.chosen], line[line.is_fixed]
        ax.scatter(chosen.damping, chosen.dev_lds, marker="*", s=170, color=colors[entry], edgecolor="black",
                   lw=0.7, zorder=4)
        ax.scatter(fixed.damping, fixed.dev_lds, marker="s", s=45, facecolor="none", edgecolor="black", lw=1.0,
                   zorder=3)
    for damping in sorted(set(rows[rows.is_fixed].damping)):
        ax.axvline(damping, color="0.3", ls=":", lw=1.0, zorder=1)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="*", ms=11, ls="", color="0.6", markeredgecolor="black"),
                Line2D([], [], marker="s", ms=6, ls=":", color="0.3", markerfacecolor="none",
                       markeredgecolor="black")]
    labels += ["chosen damping", "fixed damping"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_xscale("log")
    ax.set(xlabel="damping λ (log scale)", ylabel=f"LDS at α = {RANKING_ALPHA}, dev half of the test queries",
           title="Damping grid")
    return fig


def draw_figures(results: pd.DataFrame, rank: pd.DataFrame, decomposition: pd.DataFrame,
                 spectra: dict[str, np.ndarray], grid: pd.DataFrame | None = None) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by name (the keys of FIGURES)."""
    order = list(rank.index)
    colors = entry_colors(order)
    grid = pd.DataFrame(columns=list(schema.GRID_COLUMNS)) if grid is None else grid
    drawers = {
        "lds_vs_alpha": lambda: lds_vs_alpha(results, order, colors),
        "pareto": lambda: pareto(rank, colors),
        "damping": lambda: damping_figure(grid, order, colors),
        "spectra": lambda: spectra_figure(spectra, order, colors),
        "waterfall": lambda: waterfall(decomposition),
    }
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        return {name: png_bytes(draw()) for name, draw in drawers.items()}
