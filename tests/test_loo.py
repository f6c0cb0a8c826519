"""Leave-one-out ground truth and metrics (PROTOCOL.md section 4), against brute-force references."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from typer.testing import CliRunner

import influence_bench.cli as cli_module
import influence_bench.training.batched as batched_module
from influence_bench.groundtruth import (
    LOOGroundTruth, build_loo_groundtruth, draw_loo_points, get_preset, groundtruth_dir, loo_dir,
)
from influence_bench.metrics.loo import loo_correlations, loo_noise_ceiling, loo_per_point, loo_rows
from influence_bench.training import train_single
from influence_bench.tasks.losses import CROSS_ENTROPY
from influence_bench.training.single import per_example_loss

# 3 removed points x 2 seeds, one epoch, one removed point per chunk: 3 removal chunks and the full-data chunk
TINY = dataclasses.replace(get_preset("smoke"), epochs=1, loo_points=3, models_per_batch=2)


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    real = batched_module.train_batched

    def counting(*args, **kwargs):
        calls.append(args[2].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(batched_module, "train_batched", counting)
    return calls


@pytest.fixture(scope="module")
def built(digits, tmp_path_factory):
    return build_loo_groundtruth(digits, TINY, tmp_path_factory.mktemp("cache"), progress=False)


def synthetic(n_removed=6, n_seeds=2, n_test=5, n_train=20, seed=0) -> LOOGroundTruth:
    rng = np.random.default_rng(seed)
    removed = np.sort(rng.choice(n_train, n_removed, replace=False))
    return LOOGroundTruth(removed, np.arange(n_seeds), rng.normal(size=(n_removed, n_seeds, n_test)).astype(np.float32),
                          rng.normal(size=(n_seeds, n_test)).astype(np.float32))


# -- ground truth ---------------------------------------------------------------------------------

def test_removed_points_are_sorted_distinct_and_reproducible(digits):
    points = draw_loo_points(digits, 100, 1617)
    assert len(set(points)) == 100 and (np.diff(points) > 0).all() and 0 <= points[0] and points[-1] < 1617
    assert np.array_equal(points, draw_loo_points(digits, 100, 1617))
    assert set(draw_loo_points(digits, 4, 1617)) <= set(points)  # the smoke preset's points are among them


def test_loo_and_full_models_equal_single_model_training(digits, digits_data, built):
    recipe = digits.recipe.with_epochs(TINY.epochs)
    assert built.losses_without.shape == (3, 2, 180) and built.losses_full.shape == (2, 180)
    k, seed = 1, 1
    everything = torch.ones(digits_data.n_train, dtype=torch.bool)
    member = everything.clone()
    member[int(built.removed[k])] = False
    model = train_single(digits, digits_data, member, seed, recipe)
    expected = per_example_loss(model, digits_data.x_test, digits_data.y_test, CROSS_ENTROPY).numpy()
    np.testing.assert_allclose(built.losses_without[k, seed], expected, atol=1e-5)
    full = train_single(digits, digits_data, everything, 0, recipe)
    expected = per_example_loss(full, digits_data.x_test, digits_data.y_test, CROSS_ENTROPY).numpy()
    np.testing.assert_allclose(built.losses_full[0], expected, atol=1e-5)


def test_targets_are_the_seed_mean_of_the_loss_differences(built):
    by_hand = np.zeros((3, 180))
    for k in range(3):
        for r in range(2):
            by_hand[k] += (built.losses_without[k, r].astype(np.float64) - built.losses_full[r]) / 2
    assert built.targets.dtype == np.float64
    np.testing.assert_allclose(built.targets, by_hand, atol=1e-12)
    assert np.abs(built.targets).max() > 1e-4  # removing a point does change the test losses


@pytest.mark.parametrize("damaged", ["removed/chunk001.npz", "full.npz"])
def test_corrupt_chunk_is_reported_and_rebuilt(digits, cache_dir, count_trainings, damaged, capsys):
    gt = build_loo_groundtruth(digits, TINY, progress=False)
    assert sum(count_trainings) == TINY.n_loo_trainings
    chunk = loo_dir(digits, TINY) / damaged
    chunk.write_bytes(b"not a numpy archive")
    count_trainings.clear()
    rebuilt = build_loo_groundtruth(digits, TINY, progress=False)
    assert str(chunk) in capsys.readouterr().err  # reported
    assert count_trainings == [TINY.n_seeds]  # only that chunk retrained
    np.testing.assert_array_equal(rebuilt.removed, gt.removed)
    np.testing.assert_allclose(rebuilt.losses_without, gt.losses_without, atol=1e-6)
    np.testing.assert_allclose(rebuilt.losses_full, gt.losses_full, atol=1e-6)


def test_interrupted_build_resumes_from_finished_chunks(digits, cache_dir, monkeypatch):
    real = batched_module.train_batched
    budget = {"left": 2}

    def crash_after_two(*args, **kwargs):
        if budget["left"] == 0:
            raise KeyboardInterrupt
        budget["left"] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batched_module, "train_batched", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_loo_groundtruth(digits, TINY, progress=False)
    calls = []
    monkeypatch.setattr(batched_module, "train_batched", lambda *a, **k: calls.append(1) or real(*a, **k))
    gt = build_loo_groundtruth(digits, TINY, progress=False)
    assert len(calls) == 4 - 2 and np.isfinite(gt.losses_without).all()


def test_loo_points_stay_out_of_the_lds_cache_key(digits):
    standard = get_preset("standard")
    assert "loo_points" not in standard.to_dict() and standard.loo_points == 100
    other_k = dataclasses.replace(standard, loo_points=7)
    assert groundtruth_dir(digits, standard) == groundtruth_dir(digits, other_k)
    assert loo_dir(digits, standard) != loo_dir(digits, other_k)
    assert loo_dir(digits, standard).parent == groundtruth_dir(digits, standard).parent


# -- metrics --------------------------------------------------------------------------------------

def test_per_point_correlations_match_scipy_with_the_removal_sign():
    gt = synthetic()
    scores = np.random.default_rng(1).normal(size=(5, 20))
    pearson, spearman = loo_per_point(scores, gt)
    for j in range(5):
        predicted = -scores[j, gt.removed]
        assert pearson[j] == pytest.approx(pearsonr(predicted, gt.targets[:, j])[0], abs=1e-12)
        assert spearman[j] == pytest.approx(spearmanr(predicted, gt.targets[:, j])[0], abs=1e-12)
    exact = scores.copy()
    exact[:, gt.removed] = -gt.targets.T  # the effect of removing k is -s[j, k]
    pearson, spearman = loo_per_point(exact, gt)
    np.testing.assert_allclose(pearson, 1.0, atol=1e-12)
    np.testing.assert_allclose(spearman, 1.0, atol=1e-12)


def test_undefined_point_is_counted_not_dropped():
    gt = synthetic()
    scores = np.random.default_rng(2).normal(size=(5, 20))
    scores[0, gt.removed] = 3.0  # constant prediction for test point 0
    pearson, spearman = loo_per_point(scores, gt)
    assert np.isnan(pearson[0]) and np.isnan(spearman[0]) and np.isfinite(pearson[1:]).all()
    summary = loo_correlations(scores, gt)
    for name, per_point in (("pearson", pearson), ("spearman", spearman)):
        assert summary[name].n_undefined == 1 and summary[name].n_points == 5
        assert summary[name].mean == pytest.approx(per_point[1:].mean())
    rows = loo_rows("some-entry", "fixed", scores, gt, damping=1e-4)
    assert [r["metric"] for r in rows] == ["loo_pearson", "loo_spearman"]
    assert all(r["n_undefined"] == 1 and r["damping"] == 1e-4 and np.isnan(r["alpha"]) for r in rows)
    assert rows[1]["value"] == pytest.approx(summary["spearman"].mean)
    assert rows[1]["ceiling"] == pytest.approx(loo_noise_ceiling(gt)["spearman"].mean)


def test_ceiling_is_one_for_identical_halves_and_clips_negative_split_halves():
    gt = synthetic(n_seeds=4)
    gt.losses_without[:, 2:] = gt.losses_without[:, :2]
    gt.losses_full[2:] = gt.losses_full[:2]
    for c in loo_noise_ceiling(gt).values():
        assert c.mean == pytest.approx(1.0) and c.n_clipped == 0 and c.n_undefined == 0

    gt.losses_full[:] = 0.0
    gt.losses_without[:, 2:, 0] = -gt.losses_without[:, :2, 0]  # test point 0: second half = -first half
    for c in loo_noise_ceiling(gt).values():
        assert c.n_clipped == 1 and c.per_point[0] == 0.0
        assert c.mean == pytest.approx(4 / 5)


# -- command line ---------------------------------------------------------------------------------

def test_groundtruth_command_with_loo_prints_the_loo_ceiling(digits, tmp_path, monkeypatch):
    tiny = dataclasses.replace(TINY, n_masks=2, alphas=(0.5,), loo_points=2)
    monkeypatch.setattr(cli_module, "get_preset", lambda name: tiny)
    result = CliRunner().invoke(cli_module.app, ["groundtruth", "--loo", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "leave-one-out noise ceiling" in result.output
    assert list(tmp_path.glob("groundtruth/digits-mlp.v1/loo-smoke-*/removed/chunk001.npz"))
    # each correlation's row shows the ceiling of the leave-one-out losses it cached
    gt = build_loo_groundtruth(digits, tiny, tmp_path, progress=False)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                              for line in result.output.splitlines()) if len(cells) == 5}
    for name, c in loo_noise_ceiling(gt).items():
        assert rows[name] == [f"{c.mean:.3f}", f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", str(c.n_clipped),
                              str(c.n_undefined)], (name, result.output)
