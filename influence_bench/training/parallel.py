"""The batched engine on every core: one single-threaded worker process per core, each training a
contiguous group of the models.

Intra-op threads help the engine little: its matrices are small (digits-mlp: a [32, 64] batch times a
[64, 64] weight per model), so two threads on two cores trained 256 half-data models only 1.5x faster
than one, and under load, when a thread waits for a core, far slower. Models of one stack never interact
(each has its own subset, seed, generator and parameters), so splitting the stack into groups and
training each group in its own process changes no model: ``train_batched(workers=W)`` gives every
model the parameters ``train_batched(workers=1)`` gives it (tests/test_executors.py).

The workers live in one persistent pool of spawned processes, so a ground-truth build pays their
start-up (importing torch: a few seconds) once, not per chunk.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

WORKERS_ENV = "INFLUENCE_BENCH_WORKERS"

_pool: tuple[int, ProcessPoolExecutor] | None = None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str | torch.device = "cpu") -> int:
    """``$INFLUENCE_BENCH_WORKERS``, else one per available core on the CPU; one on a GPU (the device
    is the parallelism there)."""
    if os.environ.get(WORKERS_ENV):
        try:
            workers = int(os.environ[WORKERS_ENV])
        except ValueError:
            raise ValueError(f"${WORKERS_ENV}={os.environ[WORKERS_ENV]!r} is not a whole number of worker processes") from None
        if workers < 1:
            raise ValueError(f"${WORKERS_ENV}={workers}: use 1 or more worker processes")
        return workers
    return available_cores() if torch.device(device).type == "cpu" else 1


def _single_threaded() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The persistent pool of ``workers`` single-threaded processes (a new one when the count changes,
    or after a worker died)."""
    global _pool
    if _pool is not None and (_pool[0] != workers or getattr(_pool[1], "_broken", False)):
        _pool[1].shutdown(wait=False, cancel_futures=True)
        _pool = None
    if _pool is None:
        # spawn, not forkserver: the forkserver is one per process and the entry runner's (runner.isolation)
        # must start with the environment of its own run, not with the one of an earlier ground-truth build
        context = multiprocessing.get_context("spawn")
        _pool = (workers, ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded))
    return _pool[1]


def shutdown_pool() -> None:
    global _pool
    if _pool is not None:
        _pool[1].shutdown(wait=True, cancel_futures=True)
        _pool = None


def groups(n_models: int, workers: int) -> list[slice]:
    """Contiguous, nearly equal groups of the stack's rows, one per worker (fewer if fewer models)."""
    workers = max(1, min(workers, n_models))
    bounds = [round(i * n_models / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def picklable(*objects) -> str | None:
    """Why these objects cannot go to a worker process (None when they can)."""
    try:
        pickle.dumps(objects)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: train in this process
        return f"{type(exc).__name__}: {exc}"
    return None


def _train_group(spec, data, members, seeds, recipe, device, engine, compile):
    """In a worker: train one group; returns its stack's tensors (a stack holds a meta-device template,
    which does not cross processes)."""
    from influence_bench.training.batched import StackedMLP, train_batched

    stack = train_batched(spec, data, members, seeds, recipe, device, engine=engine, compile=compile)
    if isinstance(stack, StackedMLP):
        return "mlp", stack.weights, stack.biases
    return "generic", stack.params, stack.buffers


def merge(spec, parts: list[tuple]):
    """One stack from the groups' tensors, in group order."""
    from influence_bench.training.batched import StackedMLP
    from influence_bench.training.engine import StackedModule

    kind = parts[0][0]
    if kind == "mlp":
        weights = [torch.cat([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]
        biases = [torch.cat([p[2][i] for p in parts]) for i in range(len(parts[0][2]))]
        return StackedMLP(weights, biases, spec.model.activation, spec.loss)
    params = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
    buffers = {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
    return StackedModule(spec.make_model().to("meta"), params, buffers, spec.loss)


def train_in_workers(spec, data, members: torch.Tensor, seeds: list[int], recipe, device, engine: str,
                     workers: int, on_done: Callable[[float], None] | None = None, compile: bool = False):
    """``train_batched`` with the stack's rows split over ``workers`` processes; ``on_done(models)``
    as each group finishes."""
    parts = groups(len(seeds), workers)
    pool = worker_pool(workers)
    futures = [pool.submit(_train_group, spec, data, members[g], seeds[g], recipe, device, engine, compile) for g in parts]
    results = []
    for future, g in zip(futures, parts):
        results.append(future.result())
        if on_done is not None:
            on_done(float(g.stop - g.start))
    return merge(spec, results)
