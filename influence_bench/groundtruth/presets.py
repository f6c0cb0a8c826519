"""Ground-truth presets (PROTOCOL.md section 3): how many masks, seeds and epochs."""

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

    @property
    def n_trainings(self) -> int:
        return len(self.alphas) * self.n_masks * self.n_seeds

    @property
    def masks_per_chunk(self) -> int:
        return max(1, self.models_per_batch // self.n_seeds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("description")
        d.pop("models_per_batch")  # how the work is batched does not change the result
        return d


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("smoke", n_masks=8, n_seeds=2, epochs=3, models_per_batch=8,
               description="for tests: 8 masks x 2 seeds, 3 epochs"),
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
