"""``influence-bench compare`` and ``check`` on the tiny plugin task (tests/bench_plugins.py): a deliberately
degraded entry is named, a run compared with itself passes, and a rank against a baseline equals the rank of
one run of everything together."""


import pandas as pd
import pytest
from typer.testing import CliRunner

import influence_bench
from conftest import tiny_task_environment
from influence_bench import schema
from influence_bench.cli import app
from influence_bench.entries import get_entry
from influence_bench.report.compare import Tolerance, compare, write_baseline
from influence_bench.report.render import ReportError
from influence_bench.submission import check_submission

ENTRIES = ["identity", "diag-ggn", "kfac", "ggn"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with tiny_task_environment(tmp_path_factory.mktemp("compare")) as root:
        kwargs = dict(preset="smoke", isolate=False, progress=False, plugins=["bench_plugins"], loo=False)
        influence_bench.run("digits-tiny", ENTRIES, out=root / "old", **kwargs)
        yield root, kwargs


def degraded(name: str, factor: float = 100.0):
    """The registered entry ``name`` with its damping multiplied by ``factor`` inside its inverse."""
    base = get_entry(name)

    class TooMuchDamping(base):
        def inverse(self, vectors, damping=None):
            return super().inverse(vectors, factor * self._damping(damping))

    return TooMuchDamping()


def test_a_run_compared_with_an_identical_run_passes(tiny):
    root, kwargs = tiny
    influence_bench.run("digits-tiny", ENTRIES, out=root / "same", **kwargs)
    result = CliRunner().invoke(app, ["compare", str(root / "old"), str(root / "same")])
    assert result.exit_code == 0, result.output
    assert "no quality regression" in result.stdout
    quality = compare(root / "old", root / "same").table
    quality = quality[quality.track.isin(schema.TRACKS)]
    assert len(quality) > 20 and set(quality.verdict) == {"unchanged"}  # the run is deterministic, bit for bit


def test_damping_times_100_is_named_as_a_regression(tiny):
    root, kwargs = tiny
    influence_bench.run("digits-tiny", ["identity", "diag-ggn", degraded("kfac"), "ggn"], out=root / "worse", **kwargs)
    result = CliRunner().invoke(app, ["compare", str(root / "old"), str(root / "worse")])
    assert result.exit_code == 1, result.output
    regressions = compare(root / "old", root / "worse").regressions
    assert set(regressions.entry) == {"kfac"}  # the others are bit for bit the same
    row = regressions.set_index("metric").loc["fidelity"]  # Spearman with the exact GGN's scores, per query
    assert row.new < row.old - 0.03 and row.higher_is_better
    assert "kfac fidelity (fixed)" in " ".join(result.stderr.split())


def test_an_entry_that_fails_or_vanishes_regresses(tiny):
    root, kwargs = tiny

    class Fails(get_entry("ggn")):
        def fit(self, problem):
            raise RuntimeError("broken on purpose")

    class Skips(get_entry("diag-ggn")):
        def skip(self, problem):
            return "declines the task on purpose"

    influence_bench.run("digits-tiny", ["identity", Skips(), Fails()], out=root / "broken", **kwargs)
    verdicts = compare(root / "old", root / "broken").regressions.set_index("entry").verdict
    assert verdicts.to_dict() == {"ggn": "failed", "diag-ggn": "skipped", "kfac": "missing"}
    result = CliRunner().invoke(app, ["compare", str(root / "old"), str(root / "broken")])
    assert result.exit_code == 1 and "broken on purpose" in result.stderr  # the failure's message is shown


def test_tolerance_and_intervals_decide_a_change():
    tol = Tolerance(atol=0.01, rtol=0.05)
    assert tol.allows(0.5, 0.53) and not tol.allows(0.5, 0.54)
    from influence_bench.report.compare import _judge_quality

    def row(old, new, higher=True, low=float("nan"), high=float("nan")):
        return pd.Series({"value_old": old, "value_new": new, "higher_is_better": higher,
                          "ci_low_old": low, "ci_high_old": high})

    assert _judge_quality(row(0.6, 0.55, low=0.5, high=0.7), tol) == "within interval"
    assert _judge_quality(row(0.6, 0.45, low=0.5, high=0.7), tol) == "regressed"
    assert _judge_quality(row(0.6, 0.75, low=0.5, high=0.7), tol) == "improved"
    assert _judge_quality(row(0.10, 0.30, higher=False), tol) == "regressed"
    assert _judge_quality(row(0.10, 0.105, higher=False), tol) == "within tolerance"


def test_runs_of_different_ground_truths_are_refused(tiny, tmp_path):
    root, _ = tiny
    table = pd.read_parquet(root / "old" / schema.RESULTS_FILE)
    other = tmp_path / "other"
    other.mkdir()
    table.assign(preset="standard").to_parquet(other / schema.RESULTS_FILE)
    with pytest.raises(ReportError, match="different tasks or ground truths"):
        compare(root / "old", other)


def test_a_rank_against_a_baseline_is_the_rank_of_one_joint_run(tiny, monkeypatch):
    """check_submission ranks a new entry against a baseline's entries with the baseline's own bootstrap draws;
    because the paired resamples are fixed by the ground truth, that is the ranking of one run of them all."""
    root, kwargs = tiny
    baseline = root / "baseline"
    write_baseline(root / "old", baseline)
    assert not (baseline / schema.SCORES_DIR).exists() and (baseline / schema.BOOTSTRAP_FILE).is_file()
    monkeypatch.chdir(root)
    report = check_submission("block-ggn", "digits-tiny", "smoke", plugins=["bench_plugins"], out=root / "check",
                              isolate=False, baselines=[baseline], progress=False)
    assert report.passed, [(o.check, o.message) for o in report.kit_failures]
    assert "baseline" in report.ranked_against
    joint = influence_bench.run("digits-tiny", ENTRIES + ["block-ggn"], out=root / "joint", **kwargs)
    from influence_bench.report import tables

    expected = tables.ranking(joint.table, tables.Bootstrap.from_arrays(joint.bootstrap))
    assert list(report.ranking.index) == list(expected.index)
    assert report.ranking["rank"].tolist() == expected["rank"].tolist()
    pd.testing.assert_series_equal(report.ranking.lds_tuned, expected.lds_tuned)
