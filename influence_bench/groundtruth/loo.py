"""Leave-one-out ground truth (PROTOCOL.md section 4): remove one training point, retrain, keep every seed.

K training points drawn from a fixed seed per task are removed one at a time; each removal and the
full training set are trained with seeds 0..R-1 by the batched engine. With the same seed a removal
model starts from the full-data model's initialisation and sees its batch order with the one index
left out (``epoch_order``). ``losses_without[k, r, j]`` and ``losses_full[r, j]`` are the
cross-entropies of test point j. Work is cached in chunks of whole removed points (the full-data
models are one more chunk), so an interrupted build resumes from the points already done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from influence_bench import PROTOCOL_VERSION, __version__
from influence_bench.groundtruth.cache import ArtifactStore, build_lock, content_key, default_cache_dir
from influence_bench.groundtruth.executors import Chunk, Executor, LocalExecutor, Work
from influence_bench.groundtruth.lds import models_bar
from influence_bench.groundtruth.presets import Preset
from influence_bench.tasks.spec import TaskData, TaskSpec

# second word of the removed points' seed; the LDS masks use round(alpha * 1000) <= 1000, so no overlap
LOO_SEED_TAG = 4_000_001
FULL_CHUNK = "full.npz"


@dataclass
class LOOGroundTruth:
    removed: np.ndarray  # [K] int: the training indices removed, sorted
    seeds: np.ndarray  # [R] int
    losses_without: np.ndarray  # [K, R, n_test] float32: test losses of the model without removed[k]
    losses_full: np.ndarray  # [R, n_test] float32: test losses of the full-data model, same seeds

    @property
    def differences(self) -> np.ndarray:
        """L_without_k - L_full per seed: [K, R, n_test] float64."""
        return self.losses_without.astype(np.float64) - self.losses_full.astype(np.float64)[None]

    @property
    def targets(self) -> np.ndarray:
        """D[k, j] = mean_r (L_without_k - L_full): [K, n_test] float64."""
        return self.differences.mean(axis=1)


def draw_loo_points(spec: TaskSpec, k: int, n_train: int) -> np.ndarray:
    """[k] sorted distinct training indices, uniform, seeded by the task (a stream apart from the LDS masks).

    The first k of one fixed permutation, so a smaller K removes a subset of a larger K's points."""
    if not 0 < k <= n_train:
        raise ValueError(f"cannot remove {k} of {n_train} training points")
    rng = np.random.default_rng([spec.mask_seed, LOO_SEED_TAG])
    return np.sort(rng.permutation(n_train)[:k]).astype(np.int64)


def loo_dir(spec: TaskSpec, preset: Preset, cache_dir: Path | None = None) -> Path:
    """Content-addressed by the task spec, the preset, K, the protocol and the package version."""
    key = content_key(spec.cache_dict(), preset.to_dict(), preset.loo_points, PROTOCOL_VERSION, __version__)
    return Path(cache_dir or default_cache_dir()) / "groundtruth" / spec.key / f"loo-{preset.name}-{key}"


def _chunk_name(chunk: int) -> str:
    return f"removed/chunk{chunk:03d}.npz"


def build_loo_groundtruth(
    spec: TaskSpec,
    preset: Preset,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    data: TaskData | None = None,
    executor: Executor | None = None,
) -> LOOGroundTruth:
    """Load it from the cache, training whatever is missing or failed its check, on ``executor``
    (default: this machine, one worker process per core). One process at a time builds it
    (``build_lock``): a second builder waits, then finds the models in the cache."""
    root = loo_dir(spec, preset, cache_dir)
    with build_lock(root, f"the leave-one-out ground truth of {spec.key}/{preset.name}"):
        return _build_loo_groundtruth(spec, preset, root, device, progress, data or spec.data, executor or LocalExecutor())


def _build_loo_groundtruth(spec: TaskSpec, preset: Preset, root: Path, device: str, progress: bool, data: TaskData,
                           executor: Executor) -> LOOGroundTruth:
    """Load the LOO ground truth from the cache, training whatever is missing or failed its check."""
    store = ArtifactStore(root)
    recipe = spec.recipe.with_epochs(preset.epochs)
    seeds = list(range(preset.n_seeds))
    removed = draw_loo_points(spec, preset.loo_points, data.n_train)
    per_chunk = preset.masks_per_chunk  # whole removed points, about models_per_batch models

    def make_check(expected_removed: np.ndarray | None, shape: tuple[int, ...]):
        keys = {"seeds", "losses"} | ({"removed"} if expected_removed is not None else set())

        def check(arrays: dict) -> str | None:
            if set(arrays) != keys:
                return f"keys {sorted(arrays)}"
            if arrays["losses"].shape != shape or not np.isfinite(arrays["losses"]).all():
                return f"losses of shape {arrays['losses'].shape} or not finite"
            if list(arrays["seeds"]) != seeds:
                return "seeds differ"
            if expected_removed is not None and not np.array_equal(arrays["removed"], expected_removed):
                return "removed points differ"
            return None

        return check

    full = store.load_arrays(FULL_CHUNK, make_check(None, (preset.n_seeds, data.n_test)))
    losses_full = full["losses"] if full is not None else None
    losses_without = np.full((len(removed), preset.n_seeds, data.n_test), np.nan, np.float32)
    todo: list[Chunk] = []  # place: the removed points' slice, None for the full-data models
    if full is None:
        todo.append(Chunk(FULL_CHUNK, torch.ones(preset.n_seeds, data.n_train, dtype=torch.bool), 1,
                          {"seeds": np.array(seeds)}))
    for c, start in enumerate(range(0, len(removed), per_chunk)):
        part = slice(start, min(start + per_chunk, len(removed)))
        shape = (part.stop - part.start, preset.n_seeds, data.n_test)
        cached = store.load_arrays(_chunk_name(c), make_check(removed[part], shape))
        if cached is None:
            points = removed[part]
            members = torch.ones(len(points), data.n_train, dtype=torch.bool)
            members[torch.arange(len(points)), torch.as_tensor(points)] = False
            members = members.repeat_interleave(preset.n_seeds, dim=0)  # point-major, seed-minor
            todo.append(Chunk(_chunk_name(c), members, len(points), {"removed": points, "seeds": np.array(seeds)}, place=part))
        else:
            losses_without[part] = cached["losses"]

    n_todo = sum(chunk.n_models(preset.n_seeds) for chunk in todo)
    bar = models_bar(f"leave-one-out {spec.name}/{preset.name}", preset.n_loo_trainings,
                     preset.n_loo_trainings - n_todo, progress)
    work = Work(spec, data, recipe, tuple(seeds), device)
    with bar:
        for chunk, chunk_losses in executor.map(work, todo, bar.update):
            if chunk.place is None:  # the full-data models: one row
                chunk_losses = losses_full = chunk_losses[0]
            else:
                losses_without[chunk.place] = chunk_losses
            store.save_arrays(chunk.name, **chunk.arrays, losses=chunk_losses)
    return LOOGroundTruth(removed, np.array(seeds), losses_without, losses_full)
