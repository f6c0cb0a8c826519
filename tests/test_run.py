"""``influence-bench run`` and ``influence_bench.run`` end to end on a tiny plugin task (tests/bench_plugins.py)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

import influence_bench
from conftest import tiny_task_environment
from influence_bench import schema
from influence_bench.cli import app
from influence_bench.groundtruth import build_lds_groundtruth, get_preset, reference_model
from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.metrics.lds import lds
from influence_bench.runner.evaluation import GRID_FACTORS, EvalSettings, dev_eval_split, tune

CHAIN = ["ggn", "block-ggn", "ekfac", "kfac", "kfac-eigvals-in-block-basis", "identity"]
# the fault-injection cases of one run (README "What a run survives"): entry -> its status
MISBEHAVING = {"test-crashes": "error", "test-nan-scores": "invalid-output", "test-wrong-shape": "invalid-output",
               "test-bad-curvature": "error", "test-overruns": "timeout", "test-allocates": "oom",
               "test-exits": "crashed"}
ENTRY_TIMEOUT_S = 10  # test-overruns sleeps far past it; test-slow-start spends longer than it before its fit


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The plugin module importable here and in every entry's process; an own cache. Its tiny task and
    misbehaving entries stay registered for this module only (conftest's ``_module_registries`` removes them).

    One torch thread here and in every entry's process (conftest's ``tiny_task_environment``)."""
    with tiny_task_environment(tmp_path_factory.mktemp("run")) as root:
        yield root


@pytest.fixture(scope="module")
def tiny_run(plugin_env):
    root = plugin_env
    # two entry processes at a time: most of an entry's time here is its process importing torch
    result = CliRunner().invoke(app, ["run", "--task", "digits-tiny", "--preset", "smoke", "--plugins",
                                      "bench_plugins,broken_plugin", "--entries", ",".join(CHAIN + list(MISBEHAVING) + ["test-slow-start"]),
                                      "--jobs", "2", "--entry-timeout", str(ENTRY_TIMEOUT_S), "--entry-memory", "3000",
                                      "--out", str(root / "out")])
    return result, root / "out", root / "cache"


def test_failures_are_rows_and_the_others_finish(tiny_run):
    result, out, _ = tiny_run
    assert result.exit_code == 1, result.output
    for name in MISBEHAVING:
        assert name in result.stderr
    assert "deliberate failure in fit" in result.stderr
    table = pd.read_parquet(out / schema.RESULTS_FILE)
    failed = table[table.status.isin(schema.FAILURE_STATUSES)].set_index("entry")
    assert failed.status.to_dict() == {**MISBEHAVING, "plugin:broken_plugin": "error"}
    broken = failed.message["plugin:broken_plugin"]  # a plugin that fails to import: a row, with its traceback
    assert "Traceback" in broken and "RuntimeError: this plugin is deliberately broken" in broken
    message = failed.message
    assert "NaN" in message["test-nan-scores"] and "shape" in message["test-wrong-shape"]
    assert message["test-bad-curvature"].startswith("metrics failed")
    assert f"{ENTRY_TIMEOUT_S} s after its fit started" in message["test-overruns"]
    assert "out of memory" in message["test-allocates"] and "--entry-memory" in message["test-allocates"]
    assert "exited with code 3" in message["test-exits"]
    assert (out / "scores" / "test-bad-curvature.fixed.npy").exists()  # its valid scores are not lost
    ok = set(table[(table.metric == "lds") & (table.status == "ok")].entry)
    assert ok == set(CHAIN) | {"test-slow-start"}  # its time before fit did not count against its limit
    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    assert set(manifest["failures"]) == set(failed.index)


def test_unknown_entry_fails_before_any_work(plugin_env):
    out = plugin_env / "never"
    result = CliRunner().invoke(app, ["run", "--task", "digits-tiny", "--preset", "smoke", "--plugins",
                                      "bench_plugins", "--entries", "kfac,kfca", "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown entry 'kfca'" in result.stderr and "valid entries" in result.stderr
    assert not out.exists()


def test_results_follow_the_schema(tiny_run):
    _, out, _ = tiny_run
    table = schema.validate(pd.read_parquet(out / schema.RESULTS_FILE))
    assert pd.read_csv(out / schema.RESULTS_CSV).shape == table.shape
    lds_rows = table[table.metric == "lds"]
    assert set(lds_rows.track) == {"fixed", "tuned"} and set(lds_rows.alpha) == {0.3, 0.5, 0.7, 0.9}
    assert (lds_rows.ci_low <= lds_rows.value).all() and (lds_rows.value <= lds_rows.ci_high).all()
    assert lds_rows.higher_is_better.all() and lds_rows.ceiling.between(-1, 1).all()
    for column in ("git_commit", "torch_version", "curvlinops_version", "machine", "timestamp", "seeds", "preset"):
        assert table[column].notna().all() and (table[column] != "").all()
    cost = table[table.track == "cost"].set_index(["entry", "metric"]).value
    assert cost["ggn", "peak_rss_mb"] > 50 and cost["ggn", "fit_s"] > 0
    for metric in ("gradient_s", "ggn_s", "reference_s"):
        assert cost[schema.SHARED_GRADIENTS, metric] > 0  # shared work, timed once
    assert table[(table.entry == "identity") & (table.metric == "rel_fro")].status.item() == "not applicable"
    # below the dense limit every metric is exact
    assert not table[(table.entry == "kfac") & (table.track == "fixed")].estimated.any()
    points = pd.read_parquet(out / schema.POINTS_FILE)
    assert list(points.columns) == list(schema.POINT_COLUMNS)


def test_saved_scores_reproduce_the_reported_lds(tiny_run):
    """Re-evaluate the fixed-track LDS from the saved .npy and the cached ground truth, by brute force."""
    import bench_plugins

    _, out, cache = tiny_run
    gt = build_lds_groundtruth(bench_plugins.TINY, get_preset("smoke"), cache, progress=False)
    scores = np.load(out / "scores" / "ekfac.fixed.npy")
    assert scores.shape == (bench_plugins.TINY.data.n_test, bench_plugins.TINY.data.n_train)
    table = pd.read_parquet(out / schema.RESULTS_FILE)
    reported = table[(table.entry == "ekfac") & (table.track == "fixed") & (table.metric == "lds")]
    a = 1  # alpha 0.5
    targets = gt.losses[a].astype(np.float64).mean(axis=1)
    per_point = [spearmanr([scores[j, m].sum() for m in gt.masks[a]], targets[:, j]).statistic
                 for j in range(scores.shape[0])]
    assert reported[reported.alpha == 0.5].value.item() == pytest.approx(np.nanmean(per_point), abs=1e-10)
    points = pd.read_parquet(out / schema.POINTS_FILE)
    mine = points[(points.entry == "ekfac") & (points.track == "fixed") & (points.alpha == 0.5)].lds.to_numpy()
    assert np.allclose(mine, per_point, equal_nan=True)  # each test point's LDS is kept
    saved = torch.load(out / schema.REFERENCE_FILE, weights_only=True)
    cached = reference_model(bench_plugins.TINY, cache).state_dict()
    assert all(torch.equal(saved[k], cached[k]) for k in cached)


def test_tuned_damping_is_the_best_on_the_dev_half_and_never_below_fixed(tiny_run):
    import bench_plugins

    _, out, cache = tiny_run
    grid = pd.read_csv(out / schema.GRID_FILE)
    table = pd.read_parquet(out / schema.RESULTS_FILE)
    for entry, g in grid.groupby("entry"):
        assert g.chosen.sum() == 1 and g.is_fixed.sum() == 1
        assert np.allclose(np.sort(g.factor.dropna()), GRID_FACTORS)  # half-decade steps, 1e-3 .. 10
        chosen, fixed = g[g.chosen].iloc[0], g[g.is_fixed].iloc[0]
        assert chosen.dev_lds == g.dev_lds.max() >= fixed.dev_lds
        assert chosen.at_edge == (chosen.damping in (g.damping.min(), g.damping.max()))
        tuned = table[(table.entry == entry) & (table.track == "tuned") & (table.metric == "lds")]
        assert np.allclose(tuned.damping, chosen.damping)
    # the recorded dev-half LDS is what the saved tuned scores give on the dev half
    spec = bench_plugins.TINY
    gt = build_lds_groundtruth(spec, get_preset("smoke"), cache, progress=False)
    dev, held_out = dev_eval_split(spec.data.n_test)
    tuned_scores = np.load(out / "scores" / "kfac.tuned.npy")
    kfac = grid[(grid.entry == "kfac") & grid.chosen].iloc[0]
    assert lds(tuned_scores[dev], gt.masks[1], gt.targets[1][:, dev]).mean == pytest.approx(kfac.dev_lds, abs=1e-12)
    reported = table[(table.entry == "kfac") & (table.track == "tuned") & (table.metric == "lds")]
    assert set(reported.alpha) == {0.3, 0.5, 0.7, 0.9} and (reported.n_points == len(held_out)).all()  # the other half


def test_decomposition_has_paired_intervals_for_both_tracks(tiny_run):
    _, out, _ = tiny_run
    chain = pd.read_csv(out / schema.DECOMPOSITION_FILE)
    assert list(chain.columns) == list(schema.DECOMPOSITION_COLUMNS)
    assert set(chain.track) == {"fixed", "tuned"} and "mean" in set(chain.alpha.astype(str))
    steps = chain[chain["from"] != "hessian"]  # the run had no Hessian entry
    assert (steps.drop_ci_low <= steps["drop"] + 1e-12).all() and (steps["drop"] <= steps.drop_ci_high + 1e-12).all()
    split = pd.read_csv(out / schema.SPLIT_FILE)
    mean = split[(split.track == "fixed") & (split.alpha.astype(str) == "mean")]
    lds_fixed = pd.read_parquet(out / schema.RESULTS_FILE)
    lds_fixed = lds_fixed[(lds_fixed.metric == "lds") & (lds_fixed.track == "fixed")].groupby("entry").value.mean()
    assert mean.shapley.sum() == pytest.approx(lds_fixed["block-ggn"] - lds_fixed["kfac"], abs=1e-12)
    with np.load(out / schema.BOOTSTRAP_FILE) as boot:
        assert schema.bootstrap_key("tuned", 0.5, "kfac") in boot.files
        assert boot[schema.bootstrap_key("tuned", 0.5, "kfac")].shape == (500,)


def test_in_process_run_without_a_dense_ggn(plugin_env, monkeypatch):
    """Above the dense limit, with the dense GGN made to raise: identity, kfac and cg finish with their
    metrics, the estimated ones marked, and the dense entries skip with a reason."""
    import influence_bench.curvature.exact as exact

    def no_dense_ggn(*args, **kwargs):
        raise AssertionError("the dense GGN was built")

    monkeypatch.setattr(exact, "exact_ggn", no_dense_ggn)
    results = influence_bench.run("digits-tiny", ["identity", "kfac", "cg", "ggn"], preset="smoke", isolate=False,
                                  dense_limit=100, damping=1e-2, progress=False)
    assert results.failures == {}
    assert "dense limit" in results.skipped["ggn"]
    table = results.table.set_index(["entry", "metric"])
    fixed = results.table[results.table.track == "fixed"].set_index(["entry", "metric"])
    for entry in ("identity", "kfac", "cg"):
        assert math.isfinite(results.lds("tuned")[entry])
        assert fixed.loc[(entry, "fidelity"), "estimated"]  # against the CG reference on a subset of queries
    for metric in ("rel_fro", "ihvp_err", "spectrum_err", "topk_overlap_10"):
        assert fixed.loc[("kfac", metric), "status"] == "ok" and fixed.loc[("kfac", metric), "estimated"]
        assert fixed.loc[("cg", metric), "status"] == "ok"
    assert fixed.loc[("kfac", "eigval_mismatch"), "status"] == "not applicable"
    # cg's curvature is the GGN itself: its estimated distance to it is zero and its top eigenvectors coincide
    assert fixed.loc[("cg", "rel_fro"), "value"] < 1e-10
    assert fixed.loc[("cg", "topk_overlap_10"), "value"] == pytest.approx(1.0, abs=1e-6)
    assert ("cg", "cg_iterations_max") in table.index


def test_entries_in_parallel_processes_give_the_in_process_results(plugin_env):
    """--jobs 2 runs two entry processes at once; the scores, and so every LDS, are those of one process."""
    kwargs = dict(preset="smoke", progress=False, plugins=["bench_plugins"])
    parallel = influence_bench.run("digits-tiny", ["identity", "kfac", "diag-ggn"], jobs=2, **kwargs)
    alone = influence_bench.run("digits-tiny", ["identity", "kfac", "diag-ggn"], isolate=False, **kwargs)
    for entry in ("identity", "kfac", "diag-ggn"):
        ours, theirs = parallel.scores(entry), alone.scores(entry)
        assert np.allclose(ours, theirs, rtol=1e-9, atol=1e-12 * np.abs(theirs).max())  # thread counts differ
    assert parallel.lds("tuned").to_dict() == pytest.approx(alone.lds("tuned").to_dict(), abs=1e-9)
    with pytest.raises(ValueError, match="isolate"):
        influence_bench.run("digits-tiny", ["identity"], jobs=2, isolate=False, **kwargs)


# -- tuning on a synthetic LDS curve ----------------------------------------------------------------
class SyntheticCurve:
    """An entry whose scores are the true effects plus noise that grows with |log10(damping / best)|."""

    name = "synthetic"
    has_damping = True

    def __init__(self, truth: np.ndarray, best: float):
        self.truth, self.best = truth, best
        self.noise = np.random.default_rng(1).normal(size=truth.shape)

    def mean_eigenvalue(self, problem):
        return 1.0

    def scores(self, problem, damping, queries=None):
        distance = abs(math.log10(damping / self.best))
        out = self.truth + 0.3 * distance * self.noise * np.abs(self.truth).mean()
        return torch.from_numpy(out if queries is None else out[queries.numpy()])


class _Problem:
    n_train = 60
    device = torch.device("cpu")


def synthetic_ground_truth(truth: np.ndarray) -> LDSGroundTruth:
    """One alpha (0.5), masks of half the points, targets exactly the summed true effects."""
    rng = np.random.default_rng(0)
    masks = np.stack([rng.permutation(60) < 30 for _ in range(40)])[None]
    losses = (masks[0].astype(float) @ truth.T)[None, :, None, :].repeat(2, axis=2)
    return LDSGroundTruth(np.array([0.5]), masks, losses)


@pytest.mark.parametrize(("best", "pick", "at_edge"), [(0.1, 0.1, False), (1e3, 10.0, True), (1e-4, 1e-4, True)])
def test_tuning_picks_the_best_damping_and_flags_an_edge(best, pick, at_edge):
    truth = np.random.default_rng(2).normal(size=(10, 60))
    entry = SyntheticCurve(truth, best)
    gt = synthetic_ground_truth(truth)
    dev = np.arange(10)
    fixed = entry.scores(None, 1e-4).numpy()
    chosen, rows, _ = tune(entry, _Problem(), gt, EvalSettings(damping=1e-4, eps=1e-6), fixed, dev)
    assert chosen == pytest.approx(pick)
    picked = next(r for r in rows if r["chosen"])
    assert picked["at_edge"] == at_edge
    assert len(rows) == len(GRID_FACTORS) + 1 and sum(r["is_fixed"] for r in rows) == 1
    fixed_row = next(r for r in rows if r["is_fixed"])
    assert picked["dev_lds"] >= fixed_row["dev_lds"]


def test_peak_memory_is_the_entry_process_own():
    """A worker's peak is its own, not the high-water mark of the (larger) parent that started it."""
    import subprocess
    import sys

    code = ("import resource; from influence_bench.runner.evaluation import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB resident in this (parent) process
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    del ballast
    assert own < 1000 < inherited  # ru_maxrss would have reported the parent's 1.5 GB


def test_runs_record_parameters_loo_and_the_reference_model(tiny_run):
    _, out, _ = tiny_run
    table = pd.read_parquet(out / schema.RESULTS_FILE)
    kfac = table[table.entry == "kfac"]
    assert (kfac["param.fisher"] == "type-2").all() and (kfac["param.separate"] == "false").all()
    assert (table[table.entry == "identity"]["param.fisher"] == "").all()
    for entry in CHAIN:  # every entry that ran has LOO on both tracks, beside its ceiling
        loo = table[(table.entry == entry) & table.metric.isin(["loo_pearson", "loo_spearman"])]
        assert sorted(loo.track) == ["fixed", "fixed", "tuned", "tuned"], entry
        assert loo.value.between(-1, 1).all() and loo.ceiling.notna().all()
    shared = table[table.entry == schema.SHARED_GRADIENTS].set_index(["track", "metric"])
    assert shared.loc[("diagnostics", "reference_grad_norm"), "value"].item() > 0
    assert shared.loc[("diagnostics", "reference_train_loss"), "value"].item() > 0
    ceilings = shared.loc[("fixed", "noise_ceiling")]
    assert len(ceilings) == 4 and ceilings.message.str.contains("clipped at 0").all()


def test_gpu_peak_is_a_cost_row_where_cuda_is_available(plugin_env, monkeypatch):
    """Where CUDA is available the entry's GPU peak is a cost row beside the resident-set peak, and the
    cost table gains its column; without CUDA neither exists (this machine's runs stay as they were)."""
    import influence_bench.runner.evaluation as evaluation
    from influence_bench.report.tables import cost_table

    calls = []
    monkeypatch.setattr(evaluation, "reset_gpu_peak", lambda: calls.append("reset") or True)
    monkeypatch.setattr(evaluation, "gpu_peak_mb", lambda: calls.append("read") or 123.0)
    results = influence_bench.run("digits-tiny", ["identity"], preset="smoke", isolate=False, progress=False, loo=False)
    cost = results.table[(results.table.track == "cost")].set_index("metric")
    assert cost.loc["gpu_peak_mb", "value"] == 123.0 and calls == ["reset", "read"]
    assert "peak_rss_mb" in cost.index
    assert cost_table(results.table, ["identity"]).set_index("entry").loc["identity", "GPU peak (MB)"] == "123"
    monkeypatch.undo()
    plain = results.table[results.table.metric != "gpu_peak_mb"]
    assert "GPU peak (MB)" not in cost_table(plain, ["identity"]).columns


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA path is untested here")
def test_gpu_peak_counts_the_entry_own_cuda_tensors():
    from influence_bench.runner.evaluation import gpu_peak_mb, reset_gpu_peak

    assert reset_gpu_peak()
    block = torch.ones(64 * 2**20 // 4, device="cuda")  # 64 MB
    assert 64 <= gpu_peak_mb() < 80
    del block
