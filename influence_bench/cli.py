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
RunTaskOption = typer.Option(DEFAULT_TASK, "--task", help="Task name (see `influence-bench list`), or `all`: every "
                             "task of the fixed set, then the cross-task leaderboard (reports/tasks.md).")
PresetOption = typer.Option("standard", "--preset", help=f"Ground-truth preset: {', '.join(PRESETS)}.")
CacheOption = typer.Option(None, "--cache-dir", help=f"Cache directory (default: ${CACHE_ENV} or the user cache).")
DeviceOption = typer.Option("cpu", "--device", help="Torch device, cpu or cuda: the ground truth's training, the "
                                                    "reference model, and every entry's fit, scores and metrics.")
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
    if task.startswith("local:"):  # a user's own data file: read and checked now, with its model's name
        from influence_bench.tasks.local import LocalDataError, local_task, parse_reference

        try:
            model, path = parse_reference(task)
            local = local_task(path, model)
        except LocalDataError as exc:
            raise ValueError(str(exc)) from None
        check_names(DEFAULT_TASK, entries, plugins)
        return local.name
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


def _grid_text(parameters: dict) -> str:
    """An entry's parameter grid as ``list`` shows it: ``fisher=type-2|mc; samples=1|4``."""
    return "; ".join(f"{k}={'|'.join(str(v).lower() for v in values)}" for k, values in parameters.items()) or "-"


def _items(plugins: list[str] | None = None) -> dict[str, list[dict]]:
    """The tasks, entries and presets to list: the built-ins from the catalogue; the entry points of
    other installed packages and ``plugins`` modules imported (only when there are any)."""
    from influence_bench.plugins import ENTRY_GROUP, TASK_GROUP, outside_names, plugin_modules

    known = catalogue.load()
    tasks = [{k: t[k] for k in ("name", "version", "key", "n_params", "description")} for t in known["tasks"]]
    entries = [{"name": e["name"], "description": e["description"], "capabilities": ",".join(e["capabilities"]) or "-",
                "parameters": _grid_text(e["parameters"])}
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
    from influence_bench.tasks import TASK_ORIGINS, TASK_VERSIONS

    load_plugins(plugins)
    listed = {e["name"] for e in entries}
    for name, cls in ENTRIES.items():
        if name not in listed:
            entries.append({"name": name, "description": cls.description,
                            "capabilities": ",".join(sorted(cls.capabilities)) or "-",
                            "parameters": _grid_text(cls.parameters),
                            "origin": ORIGINS.get(name, cls.__module__)})
    for name, why in entry_failures().items():
        entries.append({"name": name, "description": f"FAILED TO LOAD: {why.splitlines()[-1]}", "capabilities": "-",
                        "parameters": "-", "origin": why.splitlines()[0]})
    listed = {t["key"] for t in tasks}
    for key, spec in TASK_VERSIONS.items():
        if key not in listed:
            tasks.append({"name": spec.name, "version": spec.version, "key": key, "n_params": spec.n_params,
                          "description": spec.description, "origin": TASK_ORIGINS.get(key, "?")})
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
    executor: str = typer.Option("local", help="Where the chunks train: local (this machine) or ray (a Ray "
                                 "cluster; the optional extra: pip install -e '.\\[ray]')."),
    address: Optional[str] = typer.Option(None, help="With --executor ray: the cluster to join (ray://HOST:10001, "
                                          "HOST:6379 or auto); default: a local cluster started for this build."),
    workers: Optional[int] = typer.Option(None, min=1, help="Local: worker processes, one thread each (default: "
                                          "$INFLUENCE_BENCH_WORKERS or one per core). Ray without --address: the "
                                          "local cluster's cores."),
):
    """Build (or load from the cache) the LDS ground truth of a task and print its noise ceiling;
    with ``--loo`` also the leave-one-out ground truth and its ceiling."""
    try:
        catalogue.task_name(task)
        chosen = get_preset(preset).with_alphas(parse_alphas(alphas))
    except (UnknownTaskError, UnknownPresetError, ValueError) as exc:
        fail(str(exc))
    from influence_bench.groundtruth.executors import RayUnavailableError, get_executor

    try:
        runner = get_executor(executor, address, workers)
    except (ValueError, RayUnavailableError) as exc:
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
                  f"({chosen.n_trainings:,} trainings, executor {runner.name}) in {groundtruth_dir(spec, chosen, cache_dir)}")
    start = time.perf_counter()
    gt = build_lds_groundtruth(spec, chosen, cache_dir, device=device, executor=runner)
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
    loo_gt = build_loo_groundtruth(spec, chosen, cache_dir, device=device, executor=runner)
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
    task: str = RunTaskOption,
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
    results_root: Path = typer.Option(Path("results"), "--results-root", help="With --task all: where each task's "
                                      "results directory goes (TASK-PRESET)."),
    report_dir: Path = typer.Option(Path("reports"), "--report-dir", help="With --task all: where the cross-task "
                                    "leaderboard (tasks.md, tasks.html) goes."),
):
    """Run entries against a task's ground truth (built first if missing) and write a results directory."""
    plugin_list = _plugin_list(plugins)
    names = split_names(entries) if entries else None
    if task == "all":
        if out is not None:
            fail("--out names one results directory; with --task all each task writes results/TASK-PRESET "
                 "(use --results-root)")
        return run_all_tasks(preset, names, cache_dir, device, plugin_list, damping, dense_limit, isolate, jobs,
                             entry_timeout, entry_memory, alphas, loo, fresh, results_root, report_dir)
    task_name, chosen = checked_run_options([task], names, plugin_list, preset, alphas, jobs, isolate)
    device = check_device(device)
    out_dir = out or Path("results") / chosen.results_name(task_name)
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


def checked_run_options(tasks: list[str], names, plugin_list, preset: str, alphas, jobs: int, isolate: bool):
    """Every task and entry name, the preset, its alphas and --jobs checked before any work (a one-line error
    otherwise): the first task's name and the chosen preset."""
    try:
        task_name = [check_names(task, names, plugin_list) for task in tasks][0]
        chosen = get_preset(preset).with_alphas(parse_alphas(alphas))
        if jobs < 1 or (jobs > 1 and not isolate):
            raise ValueError(f"--jobs {jobs}: use --jobs >= 1, and more than 1 only with --isolate")
    except (UnknownTaskError, UnknownPresetError, UnknownEntryError, ValueError, ImportError) as exc:
        fail(str(exc))
    return task_name, chosen


def run_all_tasks(preset, names, cache_dir, device, plugin_list, damping, dense_limit, isolate, jobs, entry_timeout,
                  entry_memory, alphas, loo, fresh, results_root: Path, report_dir: Path) -> None:
    """`run --task all`: every task of the fixed set in turn, then the cross-task leaderboard."""
    task_set = catalogue.load()["task_set"]
    chosen = checked_run_options(task_set, names, plugin_list, preset, alphas, jobs, isolate)[1]
    device = check_device(device)
    from influence_bench.api import RunResults, run_all

    start = time.perf_counter()
    outcomes = run_all(preset, names, tasks=task_set, results_root=results_root, report_dir=report_dir,
                       isolate=isolate, cache_dir=cache_dir, device=device, plugins=plugin_list, damping=damping,
                       dense_limit=dense_limit, entry_timeout_s=entry_timeout, entry_memory_mb=entry_memory,
                       jobs=jobs, alphas=chosen.alphas, loo=loo, fresh=fresh)
    console.print(f"{time.perf_counter() - start:.0f} s for {len(task_set)} tasks")
    problems = []
    for task, outcome in outcomes.items():
        if not isinstance(outcome, RunResults):
            problems.append(f"task {task}: {type(outcome).__name__}: {outcome}")
            continue
        console.print(f"{task}: results in [bold]{outcome.out_dir}[/]; {len(outcome.skipped)} skipped, "
                      f"{len(outcome.failures)} failed")
        problems += [f"task {task}, entry {name}: {message.splitlines()[0] if message else ''}"
                     for name, message in outcome.failures.items()]
    if any(isinstance(o, RunResults) for o in outcomes.values()):
        console.print(f"cross-task leaderboard: [bold]{report_dir / 'tasks.md'}[/] and {report_dir / 'tasks.html'}")
    if problems:
        for line in problems:
            err_console.print(f"[bold red]{escape(line)}[/]", highlight=False)
        fail(f"{len(problems)} failures across the tasks (the others' results are written)", code=1)


@app.command("tasks-report")
def tasks_report(
    results_dirs: list[Path] = typer.Argument(..., help="One results directory per task (written by `run`)."),
    out: Path = typer.Option(Path("reports"), "--out", help="Where tasks.md and tasks.html go."),
):
    """Write the cross-task leaderboard (per-task ranks, overall Borda rank, LDS per task, skipped entries)."""
    from influence_bench.report import ReportError
    from influence_bench.report.cross_task import write_cross_task_report

    try:
        written = write_cross_task_report(list(results_dirs), out)
    except ReportError as exc:
        fail(str(exc))
    for kind, path in written.items():
        console.print(f"{kind}: [bold]{path}[/]")


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


@app.command()
def check(
    entry: str = typer.Argument(..., help="The entry to check, with an optional parameter point: my-entry[p=v]."),
    task: str = TaskOption,
    preset: str = typer.Option("smoke", "--preset", help=f"Ground-truth preset of the run: {', '.join(PRESETS)}."),
    plugins: Optional[str] = PluginsOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Results directory of the run (default: results/check-ENTRY-TASK-PRESET)."),
    cache_dir: Optional[Path] = CacheOption,
    run_it: bool = typer.Option(True, "--run/--kit-only", help="After the kit, a run of the entry and its rank (default), or the kit alone."),
    isolate: bool = typer.Option(True, "--isolate/--in-process", help="The run's entries each in a process of its own (default), or in this one."),
):
    """Where a new entry stands: the conformance kit, a smoke run on digits-mlp, and its rank among the
    built-in entries on the same ground truth. Exits 1 when a check or the run failed."""
    plugin_list = _plugin_list(plugins)
    try:
        check_names(task, [entry], plugin_list)
        get_preset(preset)
    except (UnknownTaskError, UnknownPresetError, UnknownEntryError, ValueError, ImportError) as exc:
        fail(str(exc))
    from influence_bench.submission import check_submission

    start = time.perf_counter()
    try:
        report = check_submission(entry, task, preset, plugins=plugin_list, out=out, cache_dir=cache_dir,
                                  run=run_it, isolate=isolate)
    except (UnknownEntryError, UnknownTaskError, ImportError) as exc:
        fail(str(exc))
    kit = Table(title=f"conformance kit: {report.entry} ({len(report.kit) - len(report.kit_failures)} of "
                      f"{len(report.kit)} as expected)", title_justify="left")
    for column in ("check", "status", "s", "message"):
        kit.add_column(column, justify="right" if column == "s" else "left")
    styles = {"passed": "green", "failed": "bold red", "known failure": "yellow", "unexpected pass": "bold red"}
    for outcome in report.kit:
        kit.add_row(outcome.check.removeprefix("check_"), f"[{styles[outcome.status]}]{outcome.status}[/]",
                    f"{outcome.seconds:.1f}", escape(outcome.message.splitlines()[0][:160] if outcome.message else ""))
    console.print(kit)
    if report.results is not None:
        _print_submission_run(report)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(f"{time.perf_counter() - start:.0f} s")
    if not report.passed:
        problems = [o.check for o in report.kit_failures] + (["the run"] if report.run_failed else [])
        fail(f"{report.entry}: {', '.join(problems)} failed", code=1)
    console.print(f"[green]{escape(report.entry)} passed the kit" + (" and ran[/]" if report.results is not None else "[/]"))


def _print_submission_run(report) -> None:
    import pandas as pd

    from influence_bench.report.tables import rank_labels
    from influence_bench.submission import entry_numbers

    if report.run_failed:
        err_console.print(f"[bold red]the run of {escape(report.entry)} failed ({report.results.statuses[report.entry]}):[/] "
                          f"{escape(report.results.failures[report.entry])}", highlight=False)
        return
    n = entry_numbers(report)
    console.print(f"[bold]{escape(report.entry)}[/] at the smoke preset: LDS@0.5 tuned {n['lds_tuned']:.3f} "
                  f"[{n['lds_tuned_low']:.3f}, {n['lds_tuned_high']:.3f}] (noise ceiling {n['ceiling']:.3f}), fixed "
                  f"{n['lds_fixed']:.3f}; fit {n['fit_s']:.2f} s, score {n['score_s']:.2f} s, peak memory "
                  f"{n['peak_rss_mb']:.0f} MB; results in {report.results.out_dir}", highlight=False)
    place = report.rank_of_entry()
    if place is None:
        return
    rank, total, shared = place
    ranking = report.ranking
    labels = dict(zip(ranking.index, rank_labels(ranking["rank"])))
    console.print(f"rank [bold]{labels[report.entry]}[/] of {total} by tuned LDS@0.5 against "
                  f"{escape(report.ranked_against)}" + (" (a group: the paired intervals to its neighbours "
                                                          "include 0)" if shared else ""), highlight=False)
    position = list(ranking.index).index(report.entry)
    window = ranking.iloc[max(0, position - 3): position + 4]
    table = Table(title="its neighbours in the ranking (paired 95% interval of the difference to the next)",
                  title_justify="left")
    for column in ("rank", "entry", "LDS@0.5 tuned [95% CI]", "- next [95% CI]", "vs next", "total s"):
        table.add_column(column)
    for name, row in window.iterrows():
        mark = "bold" if name == report.entry else ""
        cells = [labels[name], escape(name), f"{row.lds_tuned:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]",
                 "" if pd.isna(row.diff_next) else f"{row.diff_next:+.3f} [{row.diff_low:+.3f}, {row.diff_high:+.3f}]",
                 str(row.verdict_next), f"{row.total_s:.1f}"]
        table.add_row(*(f"[{mark}]{c}[/]" if mark else c for c in cells))
    console.print(table)


@app.command()
def compare(
    old: Path = typer.Argument(..., help="The results directory to compare against (a baseline)."),
    new: Path = typer.Argument(..., help="The results directory of the run to check."),
    atol: float = typer.Option(0.01, "--atol", help="Metrics without an interval: absolute part of the tolerated worsening."),
    rtol: float = typer.Option(0.05, "--rtol", help="Metrics without an interval: relative part (of |old|)."),
    show_all: bool = typer.Option(False, "--all", help="Show every compared metric, not only the changed ones."),
    entries: Optional[str] = typer.Option(None, "--entries", help="Comma-separated entries to compare (default: all)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the whole comparison table as CSV."),
):
    """Per entry and metric, what changed from OLD to NEW, judged by the metric's direction: a metric with an
    interval regresses beyond the old interval, one without beyond --atol + --rtol * |old|, and an entry that
    ran before regresses when it fails or is missing. Exits 1 when any quality metric regressed; time and
    memory are flagged with the leaderboard's margins but do not fail it."""
    import pandas as pd

    from influence_bench.report import ReportError
    from influence_bench.report.compare import Tolerance, compare as compare_runs, direction_arrow

    try:
        result = compare_runs(old, new, Tolerance(atol, rtol), split_names(entries) if entries else None)
    except ReportError as exc:
        fail(str(exc))
    if csv is not None:
        result.table.to_csv(csv, index=False)
    shown = result.table if show_all else result.changed()
    table = Table(title=f"{old} -> {new}: {len(shown)} of {len(result.table)} compared rows "
                        f"(tolerance without an interval {atol:g} + {rtol:g} x |old|; ↑/↓: higher/lower is better)",
                  title_justify="left")
    for column in ("entry", "metric", "old", "new", "old 95% CI", "verdict"):
        table.add_column(column, justify="right" if column in ("old", "new") else "left")
    colours = {"regressed": "bold red", "failed": "bold red", "missing": "bold red", "improved": "green",
               "slower": "yellow", "more memory": "yellow", "faster": "green", "less memory": "green"}
    for row in shown.itertuples():
        interval = "" if pd.isna(row.ci_low_old) else f"[{row.ci_low_old:.3g}, {row.ci_high_old:.3g}]"
        old_text = row.status_old if row.metric == "status" else _number(row.old)
        new_text = row.status_new if row.metric == "status" else _number(row.new)
        metric = row.metric + ("" if pd.isna(row.alpha) else f"@{row.alpha:g}")
        metric += f" {row.track}" if row.track in ("fixed", "tuned") else ""
        metric += f" {direction_arrow(row.higher_is_better)}"
        style = colours.get(row.verdict, "")
        table.add_row(escape(row.entry), escape(metric.strip()), escape(str(old_text)), escape(str(new_text)),
                      interval, f"[{style}]{row.verdict}[/]" if style else row.verdict)
    console.print(table)
    for row in shown[shown.verdict.isin(("failed", "skipped"))].itertuples():
        err_console.print(f"[bold red]{escape(row.entry)} {row.verdict}:[/] {escape(str(row.message))}", highlight=False)
    for warning in result.warnings:
        err_console.print(f"[yellow]note:[/] {escape(warning)}", highlight=False)
    counts = result.table.verdict.value_counts()
    console.print(", ".join(f"{n} {verdict}" for verdict, n in counts.items()))
    if result.failed:
        regressed = result.regressions
        names = sorted({f"{r.entry} {r.metric}" + ("" if pd.isna(r.alpha) else f"@{r.alpha:g}") + f" ({r.track})"
                        for r in regressed.itertuples()})
        fail(f"{len(regressed)} quality regression{'' if len(regressed) == 1 else 's'}: {'; '.join(names)}", code=1)
    console.print("[green]no quality regression[/]")


@app.command()
def baseline(
    results_dir: Path = typer.Argument(..., help="A results directory written by `influence-bench run`."),
    out: Path = typer.Option(..., "--out", help="Where to write the baseline (e.g. baselines/digits-mlp-smoke)."),
):
    """Keep what `compare` reads of a results directory (the table, the paired bootstrap, the manifest; no
    scores, no model) as a baseline to commit."""
    from influence_bench.report import ReportError
    from influence_bench.report.compare import write_baseline

    try:
        written = write_baseline(results_dir, out)
    except ReportError as exc:
        fail(str(exc))
    console.print(f"baseline written to [bold]{out}[/]: {', '.join(p.name for p in written)}")


def _number(value, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
