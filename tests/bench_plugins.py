"""A plugin module for the run tests: a tiny task and entries that misbehave.

Imported by name (``--plugins bench_plugins``) in the test process and in every worker process.
"""

import dataclasses

import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries import EigenEntry, Entry, register
from influence_bench.tasks import get_task, register_task
from influence_bench.tasks.models import MLP


def _first_240_digits():
    x, y = get_task("digits-mlp").load_arrays()
    return x[:240], y[:240]


TINY = register_task(dataclasses.replace(
    get_task("digits-mlp"), name="digits-tiny", description="test task: 240 digits, MLP 64-6-5-10",
    model=MLP((64, 6, 5, 10)), load_arrays=_first_240_digits,
))


@register
class Crashes(Entry):
    name = "test-crashes"
    description = "raises in fit"

    def fit(self, problem):
        raise RuntimeError("deliberate failure in fit")


@register
class NaNInverse(Entry):
    name = "test-nan-scores"
    description = "an inverse that returns NaN"

    def fit(self, problem):
        self.fitted_ = True
        return self

    def inverse(self, vectors, damping=None):
        return torch.full_like(vectors, float("nan"), dtype=torch.float64)


@register
class WrongShape(NaNInverse):
    name = "test-wrong-shape"
    description = "an inverse of the wrong shape"

    def inverse(self, vectors, damping=None):
        return torch.zeros(vectors.shape[0], vectors.shape[1] - 1, dtype=torch.float64)


@register
class BadCurvature(EigenEntry):
    """Valid scores (the identity inverse), but an eigen form that covers half of the parameters: its metrics fail."""

    name = "test-bad-curvature"
    description = "a curvature of the wrong dimension"

    def fit(self, problem):
        self.eigen_ = EigenCurvature.diagonal(torch.ones(problem.n_params // 2, dtype=torch.float64))
        return self

    def inverse(self, vectors, damping=None):
        return vectors.to(torch.float64).clone()


# -- the fault-injection cases of the isolation limits (tests/test_run.py) --------------------------
SLEEP_PAST_LIMIT_S = 600.0  # far beyond the run tests' --entry-timeout
SLOW_START_S = 12.0  # work before fit longer than the run tests' --entry-timeout, which must not count


@register
class SleepsPastTheLimit(NaNInverse):
    name = "test-overruns"
    description = "sleeps in fit past any time limit"

    def fit(self, problem):
        import time

        time.sleep(SLEEP_PAST_LIMIT_S)
        return super().fit(problem)


@register
class SlowStart(Entry):
    """The identity inverse, after work before its fit (its ``skip`` check) longer than the time limit."""

    name = "test-slow-start"
    description = "a slow check before fit, then a quick identity inverse"
    has_damping = False

    def skip(self, problem):
        import time

        time.sleep(SLOW_START_S)
        return None

    def fit(self, problem):
        self.fitted_ = True
        return self

    def inverse(self, vectors, damping=None):
        return vectors.to(torch.float64).clone()


@register
class AllocatesPastTheLimit(NaNInverse):
    name = "test-allocates"
    description = "allocates 64 GiB in fit"

    def fit(self, problem):
        self.hoard_ = torch.ones(2**33, dtype=torch.float64)
        return super().fit(problem)


@register
class ExitsItsProcess(NaNInverse):
    name = "test-exits"
    description = "ends its process in fit (os._exit)"

    def fit(self, problem):
        import os

        os._exit(3)
