import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

from influence_bench.entries import ENTRIES
from influence_bench.tasks import TASK_VERSIONS, TASKS, get_task

TESTS = Path(__file__).resolve().parent
# the registries as the package fills them, before any test module (or plugin) is imported
PACKAGE_ENTRIES, PACKAGE_TASKS = dict(ENTRIES), dict(TASKS)


@contextlib.contextmanager
def restored_registries():
    """``ENTRIES``, ``TASKS`` and ``sys.path`` as they were before, and the helper modules of this folder imported
    meanwhile (``bench_plugins``) forgotten, so that the next import registers their entries and tasks again."""
    entries, tasks, versions, modules = dict(ENTRIES), dict(TASKS), dict(TASK_VERSIONS), set(sys.modules)
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path  # a plugin folder put there (one holds a json.py) must not reach later tests' workers
        ENTRIES.clear()
        ENTRIES.update(entries)
        TASKS.clear()
        TASKS.update(tasks)
        TASK_VERSIONS.clear()
        TASK_VERSIONS.update(versions)
        for name in set(sys.modules) - modules:
            path = getattr(sys.modules[name], "__file__", None)
            if path and Path(path).resolve().parent == TESTS:
                del sys.modules[name]


@pytest.fixture(autouse=True, scope="module")
def _module_registries():
    """What a module's fixtures register (test_run.py's plugins) lasts for that module only."""
    with restored_registries():
        yield


@pytest.fixture(autouse=True)
def _test_registries():
    """What a test registers, it removes: the tests run in any order (pytest-randomly shuffles them)."""
    with restored_registries():
        yield


@pytest.fixture(autouse=True, scope="session")
def _own_default_cache(tmp_path_factory):
    """No test reads or writes the user's cache: the default cache is the session's own, empty at the start.
    Ground truths train in the test's own process (one worker), uncompiled: the tests of
    ``training.parallel``, ``groundtruth.executors`` and the compiled step turn them on where they check them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLUENCE_BENCH_CACHE", str(tmp_path_factory.mktemp("default-cache")))
        mp.setenv("INFLUENCE_BENCH_WORKERS", "1")
        mp.setenv("INFLUENCE_BENCH_COMPILE", "0")
        yield


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


@contextlib.contextmanager
def tiny_task_environment(root: Path):
    """The tiny plugin task (tests/bench_plugins.py) registered here and importable in every entry's process,
    a cache of its own under ``root``, and one torch thread here and in every entry's process: the tiny task's
    products are small, and on a shared 2-core machine a second intra-op thread only waits for a core."""
    import bench_plugins  # noqa: F401 - registers the tiny task (and the misbehaving entries) here too
    from influence_bench.runner.isolation import THREADS_ENV

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
            mp.setenv("INFLUENCE_BENCH_CACHE", str(root / "cache"))
            mp.setenv(THREADS_ENV, "1")
            yield root
    finally:
        torch.set_num_threads(threads)


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
    from influence_bench.testing import tiny_problem

    return tiny_problem()
