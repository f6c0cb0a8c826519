"""Regression tracking: what changed from one results directory to another, metric by metric.

``compare(old_dir, new_dir)`` pairs the rows of two runs of the same task and ground truth by entry,
track, metric and alpha, and judges each change by the metric's direction (``higher_is_better``, as the
results record it):

- a metric with an interval in the old run (LDS, leave-one-out correlations: 95% bootstrap over test
  points) regresses when the new value lies beyond the old interval on the worse side;
- a metric without one (the curvature-fidelity metrics, deterministic given the code) regresses when it
  is worse by more than ``atol + rtol * |old|`` (``Tolerance``);
- an entry that ran in the old run and failed, was skipped or is missing in the new one regresses too,
  and so does a metric that had a value and now has none (``undefined``).

Quality regressions decide the exit status of ``influence-bench compare``. Cost (time, memory) is
compared with the leaderboard's margins (``report.tables``: a time more than twice as long and a second
longer, a peak 25% + 50 MB larger) and flagged, but does not fail the comparison: timings on a shared
machine wander more than quality does. ``write_baseline`` keeps the small files of a results directory
(the table, the paired bootstrap, the manifest), which is what a committed baseline needs.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.report import tables
from influence_bench.report.render import ReportError, load_results

KEY = ["entry", "track", "metric", "alpha"]
QUALITY_TRACKS = schema.TRACKS
COST_GATED = {"total_s": "time", "fit_s": "time", "score_s": "time", "peak_rss_mb": "memory"}
BASELINE_FILES = (schema.RESULTS_FILE, schema.RESULTS_CSV, schema.BOOTSTRAP_FILE, schema.MANIFEST_FILE)
# what must agree for two runs to be comparable: the same task (fingerprint) and the same ground truth
COMPARABLE = ("task", "task_version", "task_fingerprint", "preset", "n_masks", "n_seeds")

GATING = ("regressed", "failed", "skipped", "missing", "undefined")


@dataclass(frozen=True)
class Tolerance:
    """How far a metric without an interval may move the wrong way: ``atol + rtol * |old|``. The
    defaults are loose enough for float round-off between machines (the fidelity metrics lie in [0, 1]
    and agree between two runs of one commit to about 1e-12) and tight enough that a damping 100 times
    too large in one entry is caught (its ``ihvp_err`` moves by more than 0.1)."""

    atol: float = 0.01
    rtol: float = 0.05

    def allows(self, old: float, new: float) -> bool:
        return abs(new - old) <= self.atol + self.rtol * abs(old)


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per compared (entry, track, metric, alpha): old, new, change, verdict, ...
    old_dir: Path
    new_dir: Path
    warnings: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table.verdict.isin(GATING)]

    @property
    def failed(self) -> bool:
        return not self.regressions.empty

    def changed(self) -> pd.DataFrame:
        """The rows worth showing: quality that moved, status changes, and time or memory beyond the
        leaderboard's margins (a cost that moved within them is run-to-run noise)."""
        return self.table[~self.table.verdict.isin(("unchanged", "changed"))]


def _entry_status(table: pd.DataFrame) -> pd.Series:
    """entry -> "ok", "skipped" or its failure status (an entry-level row of track "all")."""
    status = {}
    for entry, rows in table[table.entry != schema.SHARED_GRADIENTS].groupby("entry", sort=False):
        failures = rows[rows.status.isin(schema.FAILURE_STATUSES + ("skipped",))]
        status[entry] = failures.status.iloc[0] if len(failures) else "ok"
    return pd.Series(status, dtype=object)


def _check_comparable(old: pd.DataFrame, new: pd.DataFrame, old_dir: Path, new_dir: Path) -> None:
    for column in COMPARABLE:
        a, b = old[column].iloc[0], new[column].iloc[0]
        if str(a) != str(b):
            raise ReportError(f"{old_dir} and {new_dir} are runs of different tasks or ground truths ({column}: "
                              f"{a} vs {b}); compare runs of the same task and preset")


def _judge_quality(row: pd.Series, tolerance: Tolerance) -> str:
    old, new, higher = row.value_old, row.value_new, row.higher_is_better
    if pd.isna(old) and pd.isna(new):
        return "unchanged"
    if pd.isna(new):
        return "undefined"
    if pd.isna(old):
        return "new"
    if old == new:
        return "unchanged"
    worse = new < old if higher else new > old
    if pd.notna(row.ci_low_old) and pd.notna(row.ci_high_old):
        beyond = new < row.ci_low_old if higher else new > row.ci_high_old
        better_beyond = new > row.ci_high_old if higher else new < row.ci_low_old
        if worse and beyond:
            return "regressed"
        return "improved" if better_beyond else "within interval"
    if tolerance.allows(old, new):
        return "within tolerance"
    return "regressed" if worse else "improved"


def _judge_cost(row: pd.Series, spread_old: float, spread_new: float) -> str:
    old, new = row.value_old, row.value_new
    if (pd.isna(old) and pd.isna(new)) or old == new:
        return "unchanged"
    if pd.isna(old) or pd.isna(new):
        return "changed"
    kind = COST_GATED.get(row.metric)
    values = pd.Series([old, new], index=["old", "new"])
    if kind == "time":
        spread = pd.Series([spread_old, spread_new], index=["old", "new"])
        wins = tables.time_wins(values, spread)
        return "slower" if wins.loc["old", "new"] else "faster" if wins.loc["new", "old"] else "changed"
    if kind == "memory":
        wins = tables.memory_wins(values)
        return "more memory" if wins.loc["old", "new"] else "less memory" if wins.loc["new", "old"] else "changed"
    return "changed"


def compare(old_dir: Path, new_dir: Path, tolerance: Tolerance = Tolerance(), entries: list[str] | None = None) -> Comparison:
    """Every metric of every entry of the old run against the new run (see the module's docstring)."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    old, new = load_results(old_dir), load_results(new_dir)
    _check_comparable(old, new, old_dir, new_dir)
    warnings = []
    status_old, status_new = _entry_status(old), _entry_status(new)
    names = list(dict.fromkeys([*status_old.index, *status_new.index]))
    if entries:
        unknown = sorted(set(entries) - set(names))
        if unknown:
            raise ReportError(f"entries {', '.join(unknown)} are in neither run; they have: {', '.join(names)}")
        names = [n for n in names if n in entries]

    rows = []
    for entry in names:
        before, after = status_old.get(entry), status_new.get(entry)
        if before == "ok" and after is None:
            rows.append({"entry": entry, "track": "all", "metric": "status", "verdict": "missing",
                         "status_old": before, "status_new": "absent"})
        elif before == "ok" and (after in schema.FAILURE_STATUSES or after == "skipped"):
            message = new[(new.entry == entry) & (new.status == after)].message.iloc[0]
            rows.append({"entry": entry, "track": "all", "metric": "status",
                         "verdict": "skipped" if after == "skipped" else "failed",
                         "status_old": before, "status_new": after, "message": message})
        elif before != after:
            rows.append({"entry": entry, "track": "all", "metric": "status",
                         "verdict": "new" if before is None else "improved" if after == "ok" else "changed",
                         "status_old": before or "absent", "status_new": after or "absent"})

    keyed = [c for c in ("value", "ci_low", "ci_high", "higher_is_better", "estimated", "status") if c in old.columns]
    a = old[old.entry.isin(names) & (old.status.isin(["ok", "not applicable"]))][KEY + keyed].copy()
    b = new[new.entry.isin(names) & (new.status.isin(["ok", "not applicable"]))][KEY + keyed].copy()
    for frame in (a, b):
        frame["alpha"] = frame.alpha.astype(float).round(6).fillna(-1.0)
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_old", "_new"))
    merged["higher_is_better"] = merged.higher_is_better_old.combine_first(merged.higher_is_better_new)
    spreads = {which: frame[frame.metric == tables.SPREAD_METRIC].set_index("entry").value
               for which, frame in (("old", old), ("new", new))}
    for _, row in merged.iterrows():
        if row.track in QUALITY_TRACKS and pd.notna(row.higher_is_better):
            verdict = _judge_quality(row, tolerance)
            if verdict in ("undefined", "missing") and status_new.get(row.entry) != "ok":
                continue  # the entry's own status row says it
        elif row.track == "cost":
            verdict = _judge_cost(row, spreads["old"].get(row.entry, 0.0), spreads["new"].get(row.entry, 0.0))
        else:
            continue  # diagnostics: what an entry reports about itself, no direction
        rows.append({"entry": row.entry, "track": row.track, "metric": row.metric,
                     "alpha": math.nan if row.alpha == -1.0 else row.alpha, "old": row.value_old,
                     "new": row.value_new, "change": row.value_new - row.value_old,
                     "ci_low_old": row.ci_low_old, "ci_high_old": row.ci_high_old,
                     "higher_is_better": bool(row.higher_is_better) if pd.notna(row.higher_is_better) else None,
                     "verdict": verdict})
    columns = ["entry", "track", "metric", "alpha", "old", "new", "change", "ci_low_old", "ci_high_old",
               "higher_is_better", "verdict", "status_old", "status_new", "message"]
    table = pd.DataFrame(rows, columns=columns)
    if old.git_commit.iloc[0] == new.git_commit.iloc[0]:
        warnings.append(f"both runs are of commit {old.git_commit.iloc[0]}")
    shared = (old.entry == schema.SHARED_GRADIENTS) & (old.metric == "noise_ceiling")
    ceiling_old = old[shared].set_index(["track", "alpha"]).value
    ceiling_new = new[(new.entry == schema.SHARED_GRADIENTS) & (new.metric == "noise_ceiling")].set_index(
        ["track", "alpha"]).value
    if not ceiling_old.sort_index().equals(ceiling_new.reindex(ceiling_old.index).sort_index()):
        warnings.append("the noise ceilings differ: the ground truth itself changed (the training engine?), so "
                        "the LDS values are not of the same ground truth")
    return Comparison(table, old_dir, new_dir, warnings)


def write_baseline(results_dir: Path, out: Path) -> list[Path]:
    """Copy the small files of a results directory that ``compare`` reads (no scores, no model) into ``out``."""
    results_dir, out = Path(results_dir), Path(out)
    load_results(results_dir)  # a readable results directory, or ReportError saying what to do
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BASELINE_FILES:
        if (results_dir / name).is_file():
            shutil.copy2(results_dir / name, out / name)
            written.append(out / name)
    manifest = out / schema.MANIFEST_FILE
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        data["baseline_of"] = str(results_dir)
        manifest.write_text(json.dumps(data, indent=2) + "\n")
    return written


def direction_arrow(higher_is_better) -> str:
    if higher_is_better is None or (isinstance(higher_is_better, float) and np.isnan(higher_is_better)):
        return ""
    return "↑" if higher_is_better else "↓"
