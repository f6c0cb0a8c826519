"""The model factories a task names: a declared architecture that builds a fresh ``nn.Module``.

A factory is data (its fields enter the task's fingerprint) with ``build(dtype)``; the task seeds
torch before calling it, so the initialisation is PyTorch's default for that seed. ``MODELS`` maps
the names a local-data task (``influence_bench.tasks.local``) may choose from to their factories.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def _activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}") from None


@dataclass(frozen=True)
class MLP:
    """Linear - act - Linear - ... - Linear with biases: ``layer_sizes`` = (inputs, hidden..., outputs)."""

    layer_sizes: tuple[int, ...]
    activation: str = "gelu"
    factory = "mlp"

    def build(self, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        act = _activation(self.activation)
        layers: list[nn.Module] = []
        sizes = self.layer_sizes
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(d_in, d_out, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(act())
        return nn.Sequential(*layers)

    @property
    def n_params(self) -> int:
        s = self.layer_sizes
        return sum((a + 1) * b for a, b in zip(s[:-1], s[1:]))

    def with_io(self, n_inputs: int, n_outputs: int) -> "MLP":
        return dataclasses.replace(self, layer_sizes=(n_inputs, *self.layer_sizes[1:-1], n_outputs))

    def to_dict(self) -> dict:
        return {"factory": self.factory, "layer_sizes": list(self.layer_sizes), "activation": self.activation}


@dataclass(frozen=True)
class ConvNet:
    """Flat inputs reshaped to ``image`` (C, H, W); per entry of ``channels`` a Conv2d (kernel 3,
    padding 1; stride 2 from the second on) and the activation; then Flatten and one Linear."""

    image: tuple[int, int, int]
    channels: tuple[int, ...]
    n_outputs: int
    activation: str = "relu"
    factory = "cnn"

    def _spatial(self) -> tuple[int, int]:
        h, w = self.image[1:]
        for i in range(1, len(self.channels)):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w

    def build(self, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        act = _activation(self.activation)
        layers: list[nn.Module] = [nn.Unflatten(1, self.image)]
        c_in = self.image[0]
        for i, c_out in enumerate(self.channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, dtype=dtype), act()]
            c_in = c_out
        h, w = self._spatial()
        layers += [nn.Flatten(), nn.Linear(c_in * h * w, self.n_outputs, dtype=dtype)]
        return nn.Sequential(*layers)

    @property
    def n_params(self) -> int:
        sizes = [self.image[0], *self.channels]
        conv = sum((a * 9 + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        h, w = self._spatial()
        return conv + (sizes[-1] * h * w + 1) * self.n_outputs

    def with_io(self, n_inputs: int, n_outputs: int) -> "ConvNet":
        c, h, w = self.image
        if c * h * w != n_inputs:
            raise ValueError(f"the cnn factory's image {self.image} has {c * h * w} inputs, the data {n_inputs}")
        return dataclasses.replace(self, n_outputs=n_outputs)

    def to_dict(self) -> dict:
        return {"factory": self.factory, "image": list(self.image), "channels": list(self.channels),
                "n_outputs": self.n_outputs, "activation": self.activation}


ModelFactory = MLP | ConvNet

# what a local-data task may name (``--model``): each sized to the data's inputs and outputs by ``with_io``
MODELS: dict[str, ModelFactory] = {
    "logreg": MLP((0, 0)),
    "mlp": MLP((0, 64, 32, 0), "gelu"),
    "cnn-8x8": ConvNet((1, 8, 8), (8, 16), 0, "relu"),
}


def named_model(name: str, n_inputs: int, n_outputs: int) -> ModelFactory:
    """The built-in factory ``name`` sized to the data (``MODELS`` lists them)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; the built-in factories are {', '.join(MODELS)}") from None
    return factory.with_io(n_inputs, n_outputs)
