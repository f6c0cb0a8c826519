"""Benchmarks of the paths every run spends its time in, at sizes of a second or less per call
(pytest-benchmark). Not part of the test suite (``testpaths`` is ``tests``); run and gate them with
``python benchmarks/hot_paths/gate.py`` (README, "Performance")."""

from __future__ import annotations

import numpy as np
import torch

from influence_bench.curvature.eigen import DEFAULT_DAMPING, EigenCurvature
from influence_bench.curvature.exact import exact_ggn, per_example_gradients
from influence_bench.entries import make_entry
from influence_bench.groundtruth import draw_masks
from influence_bench.metrics.lds import lds
from influence_bench.training import train_batched


def test_per_example_gradients(benchmark, digits_problem):
    """[1617, 6570]: the gradients of digits-mlp's training points (vmap of grad), as a run computes
    them once. All of them: a smaller output (27 MB at 512 points) sits at glibc's mmap threshold and
    page-faults on some calls only (+10 to 30 ms each here), which made the timing bimodal."""
    p = digits_problem
    grads = benchmark(per_example_gradients, p.model, p.x_train, p.y_train, p.loss)
    assert grads.shape == (p.n_train, p.n_params)


def test_exact_ggn_small_mlp(benchmark, small_problem):
    """[2410, 2410]: the dense exact GGN of the small MLP over 256 points (stacked Jacobians, syrk)."""
    p = small_problem
    ggn = benchmark(exact_ggn, p.model, p.x_train, p.loss)
    assert ggn.shape == (p.n_params, p.n_params)


def test_eigen_inverse_64_vectors(benchmark, small_problem):
    """(G + damping I)^-1 applied to 64 test gradients [64, 2410] from G's dense eigendecomposition."""
    p = small_problem
    curvature = EigenCurvature.from_dense(p.ggn)
    out = benchmark(curvature.inverse_matvec, p.test_grads, DEFAULT_DAMPING)
    assert out.shape == p.test_grads.shape


def test_kfac_inverse_64_vectors(benchmark, small_problem):
    """K-FAC's damped inverse (Kronecker factors kept as factors) applied to 64 test gradients."""
    p = small_problem
    entry = make_entry("kfac").fit(p)
    out = benchmark(entry.inverse, p.test_grads, DEFAULT_DAMPING)
    assert out.shape == p.test_grads.shape


def test_batched_training_one_epoch(benchmark, digits_mlp):
    """One epoch of the batched engine: 16 half-data models of digits-mlp trained together (25 steps)."""
    n_models = 16
    members = torch.from_numpy(draw_masks(digits_mlp, 0.5, n_models, digits_mlp.data.n_train))
    recipe = digits_mlp.recipe.with_epochs(1)
    stack = benchmark(train_batched, digits_mlp, digits_mlp.data, members, list(range(n_models)), recipe=recipe)
    assert stack.n_models == n_models


def test_lds_from_scores(benchmark, digits_mlp):
    """LDS of scores [180, 1617] against 100 masks at alpha 0.5 (one alpha of the standard preset),
    with its 2,000-resample bootstrap interval."""
    n_train, n_test, n_masks = digits_mlp.data.n_train, digits_mlp.data.n_test, 100
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((n_test, n_train))
    masks = draw_masks(digits_mlp, 0.5, n_masks, n_train)
    targets = masks.astype(np.float64) @ scores.T + rng.standard_normal((n_masks, n_test))  # [M, n_test]
    summary = benchmark(lds, scores, masks, targets)
    assert summary.n_points == n_test
