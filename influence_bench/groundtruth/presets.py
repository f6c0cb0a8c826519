"""Ground-truth presets (PROTOCOL.md sections 3 and 4): how many masks, removed points, seeds and epochs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ALPHAS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Preset:
    name: str
    n_masks: int  # M: random subsets per alpha
    n_seeds: int  # R: retrainings per subset, seeds 0..R-1
    epochs: int | None = None  # None: the task's recipe; smaller only for the smoke preset
    alphas: tuple[float, ...] = ALPHAS
    models_per_batch: int = 250  # models trained together by the batched engine (one cache chunk)
    description: str = ""
    loo_points: int = 100  # K: training points removed one at a time for leave-one-out (section 4)

    @property
    def n_trainings(self) -> int:
        return len(self.alphas) * self.n_masks * self.n_seeds

    @property
    def n_loo_trainings(self) -> int:
        """The full-data models and one model per removed point, each with every seed: (K + 1) * R."""
        return (self.loo_points + 1) * self.n_seeds

    @property
    def masks_per_chunk(self) -> int:
        return max(1, self.models_per_batch // self.n_seeds)

    def with_alphas(self, alphas: tuple[float, ...] | None) -> "Preset":
        """The preset at a subset of its alphas (``paper`` at 0.5 only: 10,000 trainings, not 40,000);
        a different ground truth, with its own cache key."""
        if alphas is None or tuple(alphas) == self.alphas:
            return self
        unknown = [a for a in alphas if not any(abs(a - b) < 1e-9 for b in ALPHAS)]
        if unknown or not alphas:
            raise UnknownPresetError(f"alphas {list(alphas)}: choose among {', '.join(map(str, ALPHAS))}")
        chosen = tuple(b for b in ALPHAS if any(abs(a - b) < 1e-9 for a in alphas))
        return dataclasses.replace(self, alphas=chosen)

    def results_name(self, task: str) -> str:
        """The default results directory of a run of ``task``: TASK-PRESET, with -alphaA-B when a subset."""
        full = PRESETS[self.name].alphas if self.name in PRESETS else self.alphas
        at = "" if self.alphas == full else "-alpha" + "-".join(f"{a:g}" for a in self.alphas)
        return f"{task}-{self.name}{at}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("description")
        d.pop("models_per_batch")  # how the work is batched does not change the result
        d.pop("loo_points")  # not part of the LDS ground truth: its cache key must not move; the LOO key adds K
        return d


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("smoke", n_masks=8, n_seeds=2, epochs=3, models_per_batch=8, loo_points=4,
               description="for tests: 8 masks x 2 seeds, 3 epochs; LOO: 4 points"),
        Preset("standard", n_masks=100, n_seeds=10, models_per_batch=500,
               description="M=100, R=10: 4,000 trainings"),
        Preset("paper", n_masks=100, n_seeds=100, models_per_batch=200,
               description="M=100, R=100: the authors' scale, 40,000 trainings"),
    )
}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
