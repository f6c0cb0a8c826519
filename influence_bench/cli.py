"""The ``influence-bench`` command: list, groundtruth, run, report.

A thin shell over the Python API. Heavy modules (torch, curvlinops, pandas) are imported inside the
commands, after every name has been checked against the torch-free catalogue (``catalogue``), so
``--help``, ``list`` and an error for a bad name answer at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from influence_bench import catalogue
from influence_bench.groundtruth.cache import CACHE_ENV, default_cache_dir
from influence_bench.groundtruth.presets import PRESETS, UnknownPresetError, get_preset
from influence_bench.naming import (
    UnknownEntryError,
    UnknownTaskError,
    parse_point,
    split_names,
    unknown_entry,
    unknown_task,
)

DEFAULT_TASK = "digits-mlp"

app = typer.Typer(
    help="A benchmark suite for curvature (Hessian) approximations in influence functions.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

TaskOption = typer.Option(DEFAULT_TASK, "--task", help="Task name (see `influence-bench list`).")
PresetOption = typer.Option("standard", "--preset", help=f"Ground-truth preset: {', '.join(PRESETS)}.")
CacheOption = typer.Option(None, "--cache-dir", help=f"Cache directory (default: ${CACHE_ENV} or the user cache).")
DeviceOption = typer.Option("cpu", "--device", help="Torch device for training: cpu or cuda.")
AlphasOption = typer.Option(None, "--alphas", help="Comma-separated subset of the preset's alphas "
                            "(e.g. 0.5: the paper preset at one alpha); its own ground truth.")


def parse_alphas(text: Optional[str]) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        fail(f"--alphas {text!r}: give numbers separated by commas, e.g. 0.5 or 0.3,0.9")


def _plugin_list(plugins: Optional[str]) -> list[str]:
    return [p.strip() for p in plugins.split(",") if p.strip()] if plugins else []


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def check_device(device: str) -> str:
    if not (device == "cpu" or device.startswith("cuda")):
        fail(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu")
    return device


def check_names(task: str, entries: list[str] | None, plugins: list[str]) -> str:
    """The task's name, once the task and every entry name are known to exist: the built-ins from the
    torch-free catalogue and the entry points of other installed packages from their metadata (nothing
    imported; their parameter points are checked when the run builds them), or, with ``--plugins``
    modules (which may add tasks and entries), from the registries after importing them. Raises
    UnknownTaskError, UnknownEntryError, ValueError, or PluginError (a plugin that is nowhere)."""
    from influence_bench.plugins import ENTRY_GROUP, TASK_GROUP, outside_names, plugin_modules

    plugins = plugin_modules(plugins)  # --plugins and $INFLUENCE_BENCH_PLUGINS
    if not plugins:
        outside_tasks, outside_entries = outside_names(TASK_GROUP), outside_names(ENTRY_GROUP)
        try:
            name = task if task in outside_tasks else catalogue.task_name(task)
        except UnknownTaskError:
            raise unknown_task(task, sorted([t["name"] for t in catalogue.load()["tasks"]] + outside_tasks)) from None
        canonical = []
        for entry in entries or ():
            if parse_point(entry)[0] in outside_entries:
                canonical.append(entry)
                continue
            try:
                canonical.append(catalogue.entry_name(entry))
            except UnknownEntryError as exc:
                if str(exc).startswith("unknown entry") and outside_entries:
                    valid = [e["name"] for e in catalogue.load()["entries"]] + outside_entries
                    raise unknown_entry(parse_point(entry)[0], valid) from None
                raise
        twice = sorted({n for n in canonical if canonical.count(n) > 1})
        if twice:
            raise ValueError(f"entries named more than once: {', '.join(twice)}")
        return name
    from influence_bench.api import resolve_entries
    from influence_bench.plugins import load_plugins
    from influence_bench.tasks import get_task

    load_plugins(plugins)  # one that raises while importing is a failure row of the run, not an error here
    name = get_task(task).name
    resolve_entries(entries, 1e-4, 1e-6)
    return name


def _items(plugins: list[str] | None = None) -> dict[str, list[dict]]:
    """The tasks, entries and presets to list: the built-ins from the catalogue; the entry points of
    other installed packages and ``plugins`` modules imported (only when there are any)."""
    from influence_bench.plugins import ENTRY_GROUP, TASK_GROUP, outside_names, plugin_modules

    known = catalogue.load()
    tasks = [{k: t[k] for k in ("name", "version", "key", "n_params", "description")} for t in known["tasks"]]
    entries = [{"name": e["name"], "description": e["description"], "capabilities": ",".join(e["capabilities"]) or "-",
                "parameters": "; ".join(f"{k}={'|'.join(str(v).lower() for v in values)}"
                                        for k, values in e["parameters"].items()) or "-"}
               for e in known["entries"]]
    if outside_names(ENTRY_GROUP) or outside_names(TASK_GROUP) or plugin_modules(plugins):
        tasks, entries = _with_plugins(tasks, entries, plugins)
    presets = [{"name": p.name, "n_masks": p.n_masks, "n_seeds": p.n_seeds, "n_trainings": p.n_trainings,
                "description": p.description} for p in PRESETS.values()]
    return {"tasks": tasks, "entries": entries, "presets": presets}


def _with_plugins(tasks: list[dict], entries: list[dict], plugins: list[str] | None) -> tuple[list[dict], list[dict]]:
    """The listed tasks and entries with those of plugins (imported here), each with where it comes from;
    one that failed to load is listed with the first line of why."""
    from influence_bench.entries import ENTRIES, ORIGINS
    from influence_bench.plugins import LOAD_FAILURES, TASK_GROUP, entry_failures, load_plugins
    from influence_bench.tasks import TASK_ORIGINS, TASKS

    load_plugins(plugins)
    listed = {e["name"] for e in entries}
    for name, cls in ENTRIES.items():
        if name not in listed:
            entries.append({"name": name, "description": cls.description,
                            "capabilities": ",".join(sorted(cls.capabilities)) or "-",
                            "parameters": "; ".join(f"{k}={'|'.join(str(v).lower() for v in values)}"
                                                    for k, values in cls.parameters.items()) or "-",
                            "origin": ORIGINS.get(name, cls.__module__)})
    for name, why in entry_failures().items():
        entries.append({"name": name, "description": f"FAILED TO LOAD: {why.splitlines()[-1]}", "capabilities": "-",
                        "parameters": "-", "origin": why.splitlines()[0]})
    listed = {t["name"] for t in tasks}
    for name, spec in TASKS.items():
        if name not in listed:
            tasks.append({"name": name, "version": spec.version, "key": spec.key, "n_params": spec.n_params,
                          "description": spec.description, "origin": TASK_ORIGINS.get(name, "?")})
    for name, why in LOAD_FAILURES[TASK_GROUP].items():
        tasks.append({"name": name, "version": "-", "key": "-", "n_params": "-",
                      "description": f"FAILED TO LOAD: {why.splitlines()[-1]}", "origin": why.splitlines()[0]})
    for rows in (tasks, entries):
        for row in rows:
            row.setdefault("origin", "influence_bench")
    return tasks, entries


PluginsOption = typer.Option(None, "--plugins", help="Comma-separated modules (importable, in the current "
                             "directory, or paths to .py files) that register extra entries or tasks; installed "
                             "packages are found through their entry points without it.")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON: {\"tasks\": [...], \"entries\": [...]}."),
          plugins: Optional[str] = PluginsOption):
    """List the tasks, the registered entries (with those of installed packages) and the ground-truth presets."""
    try:
        items = _items(_plugin_list(plugins))
    except ImportError as exc:  # PluginError: a plugin that is nowhere, two entries of one name
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    for title, rows in items.items():
        if not rows:
            console.print(f"[bold]{title}[/]: none registered yet")
            continue
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(str(v)) for v in row.values()))
        console.print(table)


@app.command()
def groundtruth(
    task: str = TaskOption,
    preset: str = PresetOption,
    cache_dir: Optional[Path] = CacheOption,
    device: str = DeviceOption,
    loo: bool = typer.Option(False, "--loo/--no-loo", help="Also build the leave-one-out ground truth and print its ceiling."),
    alphas: Optional[str] = AlphasOption,
):
    """Build (or load from the cache) the LDS ground truth of a task and print its noise ceiling;
    with ``--loo`` also the leave-one-out ground truth and its ceiling."""
    try:
        catalogue.task_name(task)
        chosen = get_preset(preset).with_alphas(parse_alphas(alphas))
    except (UnknownTaskError, UnknownPresetError, ValueError) as exc:
        fail(str(exc))
    device = check_device(device)
    from influence_bench.groundtruth.lds import build_lds_groundtruth, groundtruth_dir
    from influence_bench.metrics.lds import noise_ceiling
    from influence_bench.tasks import get_task

    spec = get_task(task)
    from influence_bench.groundtruth.cache import UnwritableDirectoryError, check_writable

    try:
        cache_dir = check_writable(cache_dir or default_cache_dir(), "cache directory",
                                   "--cache-dir or $INFLUENCE_BENCH_CACHE")
    except UnwritableDirectoryError as exc:
        fail(str(exc))
    console.print(f"ground truth of [bold]{spec.key}[/], preset [bold]{chosen.name}[/] "
                  f"({chosen.n_trainings:,} trainings) in {groundtruth_dir(spec, chosen, cache_dir)}")
    start = time.perf_counter()
    gt = build_lds_groundtruth(spec, chosen, cache_dir, device=device)
    elapsed = time.perf_counter() - start
    table = Table(title=f"noise ceiling (split-half Spearman-Brown), {elapsed:.1f} s", title_justify="left")
    for column in ("alpha", "ceiling", "95% CI", "clipped test points", "undefined test points"):
        table.add_column(column)
    for a, alpha in enumerate(gt.alphas):
        c = noise_ceiling(gt.losses[a])
        table.add_row(f"{alpha:.1f}", f"{c.mean:.3f}", f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", str(c.n_clipped),
                      str(c.n_undefined))
    console.print(table)
    if not loo:
        return
    from influence_bench.groundtruth.loo import build_loo_groundtruth, loo_dir
    from influence_bench.metrics.loo import loo_noise_ceiling

    console.print(f"leave-one-out ground truth, {chosen.loo_points} removed points "
                  f"({chosen.n_loo_trainings:,} trainings) in {loo_dir(spec, chosen, cache_dir)}")
    start = time.perf_counter()
    loo_gt = build_loo_groundtruth(spec, chosen, cache_dir, device=device)
    elapsed = time.perf_counter() - start
    table = Table(title=f"leave-one-out noise ceiling (split-half Spearman-Brown), {elapsed:.1f} s",
                  title_justify="left")
    for column in ("correlation", "ceiling", "95% CI", "clipped test points", "undefined test points"):
        table.add_column(column)
    for name, c in loo_noise_ceiling(loo_gt).items():
        table.add_row(name, f"{c.mean:.3f}", f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", str(c.n_clipped),
                      str(c.n_undefined))
    console.print(table)


@app.command()
def run(
    task: str = TaskOption,
    preset: str = PresetOption,
    entries: Optional[str] = typer.Option(None, "--entries", help="Comma-separated entry names, each with an optional parameter point: kfac[fisher=mc,separate=true] (default: every entry at its default point, the MC rungs and the authors' configuration)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results directory (default: results/TASK-PRESET)."),
    cache_dir: Optional[Path] = CacheOption,
    device: str = DeviceOption,
    plugins: Optional[str] = PluginsOption,
    damping: float = typer.Option(1e-4, "--damping", help="Damping of the fixed track (the paper's 1e-4)."),
    dense_limit: Optional[int] = typer.Option(None, "--dense-limit", help="Largest parameter count for dense [P, P] matrices (default: $INFLUENCE_BENCH_DENSE_LIMIT or 10,000); above it, operators and estimates."),
    isolate: bool = typer.Option(True, "--isolate/--in-process", help="Each entry in a process of its own (default), or all in this one."),
    jobs: int = typer.Option(1, "--jobs", help="Entries evaluated at once (isolated runs), each with cores // jobs threads."),
    entry_timeout: float = typer.Option(3600, "--entry-timeout", help="Seconds an isolated entry may run from its fit on (its process's start-up does not count); past it, status timeout."),
    entry_memory: Optional[float] = typer.Option(None, "--entry-memory", help="MB of data memory an isolated entry may allocate (default: 8192, or 80% of this machine's memory when less); past it, status oom."),
    alphas: Optional[str] = AlphasOption,
    loo: bool = typer.Option(True, "--loo/--no-loo", help="Leave-one-out correlations beside LDS (builds the LOO ground truth if missing)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: remove the results directory first (otherwise a run "
                               "of the same configuration resumes it, and another configuration is refused)."),
):
    """Run entries against a task's ground truth (built first if missing) and write a results directory."""
    plugin_list = _plugin_list(plugins)
    names = split_names(entries) if entries else None
    try:
        task_name = check_names(task, names, plugin_list)
        chosen = get_preset(preset).with_alphas(parse_alphas(alphas))
        if jobs < 1 or (jobs > 1 and not isolate):
            raise ValueError(f"--jobs {jobs}: use --jobs >= 1, and more than 1 only with --isolate")
    except (UnknownTaskError, UnknownPresetError, UnknownEntryError, ValueError, ImportError) as exc:
        fail(str(exc))
    device = check_device(device)
    at = "" if chosen.alphas == get_preset(preset).alphas else "-alpha" + "-".join(f"{a:g}" for a in chosen.alphas)
    out_dir = out or Path("results") / f"{task_name}-{chosen.name}{at}"
    from influence_bench.groundtruth.cache import UnwritableDirectoryError, check_writable

    try:  # here too, before torch is imported: a sentence at once
        check_writable(cache_dir or default_cache_dir(), "cache directory", "--cache-dir or $INFLUENCE_BENCH_CACHE")
        check_writable(out_dir.parent, "parent of the results directory", "--out")
    except UnwritableDirectoryError as exc:
        fail(str(exc))
    from influence_bench.api import run as run_benchmark
    from influence_bench.runner.resume import ResultsDirError

    start = time.perf_counter()

    try:
        results = run_benchmark(task, names, preset, out=out_dir, isolate=isolate, cache_dir=cache_dir, device=device,
                                plugins=plugin_list, damping=damping, dense_limit=dense_limit,
                                entry_timeout_s=entry_timeout, entry_memory_mb=entry_memory, jobs=jobs, alphas=chosen.alphas, loo=loo, fresh=fresh)
    except (ResultsDirError, UnwritableDirectoryError, UnknownEntryError, UnknownTaskError, ImportError) as exc:
        fail(str(exc))
    print_lds_tables(results.table, damping)
    console.print(f"{time.perf_counter() - start:.0f} s; peak memory of this process "
                  f"{results.parent_peak_rss_mb:.0f} MB")
    console.print(f"results written to [bold]{out_dir}[/]")
    for name, reason in results.skipped.items():
        err_console.print(f"[bold yellow]entry {escape(name)} skipped:[/] {escape(reason)}", highlight=False)
    if results.failures:
        for name, message in results.failures.items():
            status = results.statuses[name]
            err_console.print(f"[bold red]entry {escape(name)} failed ({status}):[/] {escape(message)}",
                              highlight=False)
        fail(f"{len(results.failures)} of {len(results.entries)} entries failed: {', '.join(results.failures)}",
             code=1)


def print_lds_tables(table, damping: float) -> None:
    """Entries x alpha LDS tables, one per track."""
    lds = table[table.metric == "lds"]
    notes = {"fixed": f"damping {damping:g}, all test queries",
             "tuned": "damping tuned on half of the queries, LDS on the other half"}
    for track, note in notes.items():
        rows = lds[lds.track == track]
        if rows.empty:
            continue
        pivot = rows.pivot_table(index="entry", columns="alpha", values="value", sort=False)
        rich_table = Table(title=f"LDS, {track} track ({note})", title_justify="left")
        rich_table.add_column("entry", no_wrap=True)
        for alpha in pivot.columns:
            rich_table.add_column(f"alpha {alpha:.1f}", no_wrap=True, justify="right")
        for entry, row in pivot.iterrows():
            rich_table.add_row(escape(entry), *(f"{v:.3f}" for v in row.values))
        console.print(rich_table)


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="A results directory written by `influence-bench run`."),
    out: Path = typer.Option(Path("reports"), "--out", help="Where leaderboard.md, leaderboard.html and figures go."),
    versions: Optional[list[Path]] = typer.Option(None, "--version", help="Results directory of another task version "
                                                  "(repeatable): its claims and reference model beside this one's."),
):
    """Write the leaderboard (Markdown and a self-contained HTML page with figures) from a results directory."""
    from influence_bench.report import ReportError, write_report

    start = time.perf_counter()
    err_console.print(f"writing the leaderboard of {escape(str(results_dir))}: tables, paired intervals, claims "
                      "and figures", highlight=False)
    try:
        written = write_report(results_dir, out, versions or ())
    except ReportError as exc:
        fail(str(exc))
    for kind, path in written.items():
        console.print(f"{kind}: [bold]{path}[/]")
    console.print(f"{time.perf_counter() - start:.1f} s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
