"""A plugin module for the run tests: a tiny task and entries that misbehave.

Imported by name (``--plugins bench_plugins``) in the test process and in every worker process.
"""

import dataclasses

import torch

from influence_bench.entries import Entry, register
from influence_bench.tasks import get_task, register_task


def _first_240_digits():
    x, y = get_task("digits-mlp").load_arrays()
    return x[:240], y[:240]


TINY = register_task(dataclasses.replace(
    get_task("digits-mlp"), name="digits-tiny", description="test task: 240 digits, MLP 64-6-5-10",
    layer_sizes=(64, 6, 5, 10), load_arrays=_first_240_digits,
))


@register
class Crashes(Entry):
    name = "test-crashes"
    description = "raises in fit"
    curvature_kind = "none"

    def fit(self, problem):
        raise RuntimeError("deliberate failure in fit")


@register
class NaNScores(Entry):
    name = "test-nan-scores"
    description = "returns NaN scores"
    curvature_kind = "none"

    def fit(self, problem):
        self.curvature_ = None
        return self

    def scores(self, problem, damping=None):
        return torch.full((problem.n_test, problem.n_train), float("nan"), dtype=torch.float64)


@register
class WrongShape(NaNScores):
    name = "test-wrong-shape"
    description = "returns scores of the wrong shape"

    def scores(self, problem, damping=None):
        return torch.zeros(problem.n_train, problem.n_test, dtype=torch.float64)


@register
class BadCurvature(Entry):
    """Valid scores, but a curvature that covers only half of the parameters: its metrics fail."""

    name = "test-bad-curvature"
    description = "a curvature of the wrong dimension"
    curvature_kind = "diagonal"

    def fit(self, problem):
        from influence_bench.curvature.eigen import EigenCurvature

        self.curvature_ = EigenCurvature.diagonal(torch.ones(problem.n_params // 2, dtype=torch.float64))
        return self

    def scores(self, problem, damping=None):
        return -problem.test_grads @ problem.train_grads.T
