"""Entries on the problem's device (``--device``).

No GPU here: the CPU tests check that every tensor the built-in entries, the metrics and the harness
create names its device (``testing.DeviceDiscipline``), on a dense and on an estimated problem, and
that a problem, its shared matrices and the reference go where they are asked. The CUDA test compares
a whole in-process run on the GPU with the same run on the CPU; it skips without CUDA.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from influence_bench.entries import ENTRIES, Entry, get_entry, make_entry
from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.metrics.reference import GGNReference
from influence_bench.problem import InfluenceProblem
from influence_bench.runner.evaluation import EvalSettings, evaluate_entry
from influence_bench.runner.shared import prepare_shared, shared_needs
from influence_bench.testing import DeviceDiscipline, tiny_problem

DAMPING, EPS = 1e-3, 1e-8


def _setup(dense_limit: int | None):
    problem = copy.copy(tiny_problem())
    if dense_limit is not None:
        problem.dense_limit = dense_limit  # every dense metric estimated, the dense entries skipped
    with DeviceDiscipline() as found:  # the gradients, the shared dense GGN and Hessian, the reference
        _ = problem.train_grads, problem.test_grads
        reference, _, _ = prepare_shared(problem, DAMPING, EPS, shared_needs([type(make_entry(n)) for n in ENTRIES]))
    assert found.calls == {}, f"the shared work creates tensors on the default device at {found.calls}"
    rng = np.random.default_rng(0)
    masks = rng.random((2, 12, problem.n_train)) < 0.5
    gt = LDSGroundTruth(np.array([0.5, 0.7]), masks, rng.normal(size=(2, 12, 2, problem.n_test)).astype(np.float32))
    return problem, reference, gt


@pytest.fixture(scope="module")
def dense_setup():
    return _setup(None)


@pytest.fixture(scope="module")
def estimated_setup():
    return _setup(10)


def _entry(name: str) -> Entry:
    """The entry, LiSSA at depth 10: the same code path; its 300 steps cost minutes under the recording mode."""
    return get_entry("lissa")(depth=10) if name == "lissa" else make_entry(name)


# above the dense limit the metrics take their estimated paths (Lanczos, Hutchinson); one entry of each
# kind of curvature goes through them: Kronecker eigen, diagonal, low-rank eigen, operator only, inverse only
ESTIMATED = ("kfac", "diag-ggn", "arnoldi", "cg", "trak")


@pytest.mark.parametrize(("which", "name"), [("dense", n) for n in ENTRIES] + [("estimated", n) for n in ESTIMATED])
def test_every_tensor_an_evaluation_creates_names_its_device(name, which, request, monkeypatch):
    """The whole evaluation of each built-in entry (fit, both damping tracks, the metrics): a factory call
    without a device in this package would put a CPU tensor beside the GPU problem."""
    from influence_bench.runner import evaluation

    monkeypatch.setattr(evaluation, "GRID_FACTORS", (0.1, 1.0))  # two tuned dampings: the same calls, fewer
    problem, reference, gt = request.getfixturevalue(f"{which}_setup")
    with DeviceDiscipline() as found:
        result = evaluate_entry(_entry(name), problem, gt, EvalSettings(DAMPING, EPS),
                                lambda: reference, isolated=False)
    assert result.status in ("ok", "skipped"), result.message
    assert found.calls == {}, f"{name} creates tensors on the default device at {found.calls}"


class DeviceLess(Entry):
    """Its inverse builds its output with torch.zeros and no device: what the discipline check is for."""

    name = "device-less"
    capabilities = frozenset({"inverse"})

    def fit(self, problem):
        self.fitted_ = True
        return self

    def inverse(self, vectors, damping=None):
        out = torch.zeros(vectors.shape, dtype=vectors.dtype)
        return out.add_(vectors)


def test_the_discipline_check_finds_a_device_less_factory_call():
    problem = tiny_problem()
    with DeviceDiscipline(("tests",)) as found:
        DeviceLess().fit(problem).scores(problem, 1e-3)
    assert list(found.calls.values()) == ["zeros"]
    assert next(iter(found.calls)).startswith("tests/test_device.py:")


def test_running_out_of_gpu_memory_is_an_oom_row_with_gpu_advice():
    from influence_bench.runner.evaluation import failed_with

    row = failed_with("big", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert row.status == "oom" and "GPU" in row.message and "--entry-memory" not in row.message
    assert "--entry-memory" in failed_with("big", MemoryError("cannot allocate")).message


def test_a_problem_keeps_its_tensors_on_its_device():
    base = tiny_problem()
    problem = InfluenceProblem(base.model, _data(base), device="cpu")
    assert problem.device == torch.device("cpu")
    assert {t.device for t in (problem.x_train, problem.y_train, problem.x_test, problem.train_grads)} == {problem.device}
    problem.set_gradients(base.train_grads.float(), base.test_grads.float())
    assert problem.train_grads.dtype == torch.float64 and problem.train_grads.device == problem.device
    problem.share("ggn", base.ggn)
    assert problem.ggn.data_ptr() == base.ggn.data_ptr()  # on the same device: the shared matrix itself, no copy


def _data(problem):
    from influence_bench.tasks.spec import TaskData

    return TaskData(problem.x_train.float(), problem.y_train, problem.x_test.float(), problem.y_test)


def test_a_saved_reference_loads_onto_the_device_asked_for(dense_setup, tmp_path):
    _, reference, _ = dense_setup
    reference.save(tmp_path / "reference.pt")
    loaded = GGNReference.load(tmp_path / "reference.pt", device="cpu")
    assert torch.equal(loaded.ihvp, reference.ihvp) and torch.equal(loaded.ggn, reference.ggn)
    assert all(torch.equal(a, b) for a, b in zip(loaded.layer_eigvals, reference.layer_eigvals))
    with pytest.raises(RuntimeError):
        GGNReference.load(tmp_path / "reference.pt", device="not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CUDA path is untested without one)")
def test_a_smoke_run_on_the_gpu_gives_the_scores_of_the_cpu(tmp_path):
    import influence_bench

    entries = list(ENTRIES)
    runs = {device: influence_bench.run("digits-mlp", entries, "smoke", isolate=False, cache_dir=tmp_path,
                                        device=device, progress=False, loo=False) for device in ("cpu", "cuda")}
    for cpu, gpu in zip(runs["cpu"].entries, runs["cuda"].entries):
        assert gpu.status == cpu.status, (gpu.name, gpu.message)
        if cpu.ok:
            scale = np.abs(cpu.scores_fixed).max()
            np.testing.assert_allclose(gpu.scores_fixed, cpu.scores_fixed, rtol=1e-5, atol=1e-8 * scale, err_msg=cpu.name)
    peaks = runs["cuda"].table.query("metric == 'gpu_peak_mb'")
    assert len(peaks) == sum(r.ok for r in runs["cuda"].entries) and (peaks.value > 0).all()
