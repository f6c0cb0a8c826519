"""An influence problem: a trained model and its data, with the shared exact quantities.

The harness builds one per task; every entry's ``fit`` receives it. Per-example gradients, the
exact GGN- and Hessian-vector products (curvlinops operators) and, below the dense limit, the
dense GGN and Hessian are computed at most once, here, and shared. Above the dense limit (a
setting, in parameters) asking for a dense matrix raises ``DenseLimitError``: everything there is
an operator.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from influence_bench.curvature import exact
from influence_bench.curvature.eigen import DenseEigenBlock, EigenCurvature
from influence_bench.tasks.losses import Loss, get_loss
from influence_bench.tasks.spec import TaskData, TaskSpec

DENSE_LIMIT_ENV = "INFLUENCE_BENCH_DENSE_LIMIT"
DEFAULT_DENSE_LIMIT = 10_000  # parameters: a dense float64 [P, P] matrix is 800 MB at this size


BLOCK_KINDS = ("layer", "tensor")  # block-diagonal curvatures: one block per layer, or per parameter tensor


def default_dense_limit() -> int:
    return int(os.environ.get(DENSE_LIMIT_ENV, DEFAULT_DENSE_LIMIT))


class DenseLimitError(RuntimeError):
    """A dense [P, P] matrix was asked for above the problem's dense limit."""


class InfluenceProblem:
    """model: the trained model (any dtype; kept as a float64 copy). data: the task's tensors.

    dense_limit: the largest parameter count for which dense [P, P] matrices are built
    (default ``$INFLUENCE_BENCH_DENSE_LIMIT`` or 10,000). loss: the task's training loss (its
    ``spec.loss``; every curvature, gradient and measurement here is of it). mislabeled: [n_train]
    bool, the training points whose label the task flipped (its ``spec.mislabeled``), or None.
    """

    def __init__(self, model: nn.Module, data: TaskData, name: str = "problem", dense_limit: int | None = None,
                 loss: Loss | str = "cross-entropy", mislabeled: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        self.name = name
        self.device = torch.device(device)
        self.loss = get_loss(loss)
        if mislabeled is not None and tuple(mislabeled.shape) != (data.n_train,):
            raise ValueError(f"mislabeled has shape {tuple(mislabeled.shape)}; expected ({data.n_train},)")
        self.mislabeled = None if mislabeled is None else torch.as_tensor(mislabeled, dtype=torch.bool)
        self.dense_limit = default_dense_limit() if dense_limit is None else int(dense_limit)
        self.model = self._frozen(model)
        self.x_train = data.x_train.to(self.device, torch.float64)
        self.y_train = data.y_train.to(self.device, torch.float64 if data.y_train.is_floating_point() else None)
        self.x_test = data.x_test.to(self.device, torch.float64)
        self.y_test = data.y_test.to(self.device, torch.float64 if data.y_test.is_floating_point() else None)
        self.checkpoints: list[tuple[float, nn.Module]] = []  # (learning rate, model): set by the harness

    @classmethod
    def of_task(cls, spec: TaskSpec, model: nn.Module, dense_limit: int | None = None,
                device: str | torch.device = "cpu") -> "InfluenceProblem":
        """The problem of a task's trained model: its data, loss and flipped labels."""
        return cls(model, spec.data, name=spec.key, dense_limit=dense_limit, loss=spec.loss,
                   mislabeled=spec.mislabeled, device=device)

    def _frozen(self, model: nn.Module) -> nn.Module:
        """A float64 copy of ``model`` on the problem's device, in eval mode, without gradients."""
        model = copy.deepcopy(model).double().eval().to(self.device)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

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

    @cached_property
    def tensor_slices(self) -> list[slice]:
        """One slice per parameter tensor (a layer's weight and its bias apart)."""
        return exact.tensor_slices(self.model)

    def block_slices(self, by: str) -> list[slice]:
        """The slices of a block-diagonal curvature: ``by="layer"`` or ``"tensor"``."""
        if by not in BLOCK_KINDS:
            raise ValueError(f"blocks by {by!r}; use layer or tensor")
        return self.layer_slices if by == "layer" else self.tensor_slices

    @property
    def dense_allowed(self) -> bool:
        return self.n_params <= self.dense_limit

    def dense_skip_reason(self, what: str = "a dense curvature") -> str | None:
        """Why a dense [P, P] matrix cannot be built here, or None when it can."""
        if self.dense_allowed:
            return None
        return (f"needs {what} ([P, P]), but P = {self.n_params:,} parameters is above the dense limit "
                f"{self.dense_limit:,} (raise it with --dense-limit or ${DENSE_LIMIT_ENV})")

    def _require_dense(self, what: str) -> None:
        reason = self.dense_skip_reason(what)
        if reason:
            raise DenseLimitError(reason)

    # -- exact curvature-vector products (always available) --------------------------------------
    @cached_property
    def ggn_operator(self):
        """curvlinops' GGN of the mean training loss (matrix-free)."""
        from influence_bench.curvature import curvlinops_adapter

        return curvlinops_adapter.ggn_operator(self.model, self.x_train, self.y_train, self.loss)

    @cached_property
    def hessian_operator(self):
        """curvlinops' Hessian of the mean training loss (matrix-free)."""
        from influence_bench.curvature import curvlinops_adapter

        return curvlinops_adapter.hessian_operator(self.model, self.x_train, self.y_train, self.loss)

    @property
    def ggn_matvec(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """G v for each row of vectors [k, P] (exact, matrix-free)."""
        from influence_bench.curvature import curvlinops_adapter

        return curvlinops_adapter.rows_matvec(self.ggn_operator)

    # -- gradients (shared by every entry) -----------------------------------------------------
    @cached_property
    def train_grads(self) -> torch.Tensor:
        """[n_train, P] per-example loss gradients at the trained parameters."""
        return exact.per_example_gradients(self.model, self.x_train, self.y_train, self.loss)

    @cached_property
    def test_grads(self) -> torch.Tensor:
        """[n_test, P]."""
        return exact.per_example_gradients(self.model, self.x_test, self.y_test, self.loss)

    # -- checkpoints of the training (for the entries that trace it) ----------------------------
    def set_checkpoints(self, models: list[nn.Module], learning_rates: list[float]) -> None:
        """The reference training's checkpoints, oldest first, each with its epoch's learning rate."""
        if len(models) != len(learning_rates):
            raise ValueError(f"{len(models)} checkpoints but {len(learning_rates)} learning rates")
        self.checkpoints = list(zip(map(float, learning_rates), map(self._frozen, models)))

    def set_gradients(self, train_grads: torch.Tensor, test_grads: torch.Tensor) -> None:
        """Use gradients computed elsewhere (the harness computes them once per run)."""
        expected = ((self.n_train, self.n_params), (self.n_test, self.n_params))
        if (tuple(train_grads.shape), tuple(test_grads.shape)) != expected:
            raise ValueError(f"gradients of shapes {tuple(train_grads.shape)}, {tuple(test_grads.shape)}; expected {expected}")
        self.__dict__["train_grads"] = train_grads.to(self.device, torch.float64)
        self.__dict__["test_grads"] = test_grads.to(self.device, torch.float64)

    # -- exact curvature -----------------------------------------------------------------------
    @cached_property
    def ggn(self) -> torch.Tensor:
        """[P, P] exact GGN of the mean training loss (below the dense limit only)."""
        self._require_dense("the dense GGN")
        return exact.exact_ggn(self.model, self.x_train, self.loss)

    @cached_property
    def ggn_layer_blocks(self) -> list[torch.Tensor]:
        """The per-layer diagonal blocks of the GGN (sliced from it when it exists, else computed alone)."""
        return self.ggn_blocks("layer")

    def ggn_blocks(self, by: str = "layer") -> list[torch.Tensor]:
        """The GGN's diagonal blocks per layer or per tensor (sliced from it when it exists)."""
        slices = self.block_slices(by)
        if "ggn" in self.__dict__:
            return [self.ggn[s, s] for s in slices]
        if by == "layer" and "ggn_layer_blocks" in self.__dict__:
            return self.__dict__["ggn_layer_blocks"]
        return exact.exact_ggn_blocks(self.model, self.x_train, slices, self.loss)

    @cached_property
    def ggn_diagonal(self) -> torch.Tensor:
        """[P] diagonal of the GGN (from it when it exists, else computed alone)."""
        if "ggn" in self.__dict__:
            return torch.diagonal(self.ggn).clone()
        return exact.exact_ggn_diagonal(self.model, self.x_train, self.loss)

    @cached_property
    def hessian(self) -> torch.Tensor:
        """[P, P] exact Hessian of the mean training loss (below the dense limit only)."""
        self._require_dense("the dense Hessian")
        return exact.exact_hessian(self.model, self.x_train, self.y_train, self.loss)

    # -- sharing the dense matrices between the processes of a run ---------------------------------
    SHAREABLE = ("ggn", "hessian")

    def share(self, name: str, matrix: torch.Tensor) -> None:
        """Use a dense matrix computed once for the whole run (``ggn`` or ``hessian``) instead of recomputing it."""
        if name not in self.SHAREABLE:
            raise ValueError(f"cannot share {name!r}; shareable: {', '.join(self.SHAREABLE)}")
        if tuple(matrix.shape) != (self.n_params, self.n_params):
            raise ValueError(f"a shared {name} of shape {tuple(matrix.shape)} for P = {self.n_params}")
        self.__dict__[name] = matrix.to(self.device)  # on the CPU: the mapped file itself, not a copy

    def share_ggn_eigen(self, eigvals: torch.Tensor, eigvecs: torch.Tensor) -> None:
        """Use the run's one eigendecomposition of the dense GGN (ascending eigenvalues, eigenvectors as columns)."""
        if tuple(eigvecs.shape) != (self.n_params, self.n_params) or eigvals.numel() != self.n_params:
            raise ValueError(f"a shared GGN eigendecomposition of shape {tuple(eigvecs.shape)} for P = {self.n_params}")
        self.__dict__["ggn_eigen"] = EigenCurvature([slice(0, self.n_params)], [DenseEigenBlock(eigvecs.to(self.device),
                                                                                           eigvals.to(self.device))])

    @cached_property
    def ggn_eigen(self) -> EigenCurvature:
        """The dense GGN's eigendecomposition: the ``ggn`` entry's curvature and the fidelity reference,
        computed once (a dense inverse shared, not re-implemented per entry)."""
        return EigenCurvature.from_dense(self.ggn)

    def is_computed(self, name: str) -> bool:
        return name in self.__dict__

    def layer_blocks(self, matrix: torch.Tensor, by: str = "layer") -> list[torch.Tensor]:
        return [matrix[s, s] for s in self.block_slices(by)]
