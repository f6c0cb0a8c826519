"""LDS ground truth (PROTOCOL.md section 3): retrain on random subsets, keep every seed's test losses.

For each alpha: M masks of size floor(alpha * n_train) drawn from a fixed seed per task and alpha;
each mask retrained with seeds 0..R-1 by the batched engine. ``losses[a, m, r, j]`` is the
cross-entropy of test point j under the model of mask m and seed r. Work is cached in chunks of
whole masks, so an interrupted build resumes from the masks already done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence_bench import PROTOCOL_VERSION, __version__
from influence_bench.groundtruth.cache import ArtifactStore, build_lock, content_key, default_cache_dir
from influence_bench.groundtruth.executors import Chunk, Executor, LocalExecutor, Work
from influence_bench.groundtruth.presets import Preset
from influence_bench.tasks.spec import TaskData, TaskSpec
from influence_bench.training.batched import StackedMLP, StackedModule


@dataclass
class LDSGroundTruth:
    alphas: np.ndarray  # [A]
    masks: np.ndarray  # [A, M, n_train] bool: training points kept
    losses: np.ndarray  # [A, M, R, n_test] float32: every seed's per-test-point loss

    @property
    def targets(self) -> np.ndarray:
        """T[a, m, j] = mean over seeds of the test loss: [A, M, n_test] float64."""
        return self.losses.astype(np.float64).mean(axis=2)


def draw_masks(spec: TaskSpec, alpha: float, n_masks: int, n_train: int) -> np.ndarray:
    """[n_masks, n_train] bool, uniform subsets of size floor(alpha * n_train), seeded by task and alpha."""
    rng = np.random.default_rng([spec.mask_seed, round(alpha * 1000)])
    size = int(np.floor(alpha * n_train))
    masks = np.zeros((n_masks, n_train), dtype=bool)
    for m in range(n_masks):
        masks[m, rng.choice(n_train, size=size, replace=False)] = True
    return masks


def groundtruth_dir(spec: TaskSpec, preset: Preset, cache_dir: Path | None = None) -> Path:
    """Content-addressed by the task spec, the preset, the protocol and the package version."""
    key = content_key(spec.cache_dict(), preset.to_dict(), PROTOCOL_VERSION, __version__)
    return Path(cache_dir or default_cache_dir()) / "groundtruth" / spec.key / f"{preset.name}-{key}"


def stack_test_losses(stack: StackedMLP | StackedModule, data: TaskData, device: str, n_rows: int, n_seeds: int) -> np.ndarray:
    """[n_rows, n_seeds, n_test] float32 test losses of a stack trained row-major, seed-minor."""
    losses = stack.per_example_loss(data.x_test.to(device), data.y_test.to(device)).cpu().numpy()
    return losses.reshape(n_rows, n_seeds, data.n_test).astype(np.float32)


def models_bar(desc: str, total: int, done: int, progress: bool) -> tqdm:
    """One progress bar in trained models (fractional while an epoch of a chunk runs)."""
    return tqdm(total=total, initial=done, unit="model", disable=not progress, desc=desc, smoothing=0.05,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} models "
                           "[{elapsed}<{remaining}, {rate_fmt}]")


def _chunk_name(alpha: float, chunk: int) -> str:
    return f"alpha{alpha:.2f}/chunk{chunk:03d}.npz"


def build_lds_groundtruth(
    spec: TaskSpec,
    preset: Preset,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    data: TaskData | None = None,
    executor: Executor | None = None,
) -> LDSGroundTruth:
    """Load it from the cache, training whatever is missing or failed its check, on ``executor``
    (default: this machine, one worker process per core). One process at a time builds it
    (``build_lock``): a second builder waits, then finds the models in the cache."""
    root = groundtruth_dir(spec, preset, cache_dir)
    with build_lock(root, f"the LDS ground truth of {spec.key}/{preset.name}"):
        return _build_lds_groundtruth(spec, preset, root, device, progress, data or spec.data, executor or LocalExecutor())


def _build_lds_groundtruth(spec: TaskSpec, preset: Preset, root: Path, device: str, progress: bool, data: TaskData,
                           executor: Executor) -> LDSGroundTruth:
    """Load the ground truth from the cache, training whatever is missing or failed its check."""
    store = ArtifactStore(root)
    recipe = spec.recipe.with_epochs(preset.epochs)
    seeds = list(range(preset.n_seeds))
    all_masks = np.stack([draw_masks(spec, a, preset.n_masks, data.n_train) for a in preset.alphas])
    losses = np.full((len(preset.alphas), preset.n_masks, preset.n_seeds, data.n_test), np.nan, np.float32)

    todo: list[Chunk] = []
    for a, alpha in enumerate(preset.alphas):
        for c, start in enumerate(range(0, preset.n_masks, preset.masks_per_chunk)):
            part = slice(start, min(start + preset.masks_per_chunk, preset.n_masks))
            expected = all_masks[a, part]
            shape = (expected.shape[0], preset.n_seeds, data.n_test)

            def check(arrays: dict, expected=expected, shape=shape) -> str | None:
                if set(arrays) != {"masks", "seeds", "losses"}:
                    return f"keys {sorted(arrays)}"
                if arrays["losses"].shape != shape or not np.isfinite(arrays["losses"]).all():
                    return f"losses of shape {arrays['losses'].shape} or not finite"
                if not np.array_equal(arrays["masks"], expected) or list(arrays["seeds"]) != seeds:
                    return "masks or seeds differ"
                return None

            cached = store.load_arrays(_chunk_name(alpha, c), check)
            if cached is None:
                members = torch.as_tensor(np.repeat(expected, preset.n_seeds, axis=0))  # mask-major, seed-minor
                todo.append(Chunk(_chunk_name(alpha, c), members, expected.shape[0],
                                  {"masks": expected, "seeds": np.array(seeds)}, place=(a, part)))
            else:
                losses[a, part] = cached["losses"]

    done_models = preset.n_trainings - sum(chunk.n_models(preset.n_seeds) for chunk in todo)
    bar = models_bar(f"ground truth {spec.name}/{preset.name}", preset.n_trainings, done_models, progress)
    work = Work(spec, data, recipe, tuple(seeds), device)
    with bar:
        for chunk, chunk_losses in executor.map(work, todo, bar.update):
            store.save_arrays(chunk.name, **chunk.arrays, losses=chunk_losses)
            losses[chunk.place] = chunk_losses
    return LDSGroundTruth(np.array(preset.alphas), all_masks, losses)
