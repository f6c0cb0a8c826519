"""asv benchmarks. Performance claims are ratios against a baseline measured in the same run.

Run: ``asv run --python=same --quick --show-stderr --bench Speedup`` (see README).
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from influence_bench.tasks import get_task
from influence_bench.training import train_batched, train_single

N_BATCHED = 256  # half-data models trained together
N_PLAIN = 4  # plain-loop models timed for the baseline (its throughput does not depend on how many)


def half_data_members(n_models: int, n_train: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    members = torch.zeros(n_models, n_train, dtype=torch.bool)
    for b in range(n_models):
        members[b, torch.randperm(n_train, generator=g)[: n_train // 2]] = True
    return members


def models_per_second_plain(spec, data, members: torch.Tensor) -> float:
    start = time.perf_counter()
    for b in range(members.shape[0]):
        train_single(spec, data, members[b], seed=b)
    return members.shape[0] / (time.perf_counter() - start)


def models_per_second_batched(spec, data, members: torch.Tensor, recipe=None, engine: str = "auto") -> float:
    start = time.perf_counter()
    train_batched(spec, data, members, list(range(members.shape[0])), recipe, engine=engine)
    return members.shape[0] / (time.perf_counter() - start)


ENGINE_TASKS = ("digits-mlp", "digits-logreg", "digits-cnn", "diabetes-mlp", "digits-mlp-noisy", "wide-mlp")
ENGINE_EPOCHS = 2  # throughput does not depend on the epoch count; the ratios are of models per second
N_ENGINE = 100  # half-data models per batched call


class EngineThroughput:
    """Per task, in one run: the generic torch.func engine's throughput over the plain single-model loop, and
    the hand-written MLP fast path's over the generic engine (NaN where the task is no GELU MLP). The fast path
    is kept only while its ratio is above 1."""

    timeout = 1800
    number = 1
    repeat = 1
    params = ENGINE_TASKS
    param_names = ["task"]

    def setup(self, task):
        import dataclasses

        self.spec = get_task(task)
        self.data = self.spec.data
        self.recipe = dataclasses.replace(self.spec.recipe, epochs=ENGINE_EPOCHS)
        self.members = half_data_members(N_ENGINE, self.data.n_train)

    def _plain(self) -> float:
        start = time.perf_counter()
        for b in range(N_PLAIN):
            train_single(self.spec, self.data, self.members[b], seed=b, recipe=self.recipe)
        return N_PLAIN / (time.perf_counter() - start)

    def track_generic_over_plain_loop(self, task):
        plain = self._plain()
        generic = models_per_second_batched(self.spec, self.data, self.members, self.recipe, "generic")
        print(f"{task}: plain loop {plain:.2f} models/s, generic engine {generic:.2f} models/s")
        return generic / plain

    track_generic_over_plain_loop.unit = "x"

    def track_fast_path_over_generic(self, task):
        from influence_bench.training.batched import fast_path_reason

        if fast_path_reason(self.spec):
            return float("nan")
        generic = models_per_second_batched(self.spec, self.data, self.members, self.recipe, "generic")
        fast = models_per_second_batched(self.spec, self.data, self.members, self.recipe, "mlp")
        print(f"{task}: generic engine {generic:.2f} models/s, MLP fast path {fast:.2f} models/s")
        return fast / generic

    track_fast_path_over_generic.unit = "x"


class SpeedupBatchedTraining:
    """Throughput (models per second, full 100-epoch recipe) of the batched engine over the plain loop."""

    timeout = 1200
    number = 1
    repeat = 1
    unit = "x"

    def setup(self):
        self.spec = get_task("digits-mlp")
        self.data = self.spec.data
        self.members = half_data_members(N_BATCHED, self.data.n_train)

    def track_speedup_256_half_data_models(self):
        plain = models_per_second_plain(self.spec, self.data, self.members[:N_PLAIN])
        batched = models_per_second_batched(self.spec, self.data, self.members)
        print(f"plain loop {plain:.3f} models/s, batched {batched:.3f} models/s, ratio {batched / plain:.1f}x")
        return batched / plain

    track_speedup_256_half_data_models.unit = "x"


N_ENGINE_EPOCHS = 10  # the 100-epoch recipe cut to 10: throughput per step does not depend on the count


def training_flops(spec, data, recipe, n_models: int) -> float:
    """Floating-point operations of the matrix products of training ``n_models`` models with ``recipe``:
    one step counted by ``torch.utils.flop_counter`` (forward and backward products; the elementwise work
    is not counted), times the steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from influence_bench.training.batch_order import n_steps_per_epoch
    from influence_bench.training.batched import initial_stack

    stack = initial_stack(spec, list(range(n_models)))
    idx = torch.randint(data.n_train, (n_models, recipe.batch_size), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        stack.mean_loss_gradients(data.x_train[idx], data.y_train[idx])
    steps = n_steps_per_epoch(data.n_train // 2, recipe.batch_size, recipe.drop_last) * recipe.epochs
    return float(counter.get_total_flops()) * steps


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's measured matrix-multiply rate (FLOP/s): float32 [size, size] products on every
    thread torch uses, best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class SpeedupEngine:
    """256 half-data digits-mlp models (the recipe at 10 epochs), side by side in one run: the engine as it
    was (one process, torch's intra-op threads, eager steps) against the engine as ground truths now run it
    (one single-threaded worker process per core, each step compiled by torch.compile). Both give every
    model the same parameters (to float rounding: tests/test_executors.py). The output gives each one's
    achieved FLOP/s of its matrix products against this machine's measured matrix-multiply peak."""

    timeout = 1800
    number = 1
    repeat = 1

    def setup(self):
        import dataclasses

        from influence_bench.training import parallel

        self.spec = get_task("digits-mlp")
        self.data = self.spec.data
        self.recipe = dataclasses.replace(self.spec.recipe, epochs=N_ENGINE_EPOCHS)
        self.members = half_data_members(N_BATCHED, self.data.n_train)
        self.workers = parallel.default_workers()
        warm = dataclasses.replace(self.recipe, epochs=1)  # the pool started and each worker's step compiled
        train_batched(self.spec, self.data, self.members, list(range(N_BATCHED)), warm, workers=self.workers, compile=True)

    def _seconds(self, **engine) -> float:
        start = time.perf_counter()
        train_batched(self.spec, self.data, self.members, list(range(N_BATCHED)), self.recipe, **engine)
        return time.perf_counter() - start

    def track_workers_compiled_over_threads(self):
        threads = self._seconds(workers=1, compile=False)
        workers = self._seconds(workers=self.workers, compile=True)
        flops, peak = training_flops(self.spec, self.data, self.recipe, N_BATCHED), matmul_peak_flops()
        for name, seconds in (("one process, threads, eager", threads),
                              (f"{self.workers} worker processes, compiled", workers)):
            print(f"{name}: {seconds:.2f} s, {N_BATCHED / seconds:.1f} models/s, {flops / seconds / 1e9:.1f} GFLOP/s "
                  f"= {flops / seconds / peak:.1%} of the measured matmul peak {peak / 1e9:.1f} GFLOP/s")
        print(f"ratio {threads / workers:.2f}x ({torch.get_num_threads()} intra-op threads against {self.workers} workers)")
        return threads / workers

    track_workers_compiled_over_threads.unit = "x"

    def track_workers_fraction_of_matmul_peak(self):
        seconds = self._seconds(workers=self.workers, compile=True)
        return training_flops(self.spec, self.data, self.recipe, N_BATCHED) / seconds / matmul_peak_flops()

    track_workers_fraction_of_matmul_peak.unit = "fraction"


def digits_problem():
    """The cached reference model of digits-mlp as an influence problem."""
    from influence_bench.groundtruth import reference_model
    from influence_bench.problem import InfluenceProblem

    spec = get_task("digits-mlp")
    return InfluenceProblem(reference_model(spec), spec.data)


class SpeedupExactGGN:
    """Dense exact GGN of digits-mlp from stacked Jacobians vs curvlinops' GGNLinearOperator @ I."""

    timeout = 3600
    number = 1
    repeat = 1

    def setup(self):
        self.problem = digits_problem()

    def track_speedup_over_curvlinops(self):
        from influence_bench.curvature import curvlinops_adapter
        from influence_bench.curvature.exact import exact_ggn

        p = self.problem
        start = time.perf_counter()
        ours = exact_ggn(p.model, p.x_train, p.loss)
        t_ours = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            op = curvlinops_adapter.ggn_operator(p.model, p.x_train, p.y_train, p.loss)
            start = time.perf_counter()
            theirs = op @ torch.eye(p.n_params, dtype=torch.float64)
            t_theirs = time.perf_counter() - start
        rel = float(torch.linalg.norm(ours - theirs) / torch.linalg.norm(theirs))
        print(f"exact_ggn {t_ours:.1f} s, curvlinops GGN @ I {t_theirs:.1f} s, "
              f"ratio {t_theirs / t_ours:.1f}x, relative difference {rel:.1e}")
        return t_theirs / t_ours

    track_speedup_over_curvlinops.unit = "x"


class SpeedupSharedKrylovCG:
    """The ``cg`` entry over a tuned-damping grid (10 dampings, 16 test gradients of digits-mlp, 20
    iterations each): one Lanczos run per vector shared by all dampings (``solver="lanczos"``) vs
    curvlinops' CG run anew for every damping (``solver="curvlinops"``); the same CG iterates."""

    timeout = 3600
    number = 1
    repeat = 1

    def setup(self):
        self.problem = digits_problem()
        self.rows = self.problem.test_grads[:16]
        self.dampings = [1e-4 * 10 ** (k / 2) for k in range(10)]

    def _solve_all(self, solver: str) -> tuple[float, torch.Tensor]:
        from influence_bench.entries import get_entry

        entry = get_entry("cg")(max_iter=20, tol=1e-30, solver=solver).fit(self.problem)
        start = time.perf_counter()
        out = torch.stack([entry.inverse(self.rows, d) for d in self.dampings])
        return time.perf_counter() - start, out

    def track_speedup_over_curvlinops_cg(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_shared, shared = self._solve_all("lanczos")
            t_separate, separate = self._solve_all("curvlinops")
        rel = float(torch.linalg.norm(shared - separate) / torch.linalg.norm(separate))
        print(f"shared Lanczos {t_shared:.1f} s, curvlinops CG per damping {t_separate:.1f} s, "
              f"ratio {t_separate / t_shared:.1f}x, relative difference of the iterates {rel:.1e}")
        return t_separate / t_shared

    track_speedup_over_curvlinops_cg.unit = "x"
