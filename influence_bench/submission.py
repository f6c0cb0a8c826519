"""What a researcher with a new entry runs before submitting it: ``check_submission(entry)``.

Three steps, each a report of its own (``influence-bench check ENTRY`` prints them):

1. the conformance kit (``influence_bench.testing``) on the entry's class at its parameter point;
2. a run of the entry at the ``smoke`` preset of a task (``digits-mlp`` by default): its LDS, leave-one-out
   correlation, curvature fidelity, time and memory at toy size;
3. where it would rank among the built-in entries on the same ground truth: against a committed baseline
   (``influence_bench/baselines/``: every built-in entry's smoke results with their paired bootstrap draws)
   where one matches the task, preset and ground truth, else against reference entries run beside it.
   The ranking is the leaderboard's (``report.tables.ranking``): tuned LDS at alpha 0.5 on the held-out
   half, with groups of entries whose paired interval does not resolve them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from influence_bench import schema

BASELINES = Path(__file__).with_name("baselines")
# run beside the entry when no baseline matches: the chain's ends, the gradient dot product and K-FAC
REFERENCE_ENTRIES = ("identity", "diag-ggn", "kfac", "ekfac", "ggn")


@dataclass
class SubmissionReport:
    entry: str
    kit: list  # testing.CheckOutcome per check
    results: object | None = None  # api.RunResults of the smoke run (None with run=False)
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)  # report.tables.ranking, the entry among the others
    ranked_against: str = ""  # the baseline directory, or "reference entries run beside it"
    notes: list[str] = field(default_factory=list)

    @property
    def kit_failures(self) -> list:
        return [o for o in self.kit if o.status in ("failed", "unexpected pass")]

    @property
    def run_failed(self) -> bool:
        return self.results is not None and self.entry in self.results.failures

    @property
    def passed(self) -> bool:
        return not self.kit_failures and not self.run_failed

    def rank_of_entry(self) -> tuple[int, int, bool] | None:
        """(rank, number of ranked entries, shared with others), or None when the entry was not ranked."""
        if self.ranking.empty or self.entry not in self.ranking.index:
            return None
        rank = int(self.ranking.loc[self.entry, "rank"])
        return rank, len(self.ranking), int((self.ranking["rank"] == rank).sum()) > 1


def entry_class(name: str):
    """The registered class of ``name`` fixed at its parameter point (``kfac[fisher=mc]``)."""
    from influence_bench.entries import get_entry
    from influence_bench.naming import parse_point

    cls = get_entry(name)
    _, raw = parse_point(name)
    return cls.at(**cls.coerce_params(raw)) if raw else cls


def find_baseline(fingerprint: str, preset: str, directories: Sequence[Path] | None = None) -> Path | None:
    """A committed baseline of the same task version (fingerprint) and preset, or None."""
    for directory in directories if directories is not None else sorted(BASELINES.glob("*")):
        manifest = Path(directory) / schema.MANIFEST_FILE
        if not manifest.is_file():
            continue
        meta = json.loads(manifest.read_text())
        if meta.get("task_fingerprint") == fingerprint[:16] and meta.get("preset") == preset:
            return Path(directory)
    return None


def _same_ground_truth(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal noise ceilings (to round-off) of two runs: their ground truths agree."""
    def ceilings(t: pd.DataFrame) -> pd.Series:
        rows = t[(t.entry == schema.SHARED_GRADIENTS) & (t.metric == "noise_ceiling")]
        return rows.set_index(["track", "alpha"]).value.sort_index()

    x, y = ceilings(a), ceilings(b)
    return len(x) > 0 and x.index.equals(y.index) and bool(np.allclose(x.to_numpy(), y.to_numpy(), rtol=0, atol=1e-9))


def rank_among(entry: str, table: pd.DataFrame, boot: dict, baseline_table: pd.DataFrame | None = None,
               baseline_boot: dict | None = None) -> pd.DataFrame:
    """The leaderboard's ranking of the run's entries together with a baseline's (the run's rows win where
    both have an entry of the same name)."""
    from influence_bench.report import tables

    if baseline_table is not None:
        own = set(table.entry) - {schema.SHARED_GRADIENTS}
        kept = baseline_table[~baseline_table.entry.isin(own) & (baseline_table.entry != schema.SHARED_GRADIENTS)]
        table = pd.concat([table, kept[table.columns.intersection(kept.columns)]], ignore_index=True)
        boot = {**(baseline_boot or {}), **boot}
    return tables.ranking(table, tables.Bootstrap.from_arrays(boot))


def check_submission(entry: str, task: str = "digits-mlp", preset: str = "smoke", *, plugins: Sequence[str] = (),
                     out: str | Path | None = None, cache_dir: str | Path | None = None, run: bool = True,
                     isolate: bool = True, baselines: Sequence[Path] | None = None,
                     reference_entries: Sequence[str] = REFERENCE_ENTRIES, progress: bool = True) -> SubmissionReport:
    """Run the kit on ``entry``, then (``run=True``) a ``preset`` run of it on ``task``, and rank it."""
    from influence_bench import api, testing
    from influence_bench.groundtruth import get_preset
    from influence_bench.plugins import load_plugins
    from influence_bench.tasks import get_task

    load_plugins(list(plugins))
    why = api.unavailable(entry)
    if why is not None:  # its plugin failed to import: say so, with the traceback, not "unknown entry"
        from influence_bench.entries import EntryLoadError

        raise EntryLoadError(why)
    cls = entry_class(entry)
    name = cls().name
    report = SubmissionReport(name, testing.run_checks(cls))
    if not run:
        return report
    spec = get_task(task)
    baseline = find_baseline(spec.fingerprint, get_preset(preset).name, baselines)
    baseline_table = baseline_boot = None
    if baseline is not None:
        from influence_bench.report.render import load_arrays, load_results

        baseline_table = load_results(baseline)
        baseline_boot = load_arrays(baseline / schema.BOOTSTRAP_FILE)
    names = [name] if baseline is not None else list(dict.fromkeys([name, *reference_entries]))
    out = Path(out) if out is not None else Path("results") / f"check-{name}-{spec.name}-{preset}"
    report.results = api.run(spec.name, names, preset, out=out, isolate=isolate, cache_dir=cache_dir,
                             plugins=list(plugins), progress=progress, fresh=True)
    table = report.results.table
    if baseline is not None and not _same_ground_truth(table, baseline_table):
        report.notes.append(f"the ground truth here differs from the baseline's ({baseline}): its noise ceilings "
                            "differ, so the ranking is against reference entries run beside it instead")
        names = [name, *(e for e in reference_entries if e != name)]
        report.results = api.run(spec.name, names, preset, out=out, isolate=isolate, cache_dir=cache_dir,
                                 plugins=list(plugins), progress=progress, fresh=True)
        table, baseline = report.results.table, None
    if baseline is not None:
        report.ranking = rank_among(name, table, report.results.bootstrap, baseline_table, baseline_boot)
        report.ranked_against = f"the built-in entries of the committed baseline {baseline.name}"
    else:
        report.ranking = rank_among(name, table, report.results.bootstrap)
        report.ranked_against = f"reference entries run beside it ({', '.join(n for n in names if n != name)})"
    if name not in report.ranking.index and not report.run_failed:
        report.notes.append("the entry has no tuned LDS at alpha 0.5, so it is not ranked")
    return report


def entry_numbers(report: SubmissionReport) -> dict[str, float]:
    """The entry's smoke numbers: LDS on both tracks at alpha 0.5 (with the tuned interval), fit and score time."""
    table = report.results.table
    rows = table[table.entry == report.entry]

    def value(track: str, metric: str, column: str = "value", alpha: float | None = schema.RANKING_ALPHA) -> float:
        pick = rows[(rows.track == track) & (rows.metric == metric)]
        if alpha is not None:
            pick = pick[np.isclose(pick.alpha.astype(float), alpha)]
        return float(pick[column].iloc[0]) if len(pick) else math.nan

    return {"lds_tuned": value("tuned", "lds"), "lds_tuned_low": value("tuned", "lds", "ci_low"),
            "lds_tuned_high": value("tuned", "lds", "ci_high"), "lds_fixed": value("fixed", "lds"),
            "ceiling": value("tuned", "lds", "ceiling"), "fit_s": value("cost", "fit_s", alpha=None),
            "score_s": value("cost", "score_s", alpha=None), "peak_rss_mb": value("cost", "peak_rss_mb", alpha=None)}
