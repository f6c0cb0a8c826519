"""The leaderboard: read a results directory, render Markdown and self-contained HTML, write both atomically."""

from __future__ import annotations

import base64
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from influence_bench.report import tables
from influence_bench.report.figures import FIGURES, draw_figures

RUN_FIRST = "run `influence-bench run` first and pass the directory it wrote (results/TASK-PRESET by default)"
REQUIRED_COLUMNS = ("entry", "track", "metric", "alpha", "value", "ci_low", "ci_high", "ceiling", "higher_is_better",
                    "damping", "status", "message", "task", "task_version", "preset", "n_masks", "n_seeds", "seeds",
                    "influence_bench_version", "torch_version", "curvlinops_version", "numpy_version",
                    "python_version", "git_commit", "machine", "timestamp")
DECOMPOSITION_COLUMNS = ("track", "alpha", "step", "from", "to", "lds_from", "lds_to", "drop", "share_of_ggn_to_kfac")
SPLIT_COLUMNS = ("track", "alpha", "change", "basis_first", "eigenvalues_first", "shapley", "share_of_block_to_kfac")
TEXT_COLUMNS = {"entry", "track", "α", "step", "change", "message"}


class ReportError(RuntimeError):
    """The results directory cannot be reported on; the message says what to do."""


# -- reading the results directory --------------------------------------------------------------
def load_results(results_dir: Path) -> pd.DataFrame:
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} does not exist: {RUN_FIRST}")
    path = results_dir / "results.parquet"
    if not path.is_file():
        raise ReportError(f"{results_dir} has no results.parquet, so it is not a results directory: {RUN_FIRST}")
    try:
        results = pd.read_parquet(path)
    except Exception as exc:  # pyarrow reports a damaged file with several exception types
        raise ReportError(f"cannot read {path} ({type(exc).__name__}: {exc}); "
                          "re-run `influence-bench run` to write it again") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ReportError(f"{path} lacks the columns {', '.join(missing)}: it was not written by this version of "
                          "`influence-bench run`; re-run it to write it again")
    return results


def load_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """decomposition.csv or split.csv; an empty table where the run wrote none (no chain entries)."""
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        table = pd.read_csv(path, dtype={"alpha": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(columns))
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReportError(f"cannot read {path} ({exc}); re-run `influence-bench run` to write it again") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(f"{path} lacks the columns {', '.join(missing)}; re-run `influence-bench run`")
    return table


def load_spectra(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ReportError(f"cannot read {path} ({exc}); re-run `influence-bench run` to write it again") from exc


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


def sections(results: pd.DataFrame, rank: pd.DataFrame, decomposition: pd.DataFrame,
             split: pd.DataFrame) -> list[Section]:
    order = list(rank.index)
    alpha = tables.RANKING_ALPHA
    found = [
        Section("leaderboard", "Ranking",
                "Entries ordered by the linear datamodeling score (LDS: Spearman correlation between the predicted "
                "and the actual effect of retraining on random subsets; higher is better, the noise ceiling is the "
                f"best reachable) at α = {alpha} on the tuned-damping track, measured on the held-out half of the "
                "test queries (the fixed-damping column is on the same half). ↑: higher is better, ↓: lower is "
                "better. Overall is the Borda rank over tuned LDS, fidelity, eigval_mismatch, total time and peak "
                "memory: an entry scores one point per entry it beats on each metric (n/a scores nothing).",
                tables=[table_view(tables.ranking_table(rank, results), html_id="ranking")]),
        Section("lds", "LDS per α",
                "LDS [95% CI] at each subset fraction α. Fixed: one damping for all entries, all test queries. "
                "Tuned: each entry's damping chosen on half of the test queries, LDS on the other half. "
                "Higher is better; the last row is the noise ceiling.",
                figure="lds_vs_alpha",
                tables=[table_view(tables.lds_table(results, track, order), caption=f"{track} damping")
                        for track in tables.TRACKS]),
        Section("cost-accuracy", "Accuracy against cost",
                "Faster (left) and better (up) is better; entries on the Pareto front are not beaten on both.",
                figure="pareto"),
        Section("fidelity", "Curvature fidelity",
                "How close each curvature is to the exact GGN (fixed damping): relative Frobenius error, spectrum "
                "error, eigenvalue and eigenbasis mismatch, overlap of the top-10/100 eigenvectors, inverse-HVP "
                "error, and fidelity (Spearman correlation of scores with the exact GGN's). n/a: the entry has no "
                "explicit curvature.",
                figure="spectra", tables=[table_view(tables.fidelity_table(results, order))]),
        Section("decomposition", "Where accuracy is lost",
                "The chain Hessian → GGN → block-GGN → EK-FAC → K-FAC: the drop of a step is LDS before minus "
                "LDS after (positive: accuracy lost), and its share of the whole GGN → K-FAC drop. The second table "
                "splits the block-GGN → K-FAC drop into changing the eigenbasis and changing the eigenvalues, taken "
                "in both orders and averaged (Shapley).",
                figure="waterfall",
                tables=[table_view(tables.decomposition_table(decomposition), caption="chain"),
                        table_view(tables.split_table(split), caption="basis / eigenvalue split")]),
        Section("cost", "Cost",
                "Wall-clock time to fit the curvature and to score all test-train pairs, and peak resident memory "
                "of the entry's process (lower is better). The per-example gradients every entry shares are "
                "computed once, shown as (shared gradients) and not counted in the entries' times.",
                tables=[table_view(tables.cost_table(results, order))]),
    ]
    failures = tables.failed_table(results)
    if len(failures):
        found.append(Section("failed", "Failed entries",
                             "Entries that crashed or produced unusable scores; they are not ranked.",
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
                     spectra: dict[str, np.ndarray]) -> tuple[str, str, dict[str, bytes]]:
    """The Markdown, the HTML and the figures' PNG bytes, all in memory."""
    rank = tables.ranking(results)
    pngs = draw_figures(results, rank, decomposition, spectra)
    context = {
        "title": f"Influence-function curvature leaderboard: {tables.constant(results, 'task')}",
        "subtitle": f"preset {tables.constant(results, 'preset')}, run {tables.constant(results, 'timestamp')}",
        "sections": sections(results, rank, decomposition, split),
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


def write_report(results_dir: Path, out_dir: Path = Path("reports")) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, figures/*.png and results.csv for a results directory into out_dir."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    results = load_results(results_dir)
    decomposition = load_csv(results_dir / "decomposition.csv", DECOMPOSITION_COLUMNS)
    split = load_csv(results_dir / "split.csv", SPLIT_COLUMNS)
    spectra = load_spectra(results_dir / "spectra.npz")
    markdown, html, pngs = render_documents(results, decomposition, split, spectra)

    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, png in pngs.items():
        written[name] = out_dir / "figures" / f"{name}.png"
        write_atomically(written[name], png)
    # the small long table travels with the leaderboard (the scores and the checkpoint stay in results_dir)
    written["results"] = out_dir / "results.csv"
    write_atomically(written["results"], (results_dir / "results.csv").read_bytes()
                     if (results_dir / "results.csv").exists() else results.to_csv(index=False).encode("utf-8"))
    written["markdown"] = out_dir / "leaderboard.md"
    written["html"] = out_dir / "leaderboard.html"
    write_atomically(written["markdown"], markdown.encode("utf-8"))
    write_atomically(written["html"], html.encode("utf-8"))
    return written
