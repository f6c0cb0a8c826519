"""``influence-bench run`` end to end on a tiny plugin task (tests/bench_plugins.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from influence_bench.cli import app
from influence_bench.entries import get_entry
from influence_bench.groundtruth import build_lds_groundtruth, get_preset, reference_model
from influence_bench.problem import InfluenceProblem
from influence_bench.runner.run import dev_eval_split
from influence_bench.runner.worker import DAMPING_GRID_FACTORS

TESTS = Path(__file__).parent
ENTRIES = ["ggn", "block-ggn", "ekfac", "kfac", "kfac-eigvals-in-block-basis", "identity",
           "test-crashes", "test-nan-scores", "test-wrong-shape", "test-bad-curvature", "no-such-entry"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import bench_plugins  # noqa: F401 - registers the tiny task and the misbehaving entries here too

    root = tmp_path_factory.mktemp("run")
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "INFLUENCE_BENCH_CACHE": str(root / "cache")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, ["run", "--task", "digits-tiny", "--preset", "smoke", "--plugins",
                                          "bench_plugins", "--entries", ",".join(ENTRIES), "--out", str(root / "out")])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return result, root / "out", root / "cache"


def test_failures_are_rows_and_the_others_finish(tiny_run):
    result, out, _ = tiny_run
    assert result.exit_code == 1
    bad = {"test-crashes", "test-nan-scores", "test-wrong-shape", "test-bad-curvature", "no-such-entry"}
    for name in bad:
        assert name in result.stderr
    assert "deliberate failure in fit" in result.stderr
    table = pd.read_parquet(out / "results.parquet")
    failed = table[table.status == "failed"].set_index("entry").message
    assert set(failed.index) == bad
    assert "NaN" in failed["test-nan-scores"] and "shape" in failed["test-wrong-shape"]
    assert failed["test-bad-curvature"].startswith("metrics failed")
    assert (out / "scores" / "test-bad-curvature.fixed.npy").exists()  # its valid scores are not lost
    assert "valid entries" in failed["no-such-entry"]
    ok = set(table[(table.metric == "lds") & (table.status == "ok")].entry)
    assert ok == {"ggn", "block-ggn", "ekfac", "kfac", "kfac-eigvals-in-block-basis", "identity"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["failures"]) == set(failed.index)


def test_results_table_has_directions_cis_and_provenance(tiny_run):
    _, out, _ = tiny_run
    table = pd.read_parquet(out / "results.parquet")
    assert pd.read_csv(out / "results.csv").shape == table.shape
    lds = table[table.metric == "lds"]
    assert set(lds.track) == {"fixed", "tuned"} and set(lds.alpha) == {0.3, 0.5, 0.7, 0.9}
    assert (lds.ci_low <= lds.value).all() and (lds.value <= lds.ci_high).all()
    assert lds.higher_is_better.all() and lds.ceiling.between(-1, 1).all()
    for column in ("git_commit", "torch_version", "curvlinops_version", "machine", "timestamp", "seeds", "preset"):
        assert table[column].notna().all() and (table[column] != "").all()
    cost = table[table.track == "cost"].set_index(["entry", "metric"]).value
    assert cost["ggn", "peak_rss_mb"] > 50 and cost["ggn", "fit_s"] > 0
    assert ("(shared gradients)", "gradient_s") in cost.index
    assert table[(table.entry == "identity") & (table.metric == "rel_fro")].status.item() == "not applicable"


def test_saved_scores_reproduce_the_reported_lds(tiny_run):
    """Re-evaluate the fixed-track LDS from the saved .npy and the cached ground truth, by brute force."""
    import bench_plugins

    _, out, cache = tiny_run
    gt = build_lds_groundtruth(bench_plugins.TINY, get_preset("smoke"), cache, progress=False)
    scores = np.load(out / "scores" / "ekfac.fixed.npy")
    assert scores.shape == (bench_plugins.TINY.data.n_test, bench_plugins.TINY.data.n_train)
    table = pd.read_parquet(out / "results.parquet")
    reported = table[(table.entry == "ekfac") & (table.track == "fixed") & (table.metric == "lds")]
    a = 1  # alpha 0.5
    targets = gt.losses[a].astype(np.float64).mean(axis=1)
    per_point = [spearmanr([scores[j, m].sum() for m in gt.masks[a]], targets[:, j]).statistic
                 for j in range(scores.shape[0])]
    assert reported[reported.alpha == 0.5].value.item() == pytest.approx(np.nanmean(per_point), abs=1e-10)
    # the reference checkpoint is the cached reference model
    saved = torch.load(out / "reference.pt", weights_only=True)
    cached = reference_model(bench_plugins.TINY, cache).state_dict()
    assert all(torch.equal(saved[k], cached[k]) for k in cached)


def test_tuned_damping_is_the_best_on_the_dev_half(tiny_run):
    import bench_plugins
    from influence_bench.metrics.lds import lds

    _, out, cache = tiny_run
    table = pd.read_parquet(out / "results.parquet")
    chosen = table[(table.entry == "kfac") & (table.track == "tuned") & (table.metric == "lds")].damping.iloc[0]
    spec = bench_plugins.TINY
    problem = InfluenceProblem(reference_model(spec, cache), spec.data)
    entry = get_entry("kfac")().fit(problem)
    grid = [f * entry.mean_eigenvalue() for f in DAMPING_GRID_FACTORS]
    gt = build_lds_groundtruth(spec, get_preset("smoke"), cache, progress=False)
    dev, held_out = dev_eval_split(problem.n_test)
    assert not set(dev) & set(held_out) and len(dev) + len(held_out) == problem.n_test
    dev_lds = [lds(entry.scores(problem, d).numpy()[dev], gt.masks[1], gt.targets[1][:, dev]).mean for d in grid]
    assert chosen == pytest.approx(grid[int(np.nanargmax(dev_lds))], rel=1e-9)
    reported = table[(table.entry == "kfac") & (table.track == "tuned") & (table.metric == "lds")]
    assert (reported.n_points == len(held_out)).all()  # reported on the other half


def test_decomposition_written_for_both_tracks(tiny_run):
    _, out, _ = tiny_run
    chain = pd.read_csv(out / "decomposition.csv")
    assert set(chain.track) == {"fixed", "tuned"} and "mean" in set(chain.alpha.astype(str))
    split = pd.read_csv(out / "split.csv")
    mean = split[(split.track == "fixed") & (split.alpha.astype(str) == "mean")]
    lds = pd.read_parquet(out / "results.parquet")
    lds = lds[(lds.metric == "lds") & (lds.track == "fixed")].groupby("entry").value.mean()
    assert mean.shapley.sum() == pytest.approx(lds["block-ggn"] - lds["kfac"], abs=1e-12)


def test_peak_memory_is_the_entry_process_own():
    """A worker's peak is its own, not the high-water mark of the (larger) parent that started it."""
    import subprocess
    import sys

    code = ("import resource; from influence_bench.runner.worker import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB resident in this (parent) process
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    del ballast
    assert own < 1000 < inherited  # ru_maxrss would have reported the parent's 1.5 GB
