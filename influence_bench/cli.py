"""The ``influence-bench`` command: list, groundtruth (and, as issues land, run and report)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from influence_bench.groundtruth.cache import CACHE_ENV, default_cache_dir
from influence_bench.groundtruth.presets import PRESETS, UnknownPresetError, get_preset
from influence_bench.tasks import DEFAULT_TASK, TASKS, UnknownTaskError, get_task

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


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        fail(f"unknown device {device!r}; use cpu or cuda")
    return device


def _items() -> dict[str, list[dict]]:
    from influence_bench.entries import ENTRIES

    tasks = [
        {"name": t.name, "version": t.version, "key": t.key, "n_params": t.n_params, "description": t.description}
        for t in TASKS.values()
    ]
    entries = [{"name": name, "description": cls.description, "curvature": cls.curvature_kind}
               for name, cls in ENTRIES.items()]
    presets = [{"name": p.name, "n_masks": p.n_masks, "n_seeds": p.n_seeds, "n_trainings": p.n_trainings,
                "description": p.description} for p in PRESETS.values()]
    return {"tasks": tasks, "entries": entries, "presets": presets}


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON: {\"tasks\": [...], \"entries\": [...]}.")):
    """List the tasks, the registered entries and the ground-truth presets."""
    items = _items()
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
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)


@app.command()
def groundtruth(
    task: str = TaskOption,
    preset: str = PresetOption,
    cache_dir: Optional[Path] = CacheOption,
    device: str = DeviceOption,
):
    """Build (or load from the cache) the LDS ground truth of a task and print its noise ceiling."""
    from influence_bench.groundtruth.lds import build_lds_groundtruth, groundtruth_dir
    from influence_bench.metrics.lds import noise_ceiling

    try:
        spec, chosen = get_task(task), get_preset(preset)
    except (UnknownTaskError, UnknownPresetError) as exc:
        fail(str(exc))
    device = check_device(device)
    cache_dir = cache_dir or default_cache_dir()
    console.print(f"ground truth of [bold]{spec.key}[/], preset [bold]{chosen.name}[/] "
                  f"({chosen.n_trainings:,} trainings) in {groundtruth_dir(spec, chosen, cache_dir)}")
    start = time.perf_counter()
    gt = build_lds_groundtruth(spec, chosen, cache_dir, device=device)
    elapsed = time.perf_counter() - start
    table = Table(title=f"noise ceiling (split-half Spearman-Brown), {elapsed:.1f} s", title_justify="left")
    for column in ("alpha", "ceiling", "95% CI", "undefined test points"):
        table.add_column(column)
    for a, alpha in enumerate(gt.alphas):
        c = noise_ceiling(gt.losses[a])
        table.add_row(f"{alpha:.1f}", f"{c.mean:.3f}", f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", str(c.n_undefined))
    console.print(table)


@app.command()
def run(
    task: str = TaskOption,
    preset: str = PresetOption,
    entries: Optional[str] = typer.Option(None, "--entries", help="Comma-separated entry names (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results directory (default: results/TASK-PRESET)."),
    cache_dir: Optional[Path] = CacheOption,
    device: str = DeviceOption,
    plugins: Optional[str] = typer.Option(None, "--plugins", help="Comma-separated modules that register extra entries or tasks."),
    damping: float = typer.Option(1e-4, "--damping", help="Damping of the fixed track (the paper's 1e-4)."),
    entry_timeout: float = typer.Option(3600, "--entry-timeout", help="Seconds before an entry is stopped and marked failed."),
):
    """Run entries against a task's ground truth (built first if missing) and write a results directory."""
    from influence_bench.runner.plugins import PluginError, load_plugins
    from influence_bench.runner.run import RunConfig, run as run_benchmark, summarize_for_console

    plugin_list = [p.strip() for p in plugins.split(",") if p.strip()] if plugins else []
    try:
        load_plugins(plugin_list)
        get_task(task), get_preset(preset)
    except (UnknownTaskError, UnknownPresetError, PluginError) as exc:
        fail(str(exc))
    device = check_device(device)
    names = [e.strip() for e in entries.split(",") if e.strip()] if entries else None
    config = RunConfig(task=task, preset=preset, entries=names, out_dir=out, cache_dir=cache_dir, device=device,
                       plugins=plugin_list, damping=damping, entry_timeout_s=entry_timeout)
    start = time.perf_counter()
    out_dir, outcomes = run_benchmark(config)
    import pandas as pd

    table = pd.read_parquet(out_dir / "results.parquet")
    summary = summarize_for_console(table)
    for track, note in (("fixed", f"damping {damping:g}, all test queries"),
                        ("tuned", "damping tuned on half of the queries, LDS on the other half")):
        if track not in summary.columns.get_level_values(0):
            continue
        rich_table = Table(title=f"LDS, {track} track ({note})", title_justify="left")
        rich_table.add_column("entry", no_wrap=True)
        for alpha in summary[track].columns:
            rich_table.add_column(f"alpha {alpha:.1f}", no_wrap=True, justify="right")
        for entry, row in summary[track].iterrows():
            rich_table.add_row(entry, *(f"{v:.3f}" for v in row.values))
        console.print(rich_table)
    console.print(f"{time.perf_counter() - start:.0f} s")
    console.print(f"results written to [bold]{out_dir}[/]")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        for o in failed:
            err_console.print(f"[bold red]entry {o.name} failed:[/] {o.message}", highlight=False)
        fail(f"{len(failed)} of {len(outcomes)} entries failed: {', '.join(o.name for o in failed)}", code=1)


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="A results directory written by `influence-bench run`."),
    out: Path = typer.Option(Path("reports"), "--out", help="Where leaderboard.md, leaderboard.html and figures go."),
):
    """Write the leaderboard (Markdown and a self-contained HTML page with figures) from a results directory."""
    from influence_bench.report import ReportError, write_report

    try:
        written = write_report(results_dir, out)
    except ReportError as exc:
        fail(str(exc))
    for kind, path in written.items():
        console.print(f"{kind}: [bold]{path}[/]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
