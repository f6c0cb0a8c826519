"""An influence problem: a trained model and its data, with the shared exact quantities.

The harness builds one per task; every entry's ``fit`` receives it. Per-example gradients, the
exact GGN and Hessian and their eigendecompositions are computed at most once, here, and shared.
"""

from __future__ import annotations

import copy
from functools import cached_property

import torch
from torch import nn

from influence_bench.curvature import exact
from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.tasks.spec import TaskData


class InfluenceProblem:
    """model: the trained model (any dtype; kept as a float64 copy). data: the task's tensors."""

    def __init__(self, model: nn.Module, data: TaskData, name: str = "problem"):
        self.name = name
        self.model = copy.deepcopy(model).double().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.x_train = data.x_train.double()
        self.y_train = data.y_train
        self.x_test = data.x_test.double()
        self.y_test = data.y_test

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @cached_property
    def layer_slices(self) -> list[slice]:
        return exact.layer_slices(self.model)

    # -- gradients (shared by every entry) -----------------------------------------------------
    @cached_property
    def train_grads(self) -> torch.Tensor:
        """[n_train, P] per-example loss gradients at the trained parameters."""
        return exact.per_example_gradients(self.model, self.x_train, self.y_train)

    @cached_property
    def test_grads(self) -> torch.Tensor:
        """[n_test, P]."""
        return exact.per_example_gradients(self.model, self.x_test, self.y_test)

    def set_gradients(self, train_grads: torch.Tensor, test_grads: torch.Tensor) -> None:
        """Use gradients computed elsewhere (the harness computes them once per run)."""
        expected = ((self.n_train, self.n_params), (self.n_test, self.n_params))
        if (tuple(train_grads.shape), tuple(test_grads.shape)) != expected:
            raise ValueError(f"gradients of shapes {tuple(train_grads.shape)}, {tuple(test_grads.shape)}; expected {expected}")
        self.__dict__["train_grads"] = train_grads.to(torch.float64)
        self.__dict__["test_grads"] = test_grads.to(torch.float64)

    # -- exact curvature -----------------------------------------------------------------------
    @cached_property
    def ggn(self) -> torch.Tensor:
        """[P, P] exact GGN of the mean training loss."""
        return exact.exact_ggn(self.model, self.x_train)

    @cached_property
    def ggn_layer_blocks(self) -> list[torch.Tensor]:
        """The per-layer diagonal blocks of the GGN (sliced from it when it exists, else computed alone)."""
        if "ggn" in self.__dict__:
            return self.layer_blocks(self.ggn)
        return exact.exact_ggn_blocks(self.model, self.x_train, self.layer_slices)

    @cached_property
    def ggn_diagonal(self) -> torch.Tensor:
        """[P] diagonal of the GGN (from it when it exists, else computed alone)."""
        if "ggn" in self.__dict__:
            return torch.diagonal(self.ggn).clone()
        return exact.exact_ggn_diagonal(self.model, self.x_train)

    @cached_property
    def hessian(self) -> torch.Tensor:
        """[P, P] exact Hessian of the mean training loss."""
        return exact.exact_hessian(self.model, self.x_train, self.y_train)

    def share_ggn_eigen(self, curvature: EigenCurvature) -> None:
        """Use an eigendecomposition of this problem's GGN made elsewhere (the ``ggn`` entry's)."""
        if curvature.dim != self.n_params:
            raise ValueError(f"a curvature of dimension {curvature.dim} for a problem with {self.n_params} parameters")
        self.__dict__["ggn_eigen"] = curvature

    @cached_property
    def ggn_eigen(self) -> EigenCurvature:
        return EigenCurvature.from_dense(self.ggn)

    @cached_property
    def ggn_layer_eigvals(self) -> list[torch.Tensor]:
        """Eigenvalues of each layer's diagonal block of the GGN."""
        return [torch.linalg.eigvalsh(block) for block in self.ggn_layer_blocks]

    def layer_blocks(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        return [matrix[s, s] for s in self.layer_slices]
