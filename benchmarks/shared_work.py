"""What a run does once, not per entry: the batched retraining engine (what the LDS ground truth is
made of) and the dense exact GGN of digits-mlp (the fidelity reference and the dense entries' input).
Absolute times on one thread (``digits_problem.pin_threads``); the ratios against a baseline, on
the default threads, are in ``benchmarks.py``."""

from __future__ import annotations

from influence_bench.curvature.exact import exact_ggn
from influence_bench.tasks import get_task
from influence_bench.training import train_batched

from .benchmarks import half_data_members
from .digits_problem import TASK, OnDigits, digits_problem, pin_threads, reset_peak_memory

N_MODELS = 64  # half-data models trained together
EPOCHS = 3  # the smoke preset's recipe length (the full recipe is 100)


class BatchedRetraining:
    """The batched engine training 64 half-data models of digits-mlp together for 3 epochs (SGD with
    momentum, batch 32: 75 steps, each a batched forward and backward of all 64 models)."""

    timeout = 300.0

    def setup(self):
        pin_threads()
        self.spec = get_task(TASK)
        self.recipe = self.spec.recipe.with_epochs(EPOCHS)
        self.members = half_data_members(N_MODELS, self.spec.data.n_train)

    def time_64_half_data_models_3_epochs(self):
        train_batched(self.spec, self.spec.data, self.members, list(range(N_MODELS)), recipe=self.recipe)


class ExactGGN(OnDigits):
    """The dense exact GGN of digits-mlp's reference model, [P, P] = [6570, 6570] float64 (345 MB), from
    stacked per-example Jacobians and BLAS syrk (``curvature.exact.exact_ggn``)."""

    processes = 1
    number = 1
    warmup_time = 0.0
    repeat = (1, 3, 60.0)

    def setup(self, cache):
        problem = digits_problem(cache)
        self.model, self.x_train = problem.model, problem.x_train
        reset_peak_memory()

    def time_exact_ggn(self, cache):
        exact_ggn(self.model, self.x_train, "cross-entropy")

    def peakmem_exact_ggn(self, cache):
        """The process's peak resident memory over the build (bytes), counted from the end of setup (see
        ``entries.EntryFit.peakmem_fit``): the interpreter, torch and the problem, then the matrix
        itself and the Jacobian chunks it is summed from."""
        exact_ggn(self.model, self.x_train, "cross-entropy")
