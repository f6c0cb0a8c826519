"""The one place that calls curvlinops (pinned 3.0.1).

Everything curvlinops returns is turned into this suite's conventions here: float64 tensors,
vectors as rows ``[k, P]`` with parameters ordered as ``model.parameters()`` flattened row-major,
and Kronecker factors kept as factors (``KroneckerEigenBlock``), one block per nn.Linear with
weight and bias together (curvlinops' ``separate_weight_and_bias=False``: the layer input is
augmented with a trailing 1, and a block acts on the joint ``[W | b]`` of shape [out, in + 1]).
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import nn

from influence_bench.curvature.eigen import DenseEigenBlock, EigenCurvature, KroneckerEigenBlock
from influence_bench.tasks.losses import Loss, get_loss

with warnings.catch_warnings():
    # curvlinops imports linear_operator, which warns about torch.jit.script at import time
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from curvlinops import (
        CGInverseLinearOperator,
        EKFACLinearOperator,
        GGNLinearOperator,
        HessianLinearOperator,
        KFACInverseLinearOperator,
        KFACLinearOperator,
        NeumannInverseLinearOperator,
        hutchinson_squared_fro,
        hutchinson_trace,
    )
    from curvlinops._torch_base import PyTorchLinearOperator

# exact GGN factors; sampled labels (curvlinops' default, one sample); the empirical Fisher (observed labels)
FISHER_TYPES = {"type-2": "type-2", "mc": "mc", "empirical": "empirical"}
DATA_BATCH = 512
MATVEC_ROWS = 256  # vectors per curvlinops product: its intermediates grow like data batch x width x vectors


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = DATA_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def _linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers with parameters, nn.Linear and nn.Conv2d (a convolution's block acts on its weight
    flattened to [out, in * kh * kw], the bias joined as one more column)."""
    from influence_bench.curvature.exact import LAYER_TYPES

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def _differentiable(model: nn.Module) -> nn.Module:
    """A copy whose parameters require gradients (curvlinops hooks into them)."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _loss(loss: Loss | str) -> nn.Module:
    """The task's loss as the ``torch.nn`` module curvlinops takes (mean reduction)."""
    return get_loss(loss).module()


# -- operators of the mean training loss --------------------------------------------------------
def ggn_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str,
                 batch: int = DATA_BATCH) -> GGNLinearOperator:
    """curvlinops' matrix-free GGN of the mean loss."""
    model = _differentiable(model)
    return GGNLinearOperator(model, _loss(loss), list(model.parameters()), _batches(x, y, batch),
                             check_deterministic=False, num_data=x.shape[0])


def hessian_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str) -> HessianLinearOperator:
    """curvlinops' matrix-free Hessian of the mean loss."""
    model = _differentiable(model)
    return HessianLinearOperator(model, _loss(loss), list(model.parameters()), _batches(x, y),
                                 check_deterministic=False, num_data=x.shape[0])


class _RowsOperator(PyTorchLinearOperator):
    """A symmetric [P, P] operator given by ``rows -> rows @ A`` on vectors as rows [k, P]."""

    def __init__(self, matvec_rows: Callable[[torch.Tensor], torch.Tensor], dim: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__([(dim,)], [(dim,)])
        self._rows = matvec_rows
        self._dtype = dtype
        self._device = torch.device(device)

    def _matmat(self, X: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self._rows(X[0].T).T]

    def _adjoint(self) -> "_RowsOperator":
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:  # where curvlinops draws its probes (Hutchinson) and vectors
        return self._device


def as_operator(matvec_rows: Callable[[torch.Tensor], torch.Tensor], dim: int,
                dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> PyTorchLinearOperator:
    """Wrap the suite's row convention (``[k, P] -> [k, P]``) on ``device`` as a curvlinops operator."""
    return _RowsOperator(matvec_rows, dim, dtype, device)


def rows_matvec(operator: PyTorchLinearOperator, chunk: int = MATVEC_ROWS) -> Callable[[torch.Tensor], torch.Tensor]:
    """The suite's row convention for a curvlinops operator: ``[k, P] -> [k, P]``, ``chunk`` rows per
    product. curvlinops keeps every vector's activations of a data batch at once (wide-mlp: 512 points x
    256 units x 1,024 vectors = 1 GiB per layer), so a thousand vectors go through in pieces."""
    def matvec(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([(operator @ piece.T.contiguous()).T for piece in rows.split(chunk)]) if len(rows) else rows.clone()

    return matvec


def damped(operator: PyTorchLinearOperator, damping: float) -> PyTorchLinearOperator:
    """``A + damping I`` as a flat [P, P] curvlinops operator."""
    matvec = rows_matvec(operator)
    return as_operator(lambda rows: matvec(rows) + damping * rows, operator.shape[0], operator.dtype, operator.device)


def cg_solve(operator: PyTorchLinearOperator, rows: torch.Tensor, damping: float, tol: float,
             max_iter: int) -> tuple[torch.Tensor, int]:
    """(A + damping I)^-1 applied to each row [k, P] by curvlinops' CG (GPyTorch's batched linear_cg).

    Stops when the mean relative residual ||b - (A + damping I) x|| / ||b|| over the rows is below
    ``tol`` or after ``max_iter`` iterations. Returns the solutions and the iterations used.
    """
    calls = [0]
    matvec = rows_matvec(operator)

    def counted(v: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return matvec(v)

    shifted = damped(as_operator(counted, operator.shape[0], operator.dtype, operator.device), damping)
    inverse = CGInverseLinearOperator(shifted, tolerance=tol, max_iter=max_iter, max_tridiag_iter=0, eps=1e-30)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="CG terminated")  # the iteration count says so
        solution = (inverse @ rows.T.contiguous()).T
    return solution, max(calls[0] - 1, 0)  # the first product is the initial residual


def neumann_inverse(operator: PyTorchLinearOperator, damping: float, num_terms: int,
                    scale: float) -> NeumannInverseLinearOperator:
    """curvlinops' truncated Neumann series of (A + damping I)^-1 (deterministic, full-batch)."""
    return NeumannInverseLinearOperator(damped(operator, damping), num_terms=num_terms, scale=scale)


def trace_estimate(operator: PyTorchLinearOperator, num_matvecs: int = 50, seed: int = 0) -> float:
    """Hutchinson estimate of tr(A)."""
    torch.manual_seed(seed)
    return float(hutchinson_trace(operator, num_matvecs))


def squared_fro_estimate(operator: PyTorchLinearOperator, num_matvecs: int = 50, seed: int = 0) -> float:
    """Hutchinson estimate of ||A||_F^2."""
    torch.manual_seed(seed)
    return float(hutchinson_squared_fro(operator, num_matvecs))


# -- K-FAC and EK-FAC, as Kronecker eigen forms --------------------------------------------------
KFAC_APPROX = ("expand", "reduce")  # K-FAC of a weight-sharing layer (Eschenhagen et al. 2023); equal on nn.Linear


def _kfac_kwargs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str,
                 separate: bool = False, mc_samples: int = 1, approx: str = "expand") -> dict:
    if approx not in KFAC_APPROX:
        raise ValueError(f"unknown K-FAC approximation {approx!r}; use one of {', '.join(KFAC_APPROX)}")
    if fisher not in FISHER_TYPES:
        raise ValueError(f"unknown Fisher type {fisher!r}; use one of {sorted(FISHER_TYPES)}")
    if mc_samples != 1 and fisher != "mc":
        raise ValueError(f"mc_samples={mc_samples} applies to the MC Fisher only")
    model = _differentiable(model)
    return dict(
        model_func=model,
        loss_func=_loss(loss),
        params=[p for p in model.parameters()],
        data=_batches(x, y),
        fisher_type=FISHER_TYPES[fisher],
        mc_samples=mc_samples,
        kfac_approx=approx,
        separate_weight_and_bias=separate,
        check_deterministic=False,
        num_data=x.shape[0],
        num_per_example_loss_terms=1,
    )


def kfac_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str = "type-2",
                  separate: bool = False, mc_samples: int = 1, approx: str = "expand") -> KFACLinearOperator:
    """curvlinops' own K-FAC operator (the reference the suite's eigen forms are tested against)."""
    return KFACLinearOperator(**_kfac_kwargs(model, x, y, loss, fisher, separate, mc_samples, approx))


def ekfac_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str = "type-2",
                   separate: bool = False, mc_samples: int = 1, approx: str = "expand") -> EKFACLinearOperator:
    return EKFACLinearOperator(**_kfac_kwargs(model, x, y, loss, fisher, separate, mc_samples, approx))


def kfac_inverse_operator(kfac: KFACLinearOperator, damping: float, heuristic: bool) -> PyTorchLinearOperator:
    """curvlinops' K-FAC inverse: exact damping, or the heuristic pi-damping of Martens and Grosse."""
    return KFACInverseLinearOperator(kfac, damping=damping, use_heuristic_damping=heuristic,
                                     use_exact_damping=not heuristic)


def kronecker_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str = "type-2",
                      separate: bool = False, mc_samples: int = 1, approx: str = "expand"):
    """Per layer (A, G) for the MEAN loss. Joint: A = E[a a^T] of the input augmented with a 1
    [in+1, in+1] (block G (x) A on ``[W | b]``); separate: A of the plain input [in, in] for W, and
    the bias block is G alone."""
    kfac = kfac_operator(model, x, y, loss, fisher, separate, mc_samples, approx)
    kfac.compute_kronecker_factors()
    state = kfac.state_dict()
    return [(state["input_covariances"][name], state["gradient_covariances"][name]) for name, _ in _linears(model)]


def _tensor_slices(model: nn.Module) -> list[slice]:
    from influence_bench.curvature.exact import tensor_slices

    return tensor_slices(model)


def _layer_slices(model: nn.Module) -> list[slice]:
    from influence_bench.curvature.exact import layer_slices

    return layer_slices(model)


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.linalg.eigh(matrix.to(torch.float64))


def kfac_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str = "type-2",
                   separate: bool = False, mc_samples: int = 1, approx: str = "expand") -> EigenCurvature:
    """K-FAC in eigen form: per layer Q_G (x) Q_A with eigenvalues lam_G (x) lam_A (separate: the
    weight's block G (x) A and the bias's block G)."""
    blocks: list = []
    for (_, linear), (a, g) in zip(_linears(model), kronecker_factors(model, x, y, loss, fisher, separate, mc_samples, approx)):
        lam_a, q_a = _eigh(a)
        lam_g, q_g = _eigh(g)
        joint = linear.bias is not None and not separate
        blocks.append(KroneckerEigenBlock(q_g, q_a, torch.outer(lam_g, lam_a).flatten(), joint, lam_g, lam_a))
        if separate and linear.bias is not None:
            blocks.append(DenseEigenBlock(q_g, lam_g))
    return EigenCurvature(_tensor_slices(model) if separate else _layer_slices(model), blocks)


def ekfac_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str, fisher: str = "type-2",
                    separate: bool = False, mc_samples: int = 1, approx: str = "expand") -> EigenCurvature:
    """EK-FAC: the K-FAC eigenbasis with curvlinops' corrected eigenvalues diag(Q^T F Q) per block."""
    ekfac = ekfac_operator(model, x, y, loss, fisher, separate, mc_samples, approx)
    ekfac.compute_kronecker_factors()
    ekfac.compute_eigenvalue_correction()
    state = ekfac.state_dict()
    blocks: list = []
    for name, linear in _linears(model):
        q_g = state["gradient_covariances_eigenvectors"][name].to(torch.float64)
        q_a = state["input_covariances_eigenvectors"][name].to(torch.float64)
        corrected = state["corrected_eigenvalues"][name]
        if not isinstance(corrected, dict):  # weight and bias joint (or no bias)
            blocks.append(KroneckerEigenBlock(q_g, q_a, corrected.flatten().to(torch.float64), linear.bias is not None))
            continue
        position = ekfac._mapping[name]  # {"weight": index, "bias": index} into the parameter list
        blocks.append(KroneckerEigenBlock(q_g, q_a, corrected[position["weight"]].flatten().to(torch.float64), False))
        if "bias" in position:
            blocks.append(DenseEigenBlock(q_g, corrected[position["bias"]].to(torch.float64)))
    return EigenCurvature(_tensor_slices(model) if separate else _layer_slices(model), blocks)
