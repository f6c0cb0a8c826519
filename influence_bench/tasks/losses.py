"""The training losses a task can declare: cross-entropy (classification) and squared error (regression).

Every quantity the suite derives from a loss comes from here -- the per-example loss (the ground
truth's measurement), the mean loss the models are trained on, its gradient in the outputs (the
hand-written MLP fast path), a square root of its Hessian in the outputs (the exact GGN) and the
``torch.nn`` loss module curvlinops is given -- so that no entry or metric assumes cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Loss:
    """A loss of the outputs ``f`` [n, C] and targets ``y``; ``mean(f, y) = per_example(f, y).mean()``."""

    name: str

    def per_example(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_gradient(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d per_example(f_n, y_n) / d f_n for every n: [..., n, C]."""
        raise NotImplementedError

    def hessian_sqrt(self, outputs: torch.Tensor) -> torch.Tensor:
        """S_n with S_n S_n^T the Hessian of the per-example loss in the outputs: [n, C, C]."""
        raise NotImplementedError

    def hessian_product(self, outputs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H_n v_n for outputs [n, C] and tangents v [..., n, C]."""
        raise NotImplementedError

    def module(self) -> nn.Module:
        """The ``torch.nn`` loss of the mean (what curvlinops and kronfluence are given)."""
        raise NotImplementedError

    def target_dtype(self, float_dtype: torch.dtype) -> torch.dtype:
        raise NotImplementedError

    @property
    def measurement(self) -> str:
        return f"per-test-point {self.name} loss"


class CrossEntropy(Loss):
    """Softmax cross-entropy of integer class labels y [n]."""

    def __init__(self):
        super().__init__("cross-entropy")

    def per_example(self, outputs, y):
        return F.cross_entropy(outputs, y, reduction="none")

    def mean(self, outputs, y):
        return F.cross_entropy(outputs, y)

    def output_gradient(self, outputs, y):
        grad = torch.softmax(outputs, dim=-1)
        return grad - F.one_hot(y, outputs.shape[-1]).to(grad.dtype)

    def hessian_sqrt(self, outputs):
        """S = diag(sqrt p) - p sqrt(p)^T: S S^T = diag(p) - p p^T."""
        p = torch.softmax(outputs, dim=-1)
        s = p.sqrt()
        return torch.diag_embed(s) - p.unsqueeze(2) * s.unsqueeze(1)

    def hessian_product(self, outputs, v):
        p = torch.softmax(outputs, dim=-1)
        return p * v - p * (p * v).sum(-1, keepdim=True)

    def module(self):
        return nn.CrossEntropyLoss(reduction="mean")

    def target_dtype(self, float_dtype):
        return torch.long


class SquaredError(Loss):
    """Squared error of float targets y [n, C], averaged over the C outputs (``nn.MSELoss``'s mean)."""

    def __init__(self):
        super().__init__("squared-error")

    def per_example(self, outputs, y):
        return (outputs - y).square().mean(-1)

    def mean(self, outputs, y):
        return F.mse_loss(outputs, y)

    def output_gradient(self, outputs, y):
        return 2.0 * (outputs - y) / outputs.shape[-1]

    def hessian_sqrt(self, outputs):
        n, c = outputs.shape
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return (2.0 / c) ** 0.5 * eye.expand(n, c, c)

    def hessian_product(self, outputs, v):
        return 2.0 * v / outputs.shape[-1]

    def module(self):
        return nn.MSELoss(reduction="mean")

    def target_dtype(self, float_dtype):
        return float_dtype


CROSS_ENTROPY = CrossEntropy()
SQUARED_ERROR = SquaredError()
LOSSES: dict[str, Loss] = {loss.name: loss for loss in (CROSS_ENTROPY, SQUARED_ERROR)}


def get_loss(loss: str | Loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}") from None
