"""The leaderboard: read a results directory, render Markdown and self-contained HTML, write both atomically."""

from __future__ import annotations

import base64
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.report import claims, study, tables
from influence_bench.report.figures import FIGURES, draw_figures

RUN_FIRST = "run `influence-bench run` first and pass the directory it wrote (results/TASK-PRESET by default)"
RERUN = "re-run `influence-bench run` to write it again"
TEXT_COLUMNS = {"entry", "track", "α", "step", "change", "message", "vs next", "accuracy", "skipped", "reason",
                "at edge"}


class ReportError(RuntimeError):
    """The results directory cannot be reported on; the message says what to do."""


# -- reading the results directory --------------------------------------------------------------
def load_results(results_dir: Path) -> pd.DataFrame:
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} does not exist: {RUN_FIRST}")
    path = results_dir / schema.RESULTS_FILE
    if not path.is_file():
        raise ReportError(f"{results_dir} has no {schema.RESULTS_FILE}, so it is not a results directory: {RUN_FIRST}")
    try:
        results = pd.read_parquet(path)
    except Exception as exc:  # pyarrow reports a damaged file with several exception types
        raise ReportError(f"cannot read {path} ({type(exc).__name__}: {exc}); {RERUN}") from exc
    try:
        return schema.validate(results)
    except schema.SchemaError as exc:
        raise ReportError(f"{path}: {exc}") from exc


def load_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """decomposition.csv, split.csv or damping_grid.csv; an empty table where the run wrote none."""
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        table = pd.read_csv(path, dtype={"alpha": str} if "alpha" in columns else None)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(columns))
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReportError(f"cannot read {path} ({exc}); {RERUN}") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(f"{path} lacks the columns {', '.join(missing)}; re-run `influence-bench run`")
    return table


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ReportError(f"cannot read {path} ({exc}); {RERUN}") from exc


def load_spectra(path: Path) -> dict[str, np.ndarray]:
    return load_arrays(path) if path.is_file() else {}


def load_bootstrap(path: Path) -> tables.Bootstrap:
    """The paired draws; ``Bootstrap.missing()`` where an older run wrote no bootstrap.npz."""
    if not path.is_file():
        return tables.Bootstrap.missing()
    try:
        return tables.Bootstrap.from_arrays(load_arrays(path))
    except ValueError as exc:
        raise ReportError(f"{path}: {exc}; {RERUN}") from exc


# -- what the templates show ----------------------------------------------------------------------
@dataclass
class TableView:
    columns: list[str]
    rows: list[list[str]]
    right_aligned: list[bool]
    caption: str = ""
    html_id: str = ""


@dataclass
class Section:
    anchor: str
    heading: str
    text: str
    figure: str = ""
    tables: list[TableView] = field(default_factory=list)


def table_view(frame: pd.DataFrame, caption: str = "", html_id: str = "") -> TableView:
    columns = [str(c) for c in frame.columns]
    return TableView(columns, frame.astype(str).to_numpy().tolist(), [c not in TEXT_COLUMNS for c in columns],
                     caption, html_id)


def percent(x: float) -> str:
    return f"{100 * x:g}%"


def ranking_text(rank: pd.DataFrame, boot: tables.Bootstrap) -> str:
    alpha = tables.RANKING_ALPHA
    text = ("Entries ordered by the linear datamodeling score (LDS: Spearman correlation between the predicted "
            "and the actual effect of retraining on random subsets; higher is better, the noise ceiling is the "
            f"best reachable) at α = {alpha} on the tuned-damping track, measured on the held-out half of the "
            "test queries (the fixed-damping column is on the same half). Rank: an entry whose difference to the "
            "entry above is not resolved, that is whose paired 95% bootstrap interval (test points and masks "
            "resampled together, the same resamples for both entries) contains 0, shares that entry's rank, "
            "shown as \"3=\". Δ to next: this entry's LDS minus the next one's, with that interval; vs next: "
            "higher (resolved) or not resolved. ↑: higher is better, ↓: lower is better. Overall is the Borda rank "
            "over tuned LDS, fidelity, eigval_mismatch, total time and peak memory: an entry scores one point per "
            "entry it beats on each metric, and only a resolved win counts: LDS when the paired interval of the "
            "difference is above 0; total time when the slower entry takes more than "
            f"max({percent(tables.TIME_MARGIN)}, {tables.SPREAD_FACTOR:g} × the larger run-to-run spread of the "
            f"pair's repeated score timing) and {tables.TIME_FLOOR_S:g} s longer; peak memory when the larger exceeds the smaller by more than "
            f"{percent(tables.MEMORY_MARGIN)} + {tables.MEMORY_FLOOR_MB:g} MB; fidelity and eigval_mismatch when "
            f"better by more than {tables.DETERMINISTIC_TOLERANCE:g}. n/a scores nothing; ~ marks a value computed "
            "from an estimate.")
    if not boot.available:
        text += (" Paired intervals are unavailable: this results directory has no bootstrap.npz (an older run), "
                 "so no LDS difference is resolved, all entries share one group and LDS gives no Borda points; "
                 "re-run `influence-bench run` to get them.")
    else:
        without = [e for e in rank.index if pd.notna(rank.lds_tuned[e]) and boot.get(e) is None]
        if without:
            text += (f" No paired draws for {', '.join(without)}: their LDS differences are unavailable and count "
                     "as not resolved.")
    return text


def pareto_text(rank: pd.DataFrame) -> str:
    front = tables.pareto_members(rank)
    return ("Faster (left) and better (up) is better. An entry is on the Pareto front unless another entry is "
            "resolved-better on LDS (paired interval above 0) without being resolved-slower, or resolved-faster "
            "without being resolved-worse on LDS; time is resolved by the same margin as in the overall rank. "
            f"Front, fastest first: {', '.join(front) if front else 'none'}.")


def damping_text(grid: pd.DataFrame, order: list[str]) -> str:
    summary = tables.damping_summary(grid, order)
    text = (f"Each entry's tuned damping is the one with the best LDS at α = {tables.RANKING_ALPHA} on the dev half "
            "of the test queries, over half-decade steps from 1e-3 to 10 times the mean eigenvalue of the entry's "
            "own curvature plus the fixed damping itself; the reported tuned LDS is on the other half. By "
            "construction the tuned pick is never below the fixed damping on the dev half: the fixed damping is a "
            "grid point. × mean eigenvalue: the chosen damping over the entry's mean eigenvalue. At edge: the pick "
            "is the smallest or the largest grid damping, so the optimum may lie outside the grid.")
    if summary.empty:
        return text + " No damping grid in this results directory (no damping_grid.csv or no tuned entry)."
    edge = summary.entry[summary.at_edge].tolist()
    text += f" Picked at an edge: {', '.join(edge)}." if edge else " No pick is at an edge of its grid."
    below = summary.entry[summary.dev_chosen < summary.dev_fixed - 1e-12].tolist()
    if below:
        text += (f" Inconsistent: the pick of {', '.join(below)} is below the fixed damping on the dev half; the run "
                 "that wrote this grid is wrong.")
    return text


def decomposition_text(decomposition: pd.DataFrame, split: pd.DataFrame) -> str:
    text = ("The chain Hessian → GGN → block-GGN → EK-FAC → K-FAC: the drop of a step is LDS before minus LDS after "
            "(positive: accuracy lost) with its paired 95% bootstrap interval; a step loses (or gains) accuracy "
            "only where that interval excludes 0 (resolved), otherwise the step is not resolved. The share of the "
            "whole GGN → K-FAC drop is a point estimate, not a test. The second table splits the block-GGN → "
            "K-FAC drop into changing the eigenbasis and changing the eigenvalues, taken in both orders and "
            "averaged (Shapley), each with its paired interval.")
    conclusions = tables.chain_conclusions(decomposition, split)
    return " ".join([text, *conclusions]) if conclusions else text + " No entry of the chain ran."


def study_sections(results: pd.DataFrame, order: list[str],
                   runs: dict[str, tuple[pd.DataFrame, tables.Bootstrap]]) -> list[Section]:
    """Leave-one-out beside LDS, the task versions' reference models, and the paper's claims."""
    found = []
    if study.has_loo(results):
        found.append(Section(
            "loo", "Leave-one-out",
            "Leave-one-out correlation (PROTOCOL.md section 4): K training points removed one at a time and "
            "retrained with R seeds beside full-data models on the same seeds; per test point the Pearson and "
            "Spearman correlation over the removed points between the predicted effect of removing a point "
            "(minus its score) and the actual mean change of the test loss, averaged over test points, with the "
            "95% bootstrap CI and LDS beside it. The last row is each column's noise ceiling (split-half, clipped at 0, "
            "Spearman-Brown). Tuned: the held-out half of the test queries at the entry's tuned damping.",
            tables=[table_view(study.loo_table(results, order))]))
    found.append(Section(
        "versions", "Task versions",
        "The state of each task version's reference model (influence functions assume a minimum: a gradient "
        "norm near 0 and no negative Hessian eigenvalues), its noise ceilings, and the leave-one-out correlation "
        "of the exact entries (fixed damping).",
        tables=[table_view(study.versions_table({label: table for label, (table, _) in runs.items()}))]))
    verdicts = study.claims_for(runs)
    if len(verdicts):
        found.append(Section("claims", "The paper's claims", study.CLAIMS_TEXT,
                             tables=[table_view(claims.claims_display(verdicts[verdicts.task == task])
                                                .drop(columns="task"), caption=task)
                                     for task in verdicts.task.unique()]))
    return found


def sections(results: pd.DataFrame, rank: pd.DataFrame, decomposition: pd.DataFrame, split: pd.DataFrame,
             grid: pd.DataFrame, boot: tables.Bootstrap,
             runs: dict[str, tuple[pd.DataFrame, tables.Bootstrap]] | None = None) -> list[Section]:
    order = list(rank.index)
    found = [
        Section("leaderboard", "Ranking", ranking_text(rank, boot),
                tables=[table_view(tables.ranking_table(rank, results), html_id="ranking")]),
        Section("lds", "LDS per α",
                "LDS [95% CI] at each subset fraction α. Fixed: one damping for all entries, all test queries. "
                "Tuned: each entry's damping chosen on half of the test queries, LDS on the other half. "
                "Higher is better; the last row is the noise ceiling.",
                figure="lds_vs_alpha",
                tables=[table_view(tables.lds_table(results, track, order), caption=f"{track} damping")
                        for track in tables.TRACKS]),
        Section("cost-accuracy", "Accuracy against cost", pareto_text(rank), figure="pareto"),
        Section("damping", "Damping", damping_text(grid, order), figure="damping",
                tables=[table_view(tables.damping_table(grid, order), html_id="damping-table")]),
        Section("fidelity", "Curvature fidelity",
                "How close each curvature is to the exact GGN (fixed damping): relative Frobenius error, spectrum "
                "error, eigenvalue and eigenbasis mismatch, overlap of the top-10/100 eigenvectors, inverse-HVP "
                "error, and fidelity (Spearman correlation of scores with the exact GGN's). n/a: not applicable "
                "(the entry has no explicit curvature). ~: an estimate, not an exact value (above the dense limit "
                "the suite uses CG solves on a subset of queries, Lanczos and Hutchinson estimates).",
                figure="spectra", tables=[table_view(tables.fidelity_table(results, order))]),
        Section("decomposition", "Where accuracy is lost", decomposition_text(decomposition, split),
                figure="waterfall",
                tables=[table_view(tables.decomposition_table(decomposition), caption="chain"),
                        table_view(tables.split_table(split), caption="basis / eigenvalue split")]),
        Section("cost", "Cost",
                "Wall-clock time to fit the curvature and to score all test-train pairs, and peak resident memory "
                "of the entry's process (lower is better). Score spread: the relative run-to-run spread "
                "(max - min) / median of the repeated score timing (n/a: not repeated); it widens the margin a time "
                "difference needs to count in the overall rank. What entries share is computed once, shown as "
                "(shared) rows and not counted in the entries' times: the per-example gradients, the dense exact "
                "GGN and Hessian (read by the dense entries), and the GGN reference of the fidelity metrics.",
                tables=[table_view(tables.cost_table(results, order))]),
    ]
    found[2:2] = study_sections(results, order, runs or {study.run_label(results): (results, boot)})
    declined = tables.skipped_table(results)
    if len(declined):
        found.append(Section("skipped", "Skipped",
                             "Entries that declined a task, with their reason; they did not fail. An entry that "
                             "declined everything is not ranked.",
                             tables=[table_view(declined)]))
    failures = tables.failed_table(results)
    if len(failures):
        found.append(Section("failed", "Failed entries",
                             "Entries that did not finish, with their status (timeout, oom, crashed, error, "
                             "invalid-output); they are not ranked.",
                             tables=[table_view(failures)]))
    return found


# -- rendering ----------------------------------------------------------------------------------
def markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("influence_bench.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"]), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["md_cell"] = markdown_cell
    return env


def render_documents(results: pd.DataFrame, decomposition: pd.DataFrame, split: pd.DataFrame,
                     spectra: dict[str, np.ndarray], grid: pd.DataFrame | None = None,
                     boot: tables.Bootstrap | None = None,
                     versions: dict[str, tuple[pd.DataFrame, tables.Bootstrap]] | None = None,
                     ) -> tuple[str, str, dict[str, bytes]]:
    """The Markdown, the HTML and the figures' PNG bytes, all in memory."""
    grid = pd.DataFrame(columns=list(schema.GRID_COLUMNS)) if grid is None else grid
    boot = tables.Bootstrap.missing() if boot is None else boot
    rank = tables.ranking(results, boot)
    pngs = draw_figures(results, rank, decomposition, spectra, grid)
    context = {
        "title": f"Influence-function curvature leaderboard: {tables.constant(results, 'task')}",
        "subtitle": f"preset {tables.constant(results, 'preset')}, run {tables.constant(results, 'timestamp')}",
        "sections": sections(results, rank, decomposition, split, grid, boot,
                             {study.run_label(results): (results, boot), **(versions or {})}),
        "provenance": tables.provenance(results),
        "figures": FIGURES,
    }
    env = environment()
    markdown = env.get_template("leaderboard.md.j2").render(**context)
    inline = {name: base64.b64encode(png).decode("ascii") for name, png in pngs.items()}
    html = env.get_template("leaderboard.html.j2").render(**context, inline=inline)
    return markdown, html, pngs


def write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary file beside path, then rename it over path: readers never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)  # mkstemp creates it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_version(results_dir: Path) -> tuple[str, tuple[pd.DataFrame, tables.Bootstrap]]:
    """Another task version of the study: its label, its table and its paired draws."""
    results = load_results(Path(results_dir))
    return study.run_label(results), (results, load_bootstrap(Path(results_dir) / schema.BOOTSTRAP_FILE))


def write_report(results_dir: Path, out_dir: Path = Path("reports"), versions: Sequence[Path] = ()) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, figures/*.png and results.csv for a results directory into
    out_dir; ``versions``: results directories of other task versions whose claims and reference models
    the report shows beside this one's."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    others = dict(load_version(v) for v in versions)
    results = load_results(results_dir)
    decomposition = load_csv(results_dir / schema.DECOMPOSITION_FILE, schema.DECOMPOSITION_COLUMNS)
    split = load_csv(results_dir / schema.SPLIT_FILE, schema.SPLIT_COLUMNS)
    grid = load_csv(results_dir / schema.GRID_FILE, schema.GRID_COLUMNS)
    spectra = load_spectra(results_dir / schema.SPECTRA_FILE)
    boot = load_bootstrap(results_dir / schema.BOOTSTRAP_FILE)
    markdown, html, pngs = render_documents(results, decomposition, split, spectra, grid, boot, others)

    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, png in pngs.items():
        written[name] = out_dir / "figures" / f"{name}.png"
        write_atomically(written[name], png)
    # the small long table travels with the leaderboard (the scores and the checkpoint stay in results_dir)
    written["results"] = out_dir / schema.RESULTS_CSV
    write_atomically(written["results"], (results_dir / schema.RESULTS_CSV).read_bytes()
                     if (results_dir / schema.RESULTS_CSV).exists() else results.to_csv(index=False).encode("utf-8"))
    written["markdown"] = out_dir / "leaderboard.md"
    written["html"] = out_dir / "leaderboard.html"
    write_atomically(written["markdown"], markdown.encode("utf-8"))
    write_atomically(written["html"], html.encode("utf-8"))
    return written
