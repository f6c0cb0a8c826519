"""The cross-task leaderboard: every task's own ranking side by side, and one overall Borda rank.

Per task, the ranking is the task's leaderboard's (``tables.ranking``: Borda over tuned LDS,
fidelity, eigenvalue mismatch, time and memory, each pairwise win decided by its interval or
margin). Across tasks, an entry ranked r of n on a task scores n - r points there (competition
ranks: ties share), an entry that was skipped or failed on a task scores 0 there, and the overall
rank is the competition rank of the summed points. Also: the per-task tuned and fixed LDS at
alpha 0.5 with their 95% intervals and the task's noise ceiling, the mislabel-detection AUC where a
task flips labels, and which entry was skipped where and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from influence_bench import schema
from influence_bench.report import tables
from influence_bench.report.render import (ReportError, Section, environment, load_bootstrap, load_results,
                                           table_view, write_atomically)

ALPHA = schema.RANKING_ALPHA


@dataclass
class TaskResults:
    task: str
    results: pd.DataFrame
    rank: pd.DataFrame  # tables.ranking
    manifest: dict  # the results directory's manifest.json (its reference: exact or estimated)


def load_task_results(results_dirs: Mapping[str, Path] | list[Path]) -> list[TaskResults]:
    """Each results directory with its ranking; two directories of one task are an error."""
    dirs = list(results_dirs.values()) if isinstance(results_dirs, Mapping) else list(results_dirs)
    loaded: list[TaskResults] = []
    for d in dirs:
        results = load_results(Path(d))
        task = str(results.task.iloc[0])
        if any(t.task == task for t in loaded):
            raise ReportError(f"two results directories of task {task!r}; give one per task")
        rank = tables.ranking(results, load_bootstrap(Path(d) / schema.BOOTSTRAP_FILE))
        manifest_file = Path(d) / schema.MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
        loaded.append(TaskResults(task, results, rank, manifest))
    if not loaded:
        raise ReportError("no results directories: give one per task (`influence-bench run --task all` writes them)")
    return loaded


def all_entries(tasks: list[TaskResults]) -> list[str]:
    names: dict[str, None] = {}
    for t in tasks:
        for e in t.results.entry:
            if e != schema.SHARED_GRADIENTS:
                names.setdefault(e, None)
    return list(names)


def overall_ranking(tasks: list[TaskResults]) -> pd.DataFrame:
    """entry x task ranks ("-" where not ranked), the Borda points summed over tasks and the overall rank."""
    entries = all_entries(tasks)
    table = pd.DataFrame(index=pd.Index(entries, name="entry"))
    points = pd.Series(0.0, index=table.index)
    for t in tasks:
        n = len(t.rank)
        ranks = t.rank["overall"].reindex(entries)
        table[t.task] = ranks
        points += (n - ranks).fillna(0.0)
    table["points"] = points
    table["tasks_ranked"] = table[[t.task for t in tasks]].notna().sum(axis=1)
    table["overall"] = tables.competition_ranks(table.points)
    return table.sort_values(["overall", "points"], ascending=[True, False])


def skipped_table(tasks: list[TaskResults]) -> pd.DataFrame:
    """One row per (entry, task) that did not run: its status and the reason it gave."""
    rows = []
    for t in tasks:
        for frame in (tables.skipped(t.results), tables.failed(t.results)):
            for entry, group in frame.groupby("entry", sort=False):
                rows.append({"entry": entry, "task": t.task, "status": group.status.iloc[0],
                             "reason": str(group.message.iloc[0]).splitlines()[0] if len(group) else ""})
    return pd.DataFrame(rows, columns=["entry", "task", "status", "reason"])


def lds_cells(tasks: list[TaskResults], track: str) -> pd.DataFrame:
    """entry x task: LDS at alpha 0.5 on one track with its 95% interval; a last row, the noise ceiling."""
    entries = all_entries(tasks)
    table = pd.DataFrame(index=pd.Index(entries, name="entry"))
    ceilings = {}
    for t in tasks:
        rows = tables.metric_rows(t.results, track, "lds", ALPHA).reindex(entries)
        table[t.task] = [tables.with_ci(v, lo, hi) if pd.notna(v) else "-"
                         for v, lo, hi in zip(rows.value, rows.ci_low, rows.ci_high)]
        ceiling = rows.ceiling.dropna()
        ceilings[t.task] = tables.decimals(float(ceiling.iloc[0])) if len(ceiling) else "-"
    table.loc["noise ceiling"] = pd.Series(ceilings)
    return table


def mislabel_cells(tasks: list[TaskResults]) -> pd.DataFrame:
    """entry x task: mislabel-detection ROC-AUC, for the tasks that flip labels."""
    entries = all_entries(tasks)
    table = pd.DataFrame(index=pd.Index(entries, name="entry"))
    for t in tasks:
        rows = t.results[(t.results.metric == "mislabel_auc") & (t.results.status == "ok")]
        if rows.empty:
            continue
        values = rows.set_index("entry").value.reindex(entries)
        table[t.task] = [tables.decimals(v) if pd.notna(v) else "-" for v in values]
    return table


def task_facts(tasks: list[TaskResults]) -> pd.DataFrame:
    """Per task: version, preset, its parameter count and how many entries ran, were skipped and failed."""
    rows = []
    for t in tasks:
        r = t.results
        rows.append({"task": t.task, "version": int(r.task_version.iloc[0]), "preset": r.preset.iloc[0],
                     "ranked": len(t.rank), "skipped": tables.skipped(r).entry.nunique(),
                     "failed": tables.failed(r).entry.nunique(),
                     "fidelity reference": t.manifest.get("reference", "-")})
    return pd.DataFrame(rows)


def with_entry_column(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.index.name = "entry"
    return frame.reset_index().astype(str).replace({"nan": "-", "<NA>": "-"})


def render(tasks: list[TaskResults]) -> tuple[str, str]:
    overall = overall_ranking(tasks)
    overall_view = overall.copy()
    for t in tasks:
        overall_view[t.task] = [str(int(v)) if pd.notna(v) else "-" for v in overall[t.task]]
    overall_view["points"] = [f"{v:g}" for v in overall.points]
    overall_view["overall"] = [str(int(v)) for v in overall.overall]
    skipped = skipped_table(tasks)
    sections = [Section(*args[:3], tables=args[3]) for args in [
        ("tasks", "Tasks", "Each task's results directory, its preset, and how many entries were ranked, skipped "
         "and failed on it.", [table_view(task_facts(tasks).astype(str))]),
        ("overall", "Overall rank (Borda across tasks)",
         "Each column is the entry's overall rank on that task's own leaderboard (Borda over tuned LDS, fidelity, "
         "eigenvalue mismatch, time and memory, wins decided by intervals and margins). An entry ranked r of n on a "
         "task scores n - r points there; skipped or failed there, 0. `overall` is the competition rank of the "
         "summed points; `tasks_ranked` says on how many tasks it ran.",
         [table_view(with_entry_column(overall_view[[t.task for t in tasks] + ["points", "tasks_ranked",
                                                                               "overall"]]))]),
        ("lds-tuned", f"LDS at alpha {ALPHA:g}, tuned track",
         "Damping chosen on half of the test queries, LDS on the other half; 95% bootstrap interval over the "
         "held-out queries; last row, the task's noise ceiling (PROTOCOL.md section 3).",
         [table_view(with_entry_column(lds_cells(tasks, "tuned")))]),
        ("lds-fixed", f"LDS at alpha {ALPHA:g}, fixed track",
         "Damping 1e-4 (the paper's), all test queries.", [table_view(with_entry_column(lds_cells(tasks, "fixed")))]),
    ]]
    mislabel = mislabel_cells(tasks)
    if len(mislabel.columns):
        sections.append(Section("mislabel", "Mislabel detection",
                                "ROC-AUC of each entry's self-influence g^T (C + 1e-4)^-1 g against the flipped "
                                "training labels (0.5: chance).", tables=[table_view(with_entry_column(mislabel))]))
    sections.append(Section("skipped", "Skipped and failed, by task",
                            "Every entry that did not run on a task, with its reason." if len(skipped) else
                            "Every entry ran on every task.",
                            tables=[table_view(skipped.astype(str))] if len(skipped) else []))
    env = environment()
    context = {"tasks": [t.task for t in tasks], "sections": sections}
    return (env.get_template("tasks.md.j2").render(**context), env.get_template("tasks.html.j2").render(**context))


def write_cross_task_report(results_dirs: Mapping[str, Path] | list[Path], out_dir: Path = Path("reports")) -> dict[str, Path]:
    """Write tasks.md and tasks.html (the cross-task leaderboard) from one results directory per task."""
    tasks = load_task_results(results_dirs)
    markdown, html = render(tasks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"markdown": out_dir / "tasks.md", "html": out_dir / "tasks.html"}
    write_atomically(written["markdown"], markdown.encode("utf-8"))
    write_atomically(written["html"], html.encode("utf-8"))
    return written
