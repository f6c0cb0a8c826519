"""Where the chunks of a ground truth are trained: on this machine, or as tasks of a Ray cluster.

A chunk is a group of retrainings (whole masks, or whole removed points, with every seed) whose test
losses are one file of the ground truth's cache. Builders (``groundtruth.lds``, ``groundtruth.loo``)
list the chunks still missing and hand them to an executor; each finished chunk comes back to the
builder, which saves it through the same checksummed, atomic ``ArtifactStore`` whatever the executor.
So a build started with one executor can be finished with another, and a chunk lost with its worker
costs only that chunk (Ray retries it; a killed local build resumes from the cache).

- ``LocalExecutor``: one chunk at a time, its models split over one single-threaded worker process per
  core (``training.parallel``).
- ``RayExecutor``: one Ray task per chunk (``cpus_per_task`` cores, and ``gpus_per_task`` GPUs when the
  device is cuda), on the cluster at ``address`` or on a local one it starts. Ray is the optional
  extra ``pip install -e '.[ray]'``.

Every model's parameters depend only on its subset, its seed and the recipe, so both executors give
the same losses bit for bit (tests/test_executors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe

EXECUTORS = ("local", "ray")
# a worker compiles its step only for at least this many model-epochs: compiling takes 10-25 s here, which
# a standard chunk (250 models x 100 epochs per worker) repays and a smoke chunk (4 x 3) does not
COMPILE_MIN_MODEL_EPOCHS = 2000
RAY_INSTALL = "pip install -e '.[ray]'  (or: pip install 'influence-bench[ray]')"


@dataclass
class Chunk:
    """One cache file's worth of retrainings: ``members`` [n_rows * n_seeds, n_train], row-major and
    seed-minor; ``arrays`` are saved beside its losses (the masks or removed points, the seeds);
    ``place`` is where the builder puts its losses (executors pass it through untouched)."""

    name: str
    members: torch.Tensor
    n_rows: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    place: object = None

    def n_models(self, n_seeds: int) -> int:
        return self.n_rows * n_seeds


@dataclass(frozen=True)
class Work:
    """What every chunk of one build shares."""

    spec: TaskSpec
    data: TaskData
    recipe: TrainingRecipe
    seeds: tuple[int, ...]
    device: str = "cpu"


def train_chunk(work: Work, chunk_members: torch.Tensor, n_rows: int, workers: int = 1,
                on_epoch: Callable[[float], None] | None = None, compile: bool = False) -> np.ndarray:
    """The chunk's test losses [n_rows, n_seeds, n_test] float32; ``compile`` where each worker trains
    at least ``COMPILE_MIN_MODEL_EPOCHS`` model-epochs."""
    from influence_bench.groundtruth.lds import stack_test_losses
    from influence_bench.training.batched import train_batched

    seeds = list(work.seeds) * n_rows
    compile = compile and len(seeds) * work.recipe.epochs >= COMPILE_MIN_MODEL_EPOCHS * workers
    stack = train_batched(work.spec, work.data, chunk_members, seeds, work.recipe, work.device,
                          on_epoch=on_epoch, workers=workers, compile=compile)
    return stack_test_losses(stack, work.data, work.device, n_rows, len(work.seeds))


class Executor(Protocol):
    name: str

    def map(self, work: Work, chunks: list[Chunk], on_models: Callable[[float], None]) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Train every chunk; yield each with its losses as it finishes (in any order), calling
        ``on_models(n)`` as models finish."""


@dataclass
class LocalExecutor:
    """This machine: chunks one after another, each split over ``workers`` single-threaded processes
    (None: one per available core, or ``$INFLUENCE_BENCH_WORKERS``; 1: in this process), each step
    compiled (None: ``$INFLUENCE_BENCH_COMPILE``, else on for the CPU)."""

    workers: int | None = None
    compile: bool | None = None
    name: str = "local"

    def map(self, work, chunks, on_models):
        from influence_bench.training.batched import default_compile
        from influence_bench.training.parallel import default_workers, shutdown_pool

        workers = self.workers or default_workers(work.device)
        compile = default_compile(work.device) if self.compile is None else self.compile
        try:
            for chunk in chunks:
                yield chunk, train_chunk(work, chunk.members, chunk.n_rows, workers, on_models, compile)
        finally:
            shutdown_pool()  # the workers hold a copy of torch and the data: not kept past the build


class RayUnavailableError(RuntimeError):
    pass


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(f"--executor ray needs Ray, an optional extra: {RAY_INSTALL}") from None
    return ray


def _ray_chunk(work: Work, chunk_members: torch.Tensor, n_rows: int, cpus: int, compile: bool) -> np.ndarray:
    """A Ray task: one chunk on ``cpus`` threads (the cores Ray reserved for it)."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(cpus)
    return train_chunk(work, chunk_members, n_rows, workers=1, compile=compile)


@dataclass
class RayExecutor:
    """One Ray task per chunk, at most as many at once as the cluster has room for.

    address: a running cluster (``ray://HOST:10001`` or ``HOST:6379``, or ``auto`` for the one this
    machine belongs to); None starts a local cluster of ``num_cpus`` cores (None: all), which ends with
    this process. A task that dies with its worker is retried ``max_retries`` times."""

    address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float = 0.0
    num_cpus: int | None = None
    max_retries: int = 3
    compile: bool | None = None
    name: str = "ray"

    def connect(self):
        ray = import_ray()
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        return ray

    def map(self, work, chunks, on_models):
        ray = self.connect()
        gpus = self.gpus_per_task or (1.0 if torch.device(work.device).type == "cuda" else 0.0)
        task = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries)(_ray_chunk)
        from influence_bench.training.batched import default_compile

        compile = default_compile(work.device) if self.compile is None else self.compile
        shared = ray.put(work)
        pending = {task.remote(shared, chunk.members, chunk.n_rows, self.cpus_per_task, compile): chunk for chunk in chunks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                chunk = pending.pop(ref)
                losses = ray.get(ref)
                on_models(float(chunk.n_models(len(work.seeds))))
                yield chunk, losses


def get_executor(name: str, address: str | None = None, workers: int | None = None) -> Executor:
    """``local`` (``workers`` processes) or ``ray`` (at ``address``, else a local cluster)."""
    if name == "local":
        if address:
            raise ValueError("--address is for --executor ray; the local executor runs on this machine")
        from influence_bench.training.batched import default_compile
        from influence_bench.training.parallel import default_workers

        default_workers(), default_compile()  # a bad $INFLUENCE_BENCH_WORKERS or _COMPILE says so before any work
        return LocalExecutor(workers)
    if name == "ray":
        import_ray()  # says how to install it before any work starts
        return RayExecutor(address=address, num_cpus=workers)
    raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
