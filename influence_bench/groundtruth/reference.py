"""The reference model of a task: trained on all training points with the task's reference seed."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from influence_bench import __version__
from influence_bench.groundtruth.cache import ArtifactStore, build_lock, content_key, default_cache_dir
from influence_bench.tasks.spec import TaskData, TaskSpec
from influence_bench.training.batched import train_batched


def reference_model(
    spec: TaskSpec, cache_dir: Path | None = None, device: str = "cpu", data: TaskData | None = None,
    say=lambda message: None,
) -> nn.Sequential:
    """The task's reference model (cached, SHA-256 checked), as a float32 ``nn.Sequential``; one process
    at a time trains it. ``say`` receives a status line when it is trained rather than loaded."""
    root = Path(cache_dir or default_cache_dir()) / "models" / spec.key
    with build_lock(root, f"the reference model of {spec.key}"):
        return _reference_model(spec, root, device, data or spec.data, say)


def _reference_model(spec: TaskSpec, root: Path, device: str, data: TaskData, say) -> nn.Sequential:
    store = ArtifactStore(root)
    name = f"reference-{content_key(spec.cache_dict(), __version__)}.pt"
    model = spec.make_model()
    path = store.verified_path(name)
    if path is not None:
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is retrained
            store.discard(name, f"cannot be loaded ({exc})")
    say(f"training the reference model of {spec.key} ({spec.recipe.epochs} epochs on all {data.n_train} "
        "training points; cached afterwards)")
    everyone = torch.ones(1, data.n_train, dtype=torch.bool)
    model = train_batched(spec, data, everyone, [spec.reference_seed], device=device).model(0, spec).cpu()

    def write(f: io.BufferedWriter) -> None:
        torch.save(model.state_dict(), f)

    store.save(name, write)
    return model.eval()


@dataclass
class Checkpoints:
    """States of the reference training after some epochs (``TaskSpec.checkpoint_epochs``), each with
    the learning rate of its epoch: what TracIn weights its gradient dot products by."""

    epochs: list[int]
    learning_rates: list[float]
    states: list[dict[str, torch.Tensor]]

    def models(self, spec: TaskSpec) -> list[nn.Module]:
        out = []
        for state in self.states:
            model = spec.make_model()
            model.load_state_dict(state)
            out.append(model.eval())
        return out

    def save(self, path) -> None:
        torch.save({"epochs": self.epochs, "learning_rates": self.learning_rates, "states": self.states}, path)

    @classmethod
    def load(cls, path) -> "Checkpoints":
        raw = torch.load(path, weights_only=True)
        return cls(list(raw["epochs"]), [float(r) for r in raw["learning_rates"]], list(raw["states"]))


def reference_checkpoints(spec: TaskSpec, cache_dir: Path | None = None, device: str = "cpu",
                          data: TaskData | None = None, say=lambda message: None) -> Checkpoints:
    """The checkpoints of the reference training (cached, SHA-256 checked): the same training as
    ``reference_model``, with the states after ``spec.checkpoint_epochs()`` kept."""
    root = Path(cache_dir or default_cache_dir()) / "models" / spec.key
    epochs = spec.checkpoint_epochs()
    with build_lock(root, f"the checkpoints of {spec.key}"):
        store = ArtifactStore(root)
        name = f"checkpoints-{content_key(spec.cache_dict(), epochs, __version__)}.pt"
        path = store.verified_path(name)
        if path is not None:
            try:
                return Checkpoints.load(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is rebuilt
                store.discard(name, f"cannot be loaded ({exc})")
        say(f"training the reference model of {spec.key} again to keep {len(epochs)} checkpoints "
            f"(epochs {', '.join(map(str, epochs))}; cached afterwards)")
        data = data or spec.data
        kept = Checkpoints([], [], [])

        def keep(epoch: int, lr: float, stack) -> None:
            if epoch in epochs:
                kept.epochs.append(epoch)
                kept.learning_rates.append(float(lr))
                kept.states.append({k: v.detach().cpu().clone() for k, v in stack.model(0, spec).state_dict().items()})

        everyone = torch.ones(1, data.n_train, dtype=torch.bool)
        train_batched(spec, data, everyone, [spec.reference_seed], device=device, at_epoch_end=keep)
        store.save(name, lambda f: kept.save(f))
        return kept
