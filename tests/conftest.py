import dataclasses

import pytest
import torch

from influence_bench.tasks import get_task


@pytest.fixture(scope="session")
def digits():
    return get_task("digits-mlp")


@pytest.fixture(scope="session")
def digits_data(digits):
    return digits.data


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty cache, also through the environment variable."""
    path = tmp_path / "cache"
    monkeypatch.setenv("INFLUENCE_BENCH_CACHE", str(path))
    return path


def short_recipe(spec, epochs=3):
    return dataclasses.replace(spec.recipe, epochs=epochs)


def random_members(n_models, n_train, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    members = torch.zeros(n_models, n_train, dtype=torch.bool)
    for b in range(n_models):
        members[b, torch.randperm(n_train, generator=g)[:size]] = True
    return members


@pytest.fixture(scope="session")
def tiny_problem():
    """digits with a 64-6-5-10 MLP (485 parameters): small enough for dense references."""
    from influence_bench.entries.checks import tiny_problem

    return tiny_problem()
