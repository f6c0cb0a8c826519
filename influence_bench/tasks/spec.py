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

from influence_bench.tasks.losses import Loss, get_loss
from influence_bench.tasks.models import ModelFactory


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
    loss: str = "mean cross-entropy"  # or "mean squared-error" (tasks.losses)
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
_ADDED_TASK_FIELDS = {"train_size": None, "label_noise": 0.0, "noise_seed": 0}


LOSS_OF_RECIPE = {"mean cross-entropy": "cross-entropy", "mean squared-error": "squared-error"}


@dataclass(frozen=True)
class TaskData:
    """Tensors of one task: standardised inputs; integer labels [n] (cross-entropy) or standardised
    float targets [n, C] (squared error)."""

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


def array_fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' dtypes, shapes and bytes: the data itself, not its display name."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task: data, model factory, loss (the recipe's), measurement and training recipe.

    ``fingerprint`` hashes every declared field and the data's own bytes (cache keys use it).
    """

    name: str
    version: int
    description: str
    dataset: str
    model: ModelFactory
    recipe: TrainingRecipe
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray]] = field(repr=False, compare=False)
    train_fraction: float = 0.9
    split_seed: int = 0
    # None: a random split by ``split_seed``; an int n: the first n rows train, the rest test (given split)
    train_size: int | None = None
    reference_seed: int = 42
    mask_seed: int = 2025
    # the share of training labels replaced by another class (drawn with ``noise_seed``); test labels stay
    label_noise: float = 0.0
    noise_seed: int = 0
    # checkpoints of the reference training kept for the entries that trace training (TracIn, the TRAK
    # ensemble), evenly spaced in epochs, the last the reference model itself. Not in the fingerprint:
    # they change no trained model, and have a cache file of their own.
    checkpoints: int = field(default=5, compare=False)
    # the name that gets this task again in another process (an entry's worker) when its own name does not:
    # ``local:MODEL:/abs/path.npz`` for a local-data task; None: its key
    source: str | None = field(default=None, compare=False)

    @property
    def loss(self) -> Loss:
        try:
            return get_loss(LOSS_OF_RECIPE[self.recipe.loss])
        except KeyError:
            raise ValueError(f"task {self.name}: unknown loss {self.recipe.loss!r}; use one of "
                             f"{', '.join(LOSS_OF_RECIPE)}") from None

    @property
    def measurement(self) -> str:
        """What the ground truth measures per test point: the test loss."""
        return self.loss.measurement

    def checkpoint_epochs(self) -> list[int]:
        """The epochs after which a checkpoint is kept: ``round(E k / C)`` for k = 1..C."""
        epochs, count = self.recipe.epochs, min(self.checkpoints, self.recipe.epochs)
        return sorted({round(epochs * k / count) for k in range(1, count + 1)})

    # -- data -------------------------------------------------------------------------------
    def split_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Train / test indices: the given split (``train_size``), else
        ``perm = RandomState(split_seed).choice(n, n, replace=False)`` cut at ``train_fraction``."""
        if self.train_size is not None:
            return np.arange(self.train_size), np.arange(self.train_size, n)
        rng = np.random.RandomState(self.split_seed)
        perm = rng.choice(np.arange(n), n, replace=False)
        n_train = round(self.train_fraction * n)
        return perm[:n_train], perm[n_train:]

    def flipped_labels(self, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(noisy labels, flipped [n_train] bool): ``round(label_noise n)`` points drawn with
        ``default_rng(noise_seed)``, each given a uniformly drawn other class."""
        flipped = np.zeros(len(y_train), dtype=bool)
        if not self.label_noise:
            return y_train, flipped
        if self.loss.name != "cross-entropy":
            raise ValueError(f"task {self.name}: label noise needs class labels (cross-entropy)")
        rng = np.random.default_rng(self.noise_seed)
        n_classes = int(y_train.max()) + 1
        chosen = rng.choice(len(y_train), size=round(self.label_noise * len(y_train)), replace=False)
        noisy = y_train.copy()
        noisy[chosen] = (y_train[chosen] + rng.integers(1, n_classes, size=len(chosen))) % n_classes
        flipped[chosen] = True
        return noisy, flipped

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.load_arrays()

    @cached_property
    def data_fingerprint(self) -> str:
        return array_fingerprint(*self.arrays)

    def load_data(self) -> TaskData:
        """Load, split and standardise (scalers fitted on the training part only; regression targets too)."""
        from sklearn.preprocessing import StandardScaler

        x, y = self.arrays
        train, test = self.split_indices(len(x))
        scaler = StandardScaler().fit(x[train])
        dtype = getattr(torch, self.recipe.dtype)
        as_x = lambda a: torch.as_tensor(scaler.transform(a), dtype=dtype)  # noqa: E731
        if self.loss.name == "cross-entropy":
            y_train, _ = self.flipped_labels(y[train])
            y_test = y[test]
        else:
            target = StandardScaler().fit(y[train].reshape(len(train), -1))
            y_train = target.transform(y[train].reshape(len(train), -1))
            y_test = target.transform(y[test].reshape(len(test), -1))
        as_y = lambda a: torch.as_tensor(a, dtype=self.loss.target_dtype(dtype))  # noqa: E731
        return TaskData(as_x(x[train]), as_y(y_train), as_x(x[test]), as_y(y_test))

    @cached_property
    def data(self) -> TaskData:
        return self.load_data()

    @cached_property
    def mislabeled(self) -> torch.Tensor | None:
        """[n_train] bool: the training points whose label was flipped (None without label noise)."""
        if not self.label_noise:
            return None
        x, y = self.arrays
        train, _ = self.split_indices(len(x))
        return torch.as_tensor(self.flipped_labels(y[train])[1])

    # -- model ------------------------------------------------------------------------------
    def make_model(self) -> nn.Module:
        """The factory's model in the recipe's dtype, in PyTorch's default initialisation."""
        return self.model.build(getattr(torch, self.recipe.dtype))

    def init_model(self, seed: int) -> nn.Module:
        """The model every training with ``seed`` starts from: ``torch.manual_seed(seed)`` first."""
        torch.manual_seed(seed)
        return self.make_model()

    @property
    def n_params(self) -> int:
        return self.model.n_params

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every declared field. An MLP is written as version 1 of the tasks wrote it (``layer_sizes``,
        ``activation``), other factories under ``model``; fields added since (``_ADDED_TASK_FIELDS``)
        only where they differ from their defaults: a published fingerprint never moves."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        d["recipe"] = self.recipe.to_dict()
        d["measurement"] = self.measurement
        model = d.pop("model").to_dict()
        if model.pop("factory") == "mlp":
            d.update(model)
        else:
            d["model"] = {"factory": self.model.factory, **model}
        for name, default in _ADDED_TASK_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        return d

    def cache_dict(self) -> dict:
        """What keys the task's cached artefacts: ``to_dict`` and the fingerprint of the data's own
        bytes (a changed file under the same name is another ground truth)."""
        return {**self.to_dict(), "data": self.data_fingerprint}

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def key(self) -> str:
        return f"{self.name}.v{self.version}"
