"""The in-process Python API: ``influence_bench.run(task, entries, preset=...)``.

    import influence_bench
    results = influence_bench.run("digits-mlp", ["identity", "kfac", "cg"], preset="smoke")
    print(results.lds(track="tuned", alpha=0.5))
    results.table  # the long pandas table (influence_bench.schema)

Entries are registered names or entry objects. Each runs in a process of its own by default
(``isolate=True``: a crash or a memory peak stays there, and peak memory is its own), or in the
calling process (``isolate=False``). ``out`` writes a results directory; the CLI is a thin shell
over this function.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from influence_bench import __version__, schema
from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS
from influence_bench.entries.base import Entry

ENTRY_TIMEOUT_S = 3600.0


@dataclass
class RunResults:
    table: pd.DataFrame  # the long table (schema.COLUMNS)
    entries: list = field(repr=False)  # EntryResult per entry, in the order run
    decomposition: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    split: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    bootstrap: dict = field(repr=False, default_factory=dict)
    out_dir: Path | None = None
    parent_peak_rss_mb: float = math.nan

    @property
    def failures(self) -> dict[str, str]:
        return {r.name: r.message for r in self.entries if r.failed}

    @property
    def statuses(self) -> dict[str, str]:
        return {r.name: r.status for r in self.entries}

    @property
    def skipped(self) -> dict[str, str]:
        return {r.name: r.message for r in self.entries if r.status == "skipped"}

    def lds(self, track: str = "tuned", alpha: float = schema.RANKING_ALPHA) -> pd.Series:
        """entry -> LDS on one track at one alpha (tuned: the held-out half of the queries)."""
        rows = self.table[(self.table.metric == "lds") & (self.table.track == track)
                          & np.isclose(self.table.alpha.astype(float), alpha)]
        return rows.set_index("entry").value

    def scores(self, entry: str, track: str = "fixed") -> np.ndarray:
        result = next(r for r in self.entries if r.name == entry)
        return result.scores_fixed if track == "fixed" else result.scores_tuned


def default_entries() -> list[str]:
    """Every registered entry at its default point, then the points the paper's study compares: the
    MC-Fisher rungs beside K-FAC and EK-FAC (PROTOCOL.md section 6), their ``reduce`` approximation of a
    convolution (equal to ``expand`` without one) and the authors' configuration (section 10); then every entry a plugin declared but that failed to load (a failure row each)."""
    from influence_bench.entries import ENTRIES
    from influence_bench.metrics.decomposition import AUTHORS_ENTRIES
    from influence_bench.plugins import entry_failures

    study = ("ekfac[fisher=mc]", "kfac[fisher=mc]", "kfac[approx=reduce]", "ekfac[approx=reduce]", *AUTHORS_ENTRIES)
    return list(dict.fromkeys([*ENTRIES, *study, *entry_failures()]))


def unavailable(name: str) -> str | None:
    """Why the named entry cannot be built because a plugin failed to import (the message carries the
    traceback), or None. ``plugin:MODULE`` names a plugin module that failed to import."""
    from influence_bench.naming import parse_point
    from influence_bench.plugins import entry_failures

    failed = entry_failures()
    if name in failed:
        return failed[name]
    base = parse_point(name)[0]
    if base in failed:
        return failed[base]
    from influence_bench.entries import ENTRIES

    modules = [k.removeprefix("plugin:") for k in failed if k.startswith("plugin:")]
    if base not in ENTRIES and modules:
        return (f"entry {base!r} is not registered; the plugin module(s) {', '.join(modules)} failed to import and "
                "may be the one that provides it:\n" + "\n".join(failed[f"plugin:{m}"] for m in modules))
    return None


def resolve_entries(entries: Sequence[str | Entry] | None, damping: float, eps: float) -> list[str | Entry]:
    """Registered names stay names (each process builds its own), in canonical form
    (``kfac[separate=true,fisher=mc]`` -> ``kfac[fisher=mc,separate=true]``); unknown names, parameters
    or values fail before any work. A name whose plugin failed to import stays as given (``unavailable``
    says why: the run gives it a failure row), and every plugin module that failed to import is added
    as ``plugin:MODULE``, so that a broken plugin is a row of the results, never a crash of the run."""
    from influence_bench.entries import make_entry
    from influence_bench.plugins import entry_failures

    chosen = list(entries) if entries else default_entries()
    for i, e in enumerate(chosen):
        if isinstance(e, str):
            if unavailable(e) is None:
                chosen[i] = make_entry(e, damping, eps).name  # raises UnknownEntryError saying what is valid
        elif not isinstance(e, Entry):
            raise TypeError(f"entries must be registered names or Entry objects, not {type(e).__name__}")
    chosen += [k for k in entry_failures() if k.startswith("plugin:") and k not in chosen]
    names = [e if isinstance(e, str) else e.name for e in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"entries named more than once: {', '.join(duplicates)}")
    return chosen


def _name(entry: str | Entry) -> str:
    return entry if isinstance(entry, str) else entry.name


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def run(task: str = "digits-mlp", entries: Sequence[str | Entry] | None = None, preset: str = "standard", *,
        out: str | Path | None = None, isolate: bool = True, cache_dir: str | Path | None = None,
        device: str = "cpu", plugins: Sequence[str] = (), damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS,
        dense_limit: int | None = None, entry_timeout_s: float = ENTRY_TIMEOUT_S,
        entry_memory_mb: float | None = None, jobs: int = 1,
        progress: bool = True, alphas: Sequence[float] | None = None, loo: bool = True,
        fresh: bool = False) -> RunResults:
    """Run entries against a task's ground truth (built first if it is not cached) and return the results.

    entry_timeout_s, entry_memory_mb: each isolated entry's limits, in seconds from its fit on and in MB
    of data memory (None: ``isolation.default_memory_mb()``); an entry past one gets status ``timeout`` or
    ``oom`` (schema.FAILURE_STATUSES) and the others go on. In-process runs (isolate=False) have no limits.
    jobs: entries evaluated at once, each in its own process with cores // jobs threads (isolated
    runs only); their times are then those of a process with that many threads beside the others.
    alphas: a subset of the preset's alphas (its own ground truth). loo: also the leave-one-out
    ground truth (PROTOCOL.md section 4) and every entry's LOO correlations.
    out: each entry's outcome is kept there as it finishes; the same call on a directory of a killed
    run evaluates only the unfinished entries, a call of another configuration is refused
    (``resume.ResultsDirError``), and ``fresh=True`` starts over.
    """
    from influence_bench.groundtruth import build_lds_groundtruth, build_loo_groundtruth, get_preset, reference_model
    from influence_bench.metrics.reference import GGNReference
    from influence_bench.problem import InfluenceProblem
    from influence_bench.runner import comparison, isolation, resume, task_rows
    from influence_bench.runner.evaluation import EvalSettings, evaluate_entry, failed, failed_with, peak_rss_mb
    from influence_bench.runner.persistence import write_results_dir
    from influence_bench.plugins import load_plugins
    from influence_bench.runner.provenance import provenance
    from influence_bench.tasks import get_task

    located_plugins = load_plugins(list(plugins))  # a plugin that is nowhere raises PluginError here
    if jobs < 1 or (jobs > 1 and not isolate):
        raise ValueError(f"jobs={jobs}: use jobs >= 1, and jobs > 1 only with isolate=True")
    spec, chosen_preset = get_task(task), get_preset(preset).with_alphas(tuple(alphas) if alphas else None)
    chosen = resolve_entries(entries, damping, eps)
    not_loaded = {e: why for e in chosen if isinstance(e, str) and (why := unavailable(e)) is not None}
    cache = Path(cache_dir) if cache_dir else None
    out_dir = Path(out) if out is not None else None
    from influence_bench.groundtruth.cache import check_writable, default_cache_dir

    check_writable(cache or default_cache_dir(), "cache directory", "--cache-dir or $INFLUENCE_BENCH_CACHE")
    done: dict = {}
    if out_dir is not None:
        check_writable(out_dir.parent, "parent of the results directory", "--out")
        from influence_bench.runner.provenance import git_commit

        config = {"task": spec.key, "task_fingerprint": spec.fingerprint, "preset": chosen_preset.to_dict(),
                  "loo_points": chosen_preset.loo_points if loo else None,
                  "entries": [e if isinstance(e, str) else repr(e) for e in chosen], "damping": damping, "eps": eps,
                  "dense_limit": dense_limit, "device": device, "plugins": list(plugins),
                  "influence_bench_version": __version__, "git_commit": git_commit()}
        done = resume.open_results_dir(out_dir, config, fresh)
        if done:
            _say(f"resuming {out_dir}: {len(done)} of {len(chosen)} entries already finished", progress)

    if isolate:
        isolation.start_workers()  # the workers' forkserver imports torch and the entries meanwhile
    gt = build_lds_groundtruth(spec, chosen_preset, cache, device=device, progress=progress)
    loo_gt = build_loo_groundtruth(spec, chosen_preset, cache, device=device, progress=progress) if loo else None
    model = reference_model(spec, cache, device=device, say=lambda m: _say(m, progress))
    problem = InfluenceProblem.of_task(spec, model, dense_limit, device=device)
    _say(f"per-example gradients of {problem.n_train:,} training and {problem.n_test:,} test points "
         f"(P = {problem.n_params:,})", progress)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    train_grads, test_grads = problem.train_grads, problem.test_grads
    gradient_s, gradient_cpu_s = time.perf_counter() - start_wall, time.process_time() - start_cpu
    settings = EvalSettings(damping, eps)
    from influence_bench.entries import get_entry, make_entry
    from influence_bench.runner.shared import prepare_shared, shared_needs

    classes = [get_entry(e) if isinstance(e, str) else type(e) for e in chosen if e not in not_loaded]
    needs = shared_needs(classes)
    checkpoints = None
    if any(cls.needs_checkpoints for cls in classes):
        from influence_bench.groundtruth import reference_checkpoints

        checkpoints = reference_checkpoints(spec, cache, device=device, say=lambda m: _say(m, progress))
        problem.set_checkpoints(checkpoints.models(spec), checkpoints.learning_rates)

    workdir = Path(tempfile.mkdtemp(prefix="influence-bench-"))
    try:
        kind = "exact" if problem.dense_allowed else "estimated (above the dense limit)"
        dense = f" and the shared dense {' and '.join(sorted(needs))}" if needs and problem.dense_allowed else ""
        _say(f"building the GGN reference for the fidelity metrics ({kind}, P = {problem.n_params:,}){dense}",
             progress)
        if isolate:
            torch.save(model.state_dict(), workdir / "model.pt")
            torch.save({"train": train_grads.cpu(), "test": test_grads.cpu()}, workdir / "gradients.pt")
            if checkpoints is not None:
                checkpoints.save(workdir / "checkpoints.pt")
            isolation.Job(spec.source or spec.key, chosen_preset.name, str(cache) if cache else None, str(workdir / "model.pt"),
                          str(workdir / "gradients.pt"), damping, eps, problem.dense_limit, located_plugins,
                          sorted(needs), list(chosen_preset.alphas),
                          str(workdir / "checkpoints.pt") if checkpoints is not None else None, device).write(workdir)
            reference_path, shared_times, hessian_stats = isolation.build_reference_isolated(workdir, entry_timeout_s)
            load_reference = lambda: GGNReference.load(reference_path)  # noqa: E731
        else:
            reference, shared_times, hessian_stats = prepare_shared(problem, damping, eps, needs)
            load_reference = lambda: reference  # noqa: E731

        todo = [e for e in chosen if _name(e) not in done and e not in not_loaded]
        bar = tqdm(total=len(chosen), initial=sum(_name(e) in done for e in chosen), desc="entries",
                   unit="entry", disable=not progress)

        running: list[str] = []

        def started(name: str) -> None:
            running.append(name)
            bar.set_postfix_str(", ".join(running), refresh=True)

        def finished(result) -> None:
            if out_dir is not None:
                resume.save_outcome(out_dir, result)
            if result.name in running:
                running.remove(result.name)
            bar.set_postfix_str(", ".join(running), refresh=False)
            bar.update()
            if result.failed and progress:
                bar.write(f"entry {result.name}: {result.status}: {result.message}", file=sys.stderr)

        new = []
        for name, why in not_loaded.items():  # a plugin that failed to import: its row, with the traceback
            if name not in done:
                new.append(failed(name, why))
                finished(new[-1])
        if isolate:
            memory = entry_memory_mb if entry_memory_mb is not None else isolation.default_memory_mb()
            new += isolation.evaluate_all_isolated(workdir, todo, entry_timeout_s, jobs, on_done=finished,
                                                  memory_mb=memory, on_start=started)
        else:
            for e in todo:
                started(_name(e))
                try:
                    entry = make_entry(e, damping=damping, eps=eps) if isinstance(e, str) else e
                    new.append(evaluate_entry(entry, problem, gt, settings, load_reference, isolated=False))
                except Exception as exc:  # noqa: BLE001 - one entry's failure must not lose the others'
                    new.append(failed_with(_name(e), exc))
                finished(new[-1])
        bar.close()
        by_name = {**done, **{r.name: r for r in new}}
        results = [by_name[_name(e)] for e in chosen]
        ggn_spectra = {f"ggn/layer{i}": np.sort(e.cpu().numpy()) for i, e in enumerate(load_reference().layer_eigvals or [])}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _say(f"task rows, {'leave-one-out correlations, ' if loo_gt is not None else ''}paired bootstrap and the "
         "decomposition chain", progress)
    rows = [row for r in results for row in r.rows]
    rows += [schema.row(schema.SHARED_GRADIENTS, "cost", "gradient_s", gradient_s, False),
             schema.row(schema.SHARED_GRADIENTS, "cost", "gradient_cpu_s", gradient_cpu_s, False)]
    rows += [schema.row(schema.SHARED_GRADIENTS, "cost", key, value, False) for key, value in shared_times.items()]
    rows += task_rows.reference_rows(problem, hessian_stats) + task_rows.ceiling_rows(gt, loo_gt)
    if loo_gt is not None:
        rows += [row for r in results for row in task_rows.entry_loo_rows(r, loo_gt)]
    table = pd.DataFrame(rows, columns=list(schema.ROW_COLUMNS))
    points = {e: make_entry(e).params for e in chosen if isinstance(e, str) and e not in not_loaded}
    points.update({e.name: getattr(e, "params", {}) for e in chosen if not isinstance(e, str)})
    table = schema.with_parameter_columns(table, points)
    meta = {"task": spec.name, "task_version": spec.version, "task_fingerprint": spec.fingerprint[:16],
            "preset": chosen_preset.name if chosen_preset.alphas == get_preset(preset).alphas else
            f"{chosen_preset.name}@alpha={','.join(f'{a:g}' for a in chosen_preset.alphas)}", "n_masks": chosen_preset.n_masks, "n_seeds": chosen_preset.n_seeds,
            "seeds": f"split={spec.split_seed} masks={spec.mask_seed} retrain=0..{chosen_preset.n_seeds - 1} "
                     f"reference={spec.reference_seed} bootstrap=0 dev-split={settings.split_seed}",
            **provenance()}
    for key, value in meta.items():
        table[key] = value
    boot = comparison.paired_bootstrap(results, gt, problem.n_test)
    decomposition, split = comparison.decomposition_tables(table, boot)
    spectra = dict(ggn_spectra)
    for r in results:
        spectra.update(r.spectra)
    parent_peak = peak_rss_mb()
    if out_dir is not None:
        manifest = {"config": {"task": task, "preset": preset, "alphas": list(chosen_preset.alphas), "loo": loo,
                               "entries": [e if isinstance(e, str) else repr(e)
                                                                             for e in chosen],
                               "isolate": isolate, "jobs": jobs, "damping": damping, "eps": eps,
                               "dense_limit": problem.dense_limit,
                               "device": device, "plugins": list(plugins)},
                    **meta, "reference": "exact" if problem.dense_allowed else "estimated",
                    "parent_peak_rss_mb": parent_peak,
                    "failures": {r.name: f"{r.status}: {r.message}" for r in results if r.failed},
                    "skipped": {r.name: r.message for r in results if r.status == "skipped"}}
        write_results_dir(out_dir, table, results, boot, decomposition, split, spectra, manifest)
        torch.save(model.state_dict(), out_dir / schema.REFERENCE_FILE)
    return RunResults(table, results, decomposition, split, boot, out_dir, parent_peak)


def run_all(preset: str = "standard", entries: Sequence[str | Entry] | None = None, *,
            tasks: Sequence[str] | None = None, results_root: str | Path = "results",
            report_dir: str | Path | None = "reports", progress: bool = True, **options) -> dict:
    """``run`` on every task of the fixed set (``tasks.TASK_SET``, or ``tasks``), each into
    ``results_root/TASK-PRESET``, then the cross-task leaderboard into ``report_dir`` (None: none).

    A task whose run raises is reported and the others go on: returns task -> RunResults, or the
    exception that stopped it. ``options`` are ``run``'s.
    """
    from influence_bench.groundtruth import get_preset
    from influence_bench.tasks import TASK_SET, get_task

    names = [get_task(t).name for t in (tasks or TASK_SET)]  # unknown names fail before any work
    chosen = get_preset(preset).with_alphas(tuple(options["alphas"]) if options.get("alphas") else None)
    outcomes: dict = {}
    for i, name in enumerate(names, start=1):
        _say(f"== task {i} of {len(names)}: {name} ==", progress)
        out = Path(results_root) / chosen.results_name(name)
        try:
            outcomes[name] = run(name, entries, preset, out=out, progress=progress, **options)
        except Exception as exc:  # noqa: BLE001 - one task's failure must not lose the others'
            outcomes[name] = exc
            _say(f"task {name} stopped: {type(exc).__name__}: {exc}", progress)
    done = {name: r.out_dir for name, r in outcomes.items() if isinstance(r, RunResults)}
    if report_dir is not None and done:
        from influence_bench.report.cross_task import write_cross_task_report

        write_cross_task_report(done, Path(report_dir))
    return outcomes
