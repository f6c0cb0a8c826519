"""What the per-entry asv benchmarks share, built once per run: digits-mlp's reference model, its
per-example gradients and training checkpoints, the smoke LDS ground truth, and the dense GGN, its
eigendecomposition and the dense Hessian.

asv runs ``OnDigits.setup_cache`` once per run for all the classes that inherit it (asv keys a
setup_cache by its source line), in a fresh directory, and then runs each of their benchmarks in a
process of its own in that directory. The reference model, its checkpoints and the smoke ground truth
come from influence_bench's cache (``$INFLUENCE_BENCH_CACHE``, trained there the first time: about a
minute); the gradients are computed here; all of it is written to the run's directory.

The dense matrices (16 s, 51 s and 83 s in a run on 2 cores; longer on the one thread here) are not
built in ``setup_cache``: it cannot see which benchmarks ``--bench`` selected, and a run of
``identity`` alone would pay for all three. The first benchmark that reads one builds it into the
run's directory (one process at a time, under a lock) in its setup, and every later one maps it from
there: a run computes each at most once, never inside a timed call. An entry gets what it declares in
``uses``, as in a run (``runner.shared``: shared work is timed apart, not charged to its readers).

Every benchmark built on this module runs on one thread (``pin_threads``: torch's, and the BLAS
libraries' of numpy and scipy), as each entry of a ``--jobs 2`` run on 2 cores does (cores // jobs).
That also keeps the numbers usable on a shared machine: with two threads and another process on one
of the 2 cores, every OpenMP barrier waits for the descheduled thread (measured here beside another
job: the batched engine's 64 models x 3 epochs took 5 to 20 s on two threads, 0.44 to 0.65 s on one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from influence_bench.problem import InfluenceProblem
from influence_bench.tasks import get_task

TASK = "digits-mlp"
PRESET = "smoke"  # 8 masks x 2 seeds, 3 epochs: cheap to build; a regression signal, not the leaderboard's LDS
DAMPING = 1e-4  # the fixed track's damping (PROTOCOL.md section 7)
ALPHA = 0.5

THREADS = 1  # threads of every benchmark process built on this module

MODEL_FILE = "model.pt"
GRADIENTS_FILE = "gradients.pt"
CHECKPOINTS_FILE = "checkpoints.pt"


def pin_threads(threads: int = THREADS) -> None:
    """torch, OpenMP and the BLAS libraries loaded (numpy's, scipy's: ``exact_ggn`` sums with scipy's
    syrk) on ``threads`` threads in this process."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


class OnDigits:
    """Base of the benchmarks that read digits-mlp's reference model: ``setup_cache`` (once per run)
    gives each of their methods ``cache``: the run's directory and the smoke ground truth at alpha 0.5."""

    timeout = 1800.0  # a whole benchmark process: setup (possibly a dense matrix's first build) and the calls

    def setup_cache(self) -> dict:
        from influence_bench.groundtruth import (build_lds_groundtruth, get_preset, reference_checkpoints,
                                                 reference_model)

        pin_threads()
        spec = get_task(TASK)
        model = reference_model(spec)
        problem = InfluenceProblem(model, spec.data, name=spec.key)
        torch.save(model.state_dict(), MODEL_FILE)
        torch.save({"train": problem.train_grads, "test": problem.test_grads}, GRADIENTS_FILE)
        reference_checkpoints(spec).save(CHECKPOINTS_FILE)
        gt = build_lds_groundtruth(spec, get_preset(PRESET), progress=False)
        a = int(np.argmin(np.abs(gt.alphas - ALPHA)))
        return {"dir": os.getcwd(), "masks": gt.masks[a], "targets": gt.targets[a]}  # [M, n_train], [M, n_test]

    setup_cache.timeout = 1800.0  # a cold influence_bench cache trains the reference model and the ground truth


def digits_problem(cache: dict) -> InfluenceProblem:
    """The reference model of digits-mlp as a problem, with the run's gradients (mapped, not copied).
    Pins this process to ``THREADS`` threads."""
    pin_threads()
    directory = Path(cache["dir"])
    spec = get_task(TASK)
    model = spec.make_model()
    model.load_state_dict(torch.load(directory / MODEL_FILE, weights_only=True))
    problem = InfluenceProblem(model, spec.data, name=spec.key)
    grads = torch.load(directory / GRADIENTS_FILE, weights_only=True, mmap=True)
    problem.set_gradients(grads["train"], grads["test"])
    return problem


def provide(problem: InfluenceProblem, entry, cache: dict) -> None:
    """Give the problem what the entry reads, as a run does: the training checkpoints, and the run's
    dense GGN with its eigendecomposition or dense Hessian (mapped from the run's directory)."""
    directory = Path(cache["dir"])
    if entry.needs_checkpoints:
        from influence_bench.groundtruth.reference import Checkpoints

        kept = Checkpoints.load(directory / CHECKPOINTS_FILE)
        problem.set_checkpoints(kept.models(get_task(TASK)), kept.learning_rates)
    if not problem.dense_allowed:
        return
    if "ggn" in entry.uses:
        problem.share("ggn", shared_dense(cache, "ggn"))
        eigen = shared_dense(cache, "ggn_eigen")
        problem.share_ggn_eigen(eigen["eigvals"], eigen["eigvecs"])
    if "hessian" in entry.uses:
        problem.share("hessian", shared_dense(cache, "hessian"))


SHARED_DENSE = ("ggn", "ggn_eigen", "hessian")


def _build(name: str, cache: dict):
    problem = digits_problem(cache)
    if name == "ggn":
        return problem.ggn
    if name == "ggn_eigen":
        problem.share("ggn", shared_dense(cache, "ggn"))  # built before this one's lock was taken
        block = problem.ggn_eigen.blocks[0]  # one dense block, eigenvalues ascending
        return {"eigvals": block.eigvals, "eigvecs": block.eigvecs}
    return problem.hessian


def shared_dense(cache: dict, name: str):
    """The run's ``ggn`` [P, P], ``ggn_eigen`` ({eigvals [P], eigvecs [P, P]}) or ``hessian`` [P, P],
    mapped from its file in the run's directory; the first caller of the run builds it there."""
    from influence_bench.groundtruth.cache import build_lock

    if name not in SHARED_DENSE:
        raise ValueError(f"no shared dense matrix {name!r}; shared: {', '.join(SHARED_DENSE)}")
    directory = Path(cache["dir"])
    path = directory / f"{name}.pt"
    if not path.exists():
        if name == "ggn_eigen":
            shared_dense(cache, "ggn")  # first, so that the lock (not reentrant) is never taken twice
        with build_lock(directory, f"the run's dense {name}"):
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                torch.save(_build(name, cache), tmp)
                tmp.replace(path)
    return torch.load(path, weights_only=True, mmap=True)


def reset_peak_memory() -> bool:
    """Start this process's resident-memory high-water mark afresh (Linux: ``/proc/self/clear_refs``
    resets VmHWM, which is also what ``getrusage`` reports as ru_maxrss and asv's peakmem reads).
    False where the system has no such reset (the peak then includes the setup's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
