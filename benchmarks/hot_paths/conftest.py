"""Fixtures of the hot-path benchmarks: digits-mlp's data and architecture at small sizes, with
untrained (seeded) weights: the cost of these paths does not depend on the weights' values.

Everything runs on one thread (torch, OpenMP and the BLAS libraries): a gate must not move with
what else runs on the machine, and on a busy 2-core machine two threads wait on each other at every
OpenMP barrier (the batched engine was 8 to 46 times slower here on two threads beside another job).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from threadpoolctl import threadpool_limits

from influence_bench.problem import InfluenceProblem
from influence_bench.tasks.models import MLP
from influence_bench.tasks import get_task
from influence_bench.tasks.spec import TaskData

THREADS = 1
N_TRAIN = 256  # training points of the small problems
N_TEST = 64  # test points (the batch of vectors the inverses are applied to)
SMALL_LAYERS = (64, 32, 10)  # the small MLP: P = 2,410 (digits-mlp's 64-64-32-10 has P = 6,570)


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    threadpool_limits(THREADS)


@pytest.fixture(scope="session")
def digits_mlp():
    """The digits-mlp task spec (its data loads on first use)."""
    return get_task("digits-mlp")


def subset(data: TaskData, n_train: int, n_test: int) -> TaskData:
    return TaskData(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test])


@pytest.fixture(scope="session")
def digits_problem(digits_mlp) -> InfluenceProblem:
    """digits-mlp's architecture (P = 6,570) with seed-0 weights on all its data (1,617 training points)."""
    return InfluenceProblem(digits_mlp.init_model(0), digits_mlp.data, name="digits-mlp-untrained")


@pytest.fixture(scope="session")
def small_problem(digits_mlp) -> InfluenceProblem:
    """A small MLP on digits (64-32-10, P = 2,410), seed-0 weights, 256 training and 64 test points."""
    spec = dataclasses.replace(digits_mlp, model=MLP(SMALL_LAYERS))
    return InfluenceProblem(spec.init_model(0), subset(digits_mlp.data, N_TRAIN, N_TEST), name="digits-small-mlp")
