"""Declarative, versioned task specifications.

A task is data + split + model + training recipe + measurement, declared once. A published task is
never edited in place: a change of any field is a new ``version``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainingRecipe:
    """How every model of a task is trained (the reference model and every retraining)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    drop_last: bool = True
    optimizer: str = "sgd"
    loss: str = "mean cross-entropy"
    dtype: str = "float32"
    schedule: str = "constant"  # or "cosine": CosineAnnealingLR(T_max=epochs, eta_min), stepped per epoch
    eta_min: float = 0.0

    def with_epochs(self, epochs: int | None) -> "TrainingRecipe":
        return self if epochs is None else dataclasses.replace(self, epochs=epochs)

    def learning_rates(self) -> list[float]:
        """The learning rate of every epoch, as ``torch.optim.lr_scheduler`` gives it (one source for
        the single-model loop and the batched engine)."""
        if self.schedule == "constant":
            return [self.lr] * self.epochs
        if self.schedule != "cosine":
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; use constant or cosine")
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=self.eta_min)
        rates = []
        for _ in range(self.epochs):
            rates.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return rates

    def to_dict(self) -> dict:
        """Every field; the fields added after version 1 of a task only where they differ from their
        defaults, so that adding a field never changes the fingerprint of a published version."""
        d = dataclasses.asdict(self)
        for name, default in _ADDED_RECIPE_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        return d


_ADDED_RECIPE_FIELDS = {"schedule": "constant", "eta_min": 0.0}


@dataclass(frozen=True)
class TaskData:
    """Tensors of one task: standardised inputs and integer labels."""

    x_train: torch.Tensor  # [n_train, d]
    y_train: torch.Tensor  # [n_train]
    x_test: torch.Tensor  # [n_test, d]
    y_test: torch.Tensor  # [n_test]

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    def to(self, device: str | torch.device) -> "TaskData":
        return TaskData(*(t.to(device) for t in dataclasses.astuple(self)))


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task. ``fingerprint`` hashes every declared field (cache keys use it)."""

    name: str
    version: int
    description: str
    dataset: str
    layer_sizes: tuple[int, ...]
    activation: str
    recipe: TrainingRecipe
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray]] = field(repr=False, compare=False)
    train_fraction: float = 0.9
    split_seed: int = 0
    reference_seed: int = 42
    mask_seed: int = 2025
    measurement: str = "per-test-point cross-entropy loss"
    # checkpoints of the reference training kept for the entries that trace training (TracIn, the TRAK
    # ensemble), evenly spaced in epochs, the last the reference model itself. Not in the fingerprint:
    # they change no trained model, and have a cache file of their own.
    checkpoints: int = field(default=5, compare=False)

    def checkpoint_epochs(self) -> list[int]:
        """The epochs after which a checkpoint is kept: ``round(E k / C)`` for k = 1..C."""
        epochs, count = self.recipe.epochs, min(self.checkpoints, self.recipe.epochs)
        return sorted({round(epochs * k / count) for k in range(1, count + 1)})

    # -- data -------------------------------------------------------------------------------
    def split_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Train / test indices: ``perm = RandomState(split_seed).choice(n, n, replace=False)``."""
        rng = np.random.RandomState(self.split_seed)
        perm = rng.choice(np.arange(n), n, replace=False)
        n_train = round(self.train_fraction * n)
        return perm[:n_train], perm[n_train:]

    def load_data(self) -> TaskData:
        """Load, split and standardise (scaler fitted on the training part only)."""
        from sklearn.preprocessing import StandardScaler

        x, y = self.load_arrays()
        train, test = self.split_indices(len(x))
        scaler = StandardScaler().fit(x[train])
        dtype = getattr(torch, self.recipe.dtype)
        as_x = lambda a: torch.as_tensor(scaler.transform(a), dtype=dtype)  # noqa: E731
        as_y = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
        return TaskData(as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test]))

    @cached_property
    def data(self) -> TaskData:
        return self.load_data()

    # -- model ------------------------------------------------------------------------------
    def make_model(self) -> nn.Sequential:
        """Linear - act - Linear - ... - Linear with biases, in PyTorch's default initialisation."""
        act = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}[self.activation]
        layers: list[nn.Module] = []
        sizes = self.layer_sizes
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(d_in, d_out, dtype=getattr(torch, self.recipe.dtype)))
            if i < len(sizes) - 2:
                layers.append(act())
        return nn.Sequential(*layers)

    def init_model(self, seed: int) -> nn.Sequential:
        """The model every training with ``seed`` starts from: ``torch.manual_seed(seed)`` first."""
        torch.manual_seed(seed)
        return self.make_model()

    @property
    def n_params(self) -> int:
        s = self.layer_sizes
        return sum((a + 1) * b for a, b in zip(s[:-1], s[1:]))

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        d["recipe"] = self.recipe.to_dict()
        d["layer_sizes"] = list(self.layer_sizes)
        return d

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def key(self) -> str:
        return f"{self.name}.v{self.version}"
