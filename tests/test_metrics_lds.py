import numpy as np
from scipy.stats import spearmanr

from influence_bench.metrics.correlation import spearman_columns
from influence_bench.metrics.lds import lds, noise_ceiling, predicted_subset_effects, summarize


def test_spearman_columns_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(30, 6)).astype(float)  # many ties
    y = x + rng.normal(size=(30, 6))
    ours = spearman_columns(x, y)
    ref = [spearmanr(x[:, j], y[:, j]).statistic for j in range(6)]
    assert np.allclose(ours, ref)


def test_constant_column_is_undefined_and_counted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    y = rng.normal(size=(20, 3))
    y[:, 1] = 4.2
    r = spearman_columns(x, y)
    assert np.isnan(r[1]) and np.isfinite(r[[0, 2]]).all()
    s = summarize(r)
    assert s.n_undefined == 1 and np.isclose(s.mean, np.mean(r[[0, 2]]))


def test_lds_against_brute_force():
    rng = np.random.default_rng(2)
    n_test, n_train, n_masks = 5, 40, 25
    scores = rng.normal(size=(n_test, n_train))
    masks = rng.random((n_masks, n_train)) < 0.5
    targets = rng.normal(size=(n_masks, n_test))
    expected = []
    for j in range(n_test):
        pred = [sum(scores[j, i] for i in range(n_train) if masks[m, i]) for m in range(n_masks)]
        expected.append(spearmanr(pred, targets[:, j]).statistic)
    assert np.allclose(predicted_subset_effects(scores, masks)[:, 0], [scores[0, masks[m]].sum() for m in range(n_masks)])
    result = lds(scores, masks, targets)
    assert np.allclose(result.per_point, expected)
    assert np.isclose(result.mean, np.mean(expected))
    assert result.ci_low <= result.mean <= result.ci_high


def test_perfect_predictor_has_lds_one():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(4, 30))
    masks = rng.random((20, 30)) < 0.5
    targets = 3.0 * predicted_subset_effects(scores, masks) + 1.0  # monotone in the prediction
    assert np.allclose(lds(scores, masks, targets).per_point, 1.0)


def test_noise_ceiling_against_brute_force():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(15, 1, 3))
    losses = signal + 0.5 * rng.normal(size=(15, 6, 3))
    expected = []
    for j in range(3):
        r = spearmanr(losses[:, :3, j].mean(1), losses[:, 3:, j].mean(1)).statistic
        expected.append(2 * r / (1 + r))
    result = noise_ceiling(losses)
    assert np.allclose(result.per_point, expected) and np.isclose(result.mean, np.mean(expected))
    # pure noise has a low ceiling, no noise a perfect one
    assert noise_ceiling(np.repeat(signal, 4, axis=1)).mean == 1.0


def test_noise_ceiling_clips_negative_split_halves_at_zero_and_counts_them():
    # point 0: the halves agree (ceiling 1); point 1: the second half is the first reversed, a split-half
    # Spearman of -1 that Spearman-Brown would send to -inf and that would drag the mean below 0
    first = np.arange(10, dtype=np.float64)
    losses = np.zeros((10, 2, 2))
    losses[:, 0, 0] = losses[:, 1, 0] = first
    losses[:, 0, 1], losses[:, 1, 1] = first, -first + 0.5 * np.sin(first)  # Spearman -1 exactly
    result = noise_ceiling(losses)
    assert result.per_point[0] == 1.0 and result.per_point[1] == 0.0
    assert result.n_clipped == 1 and result.mean == 0.5
    # a split-half correlation of -0.5 unclipped would give 2(-0.5)/(1-0.5) = -2
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(40, 4, 30))
    result = noise_ceiling(mixed)
    assert (result.per_point >= 0).all() and result.n_clipped > 0
