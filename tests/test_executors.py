"""Where the ground truth trains: worker processes on this machine, or Ray tasks; the same losses either way."""

import shutil
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from influence_bench.cli import app
from influence_bench.groundtruth import build_lds_groundtruth, build_loo_groundtruth, get_preset, groundtruth_dir
from influence_bench.groundtruth.loo import loo_dir
from influence_bench.groundtruth.executors import LocalExecutor, RayExecutor, RayUnavailableError, get_executor
from influence_bench.tasks import get_task
from influence_bench.training import parallel, train_batched

from conftest import random_members, short_recipe

SMOKE = get_preset("smoke")


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn"])  # the MLP fast path and the generic engine
def test_models_split_over_worker_processes_are_the_same_models(task):
    """Bit for bit on the MLP path (one matrix product per model whatever the stack); within float
    tolerance on the generic one (the convolution kernel chosen depends on the stack's size)."""
    spec = get_task(task)
    members = random_members(5, spec.data.n_train, spec.data.n_train // 2)
    seeds = [3, 1, 4, 1, 5]
    together = train_batched(spec, spec.data, members, seeds, short_recipe(spec, 1), workers=1)
    done = []  # two workers, as the Ray test's local build: one pool for the module
    split = train_batched(spec, spec.data, members, seeds, short_recipe(spec, 1), workers=2, on_epoch=done.append)
    assert type(split) is type(together)
    for a, b in zip(together.parameters(), split.parameters()):
        if task == "digits-mlp":
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert done == [2.0, 3.0]  # progress in models, as each group finished, in order


def test_groups_cover_the_stack_once_in_order():
    assert parallel.groups(10, 3) == [slice(0, 3), slice(3, 7), slice(7, 10)]
    assert parallel.groups(2, 8) == [slice(0, 1), slice(1, 2)]  # never an empty group


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(parallel.WORKERS_ENV, "3")
    assert parallel.default_workers() == 3
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    with pytest.raises(ValueError, match="1 or more"):
        parallel.default_workers()
    monkeypatch.delenv(parallel.WORKERS_ENV)
    assert parallel.default_workers() == parallel.available_cores()
    assert parallel.default_workers("cuda") == 1


def test_ray_build_equals_the_local_build_and_finishes_a_local_one(digits, tmp_path):
    """A smoke LDS ground truth built by Ray tasks on a local two-worker cluster equals the local
    executor's bit for bit, in the same checksummed files; and a leave-one-out build that the local
    executor left half done is finished by Ray with the same losses."""
    pytest.importorskip("ray")
    import ray

    local_cache, ray_cache = tmp_path / "local", tmp_path / "ray"
    local = build_lds_groundtruth(digits, SMOKE, local_cache, progress=False, executor=LocalExecutor(2))
    local_loo = build_loo_groundtruth(digits, SMOKE, local_cache, progress=False, executor=LocalExecutor(1))
    loo_files = sorted(loo_dir(digits, SMOKE, local_cache).rglob("*.npz"))
    shutil.copytree(loo_dir(digits, SMOKE, local_cache), loo_dir(digits, SMOKE, ray_cache))
    for path in loo_files[::2]:  # half the chunks lost (the full-data models among them): Ray trains those
        (loo_dir(digits, SMOKE, ray_cache) / path.relative_to(loo_dir(digits, SMOKE, local_cache))).unlink()
    try:
        executor = RayExecutor(num_cpus=2)
        built = build_lds_groundtruth(digits, SMOKE, ray_cache, progress=False, executor=executor)
        assert ray.cluster_resources()["CPU"] == 2
        finished_loo = build_loo_groundtruth(digits, SMOKE, ray_cache, progress=False, executor=executor)
    finally:
        ray.shutdown()
    assert np.array_equal(built.losses, local.losses) and np.array_equal(built.masks, local.masks)
    assert np.array_equal(finished_loo.losses_without, local_loo.losses_without)
    assert np.array_equal(finished_loo.losses_full, local_loo.losses_full)
    for path in groundtruth_dir(digits, SMOKE, local_cache).rglob("*.npz"):  # the same files, with checksums
        twin = groundtruth_dir(digits, SMOKE, ray_cache) / path.relative_to(groundtruth_dir(digits, SMOKE, local_cache))
        assert twin.with_suffix(".npz.sha256").exists()
        assert np.array_equal(np.load(twin)["losses"], np.load(path)["losses"])


def test_ray_missing_says_how_to_install_it(monkeypatch, cache_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        get_executor("ray")
    result = CliRunner().invoke(app, ["groundtruth", "--task", "digits-mlp", "--preset", "smoke", "--executor", "ray"])
    assert result.exit_code != 0 and "pip install -e '.[ray]'" in result.output
    assert not any(cache_dir.rglob("*.npz"))  # refused before any training


def test_unknown_executor_misplaced_address_and_bad_settings(monkeypatch):
    monkeypatch.setenv(parallel.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="not a whole number"):  # before any work, not inside a build
        get_executor("local")
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    with pytest.raises(ValueError, match="local, ray"):
        get_executor("slurm")
    with pytest.raises(ValueError, match="--address is for --executor ray"):
        get_executor("local", address="ray://head:10001")


def test_the_compiled_step_trains_the_same_models_to_float_rounding():
    """torch.compile fuses the step's elementwise work: the same SGD steps, under a schedule too (the rate
    is a tensor, so no epoch recompiles), to float rounding."""
    import dataclasses

    spec = get_task("diabetes-mlp")
    members = random_members(3, spec.data.n_train, spec.data.n_train // 2)
    recipe = dataclasses.replace(short_recipe(spec, 3), schedule="cosine")
    eager = train_batched(spec, spec.data, members, [0, 1, 2], recipe)
    compiled = train_batched(spec, spec.data, members, [0, 1, 2], recipe, compile=True)
    moved = max(float((a - i.detach()).abs().max()) for a, i in zip(eager.parameters(), spec.init_model(0).parameters()))
    assert moved > 1e-3  # training moved the parameters, so agreeing below is not agreeing on the start
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compile_setting_from_the_environment(monkeypatch):
    from influence_bench.training.batched import COMPILE_ENV, default_compile

    monkeypatch.setenv(COMPILE_ENV, "1")
    assert default_compile("cuda") is True
    monkeypatch.setenv(COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="use 0 or 1"):
        default_compile()
    monkeypatch.delenv(COMPILE_ENV)
    assert default_compile("cpu") is True and default_compile("cuda") is False
