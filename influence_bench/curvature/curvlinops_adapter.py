"""The one place that calls curvlinops (pinned 3.0.1).

Everything curvlinops returns is turned into this suite's conventions here: float64 tensors,
parameters ordered as ``model.parameters()`` flattened row-major, one block per nn.Linear with
weight and bias together (curvlinops' ``separate_weight_and_bias=False``: the layer input is
augmented with a trailing 1, and a block acts on the row-major [W | b] of shape [out, in + 1]).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from influence_bench.curvature.eigen import EigenCurvature

with warnings.catch_warnings():
    # curvlinops imports linear_operator, which warns about torch.jit.script at import time
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from curvlinops import EKFACLinearOperator, GGNLinearOperator, KFACLinearOperator

FISHER_TYPES = {"type-2": "type-2", "mc": "mc"}  # exact GGN factors; one sampled label (curvlinops default)
DATA_BATCH = 512


@dataclass
class KroneckerLayer:
    """One layer's block in the Kronecker eigenbasis, in the suite's parameter order.

    eigvecs: [d, d] with d = out * (in + 1), the columns of P (Q_G (x) Q_A) (G-index major);
    eigvals: [d], lam_G (x) lam_A for K-FAC, the corrected diag(Q^T F Q) for EK-FAC.
    """

    eigvecs: torch.Tensor
    eigvals: torch.Tensor
    kron: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (Q_G, Q_A, perm): eigvecs = kron(Q_G, Q_A)[perm]


def _batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + DATA_BATCH], y[i : i + DATA_BATCH]) for i in range(0, x.shape[0], DATA_BATCH)]


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def joint_to_param_order(d_out: int, d_in: int) -> torch.Tensor:
    """Row permutation from the row-major [W | b] ([d_out, d_in + 1]) to [vec(W); b]."""
    width = d_in + 1
    weight = [o * width + i for o in range(d_out) for i in range(d_in)]
    bias = [o * width + d_in for o in range(d_out)]
    return torch.tensor(weight + bias)


def _differentiable(model: nn.Module) -> nn.Module:
    """A copy whose parameters require gradients (curvlinops hooks into them)."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _common_kwargs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str) -> dict:
    if fisher not in FISHER_TYPES:
        raise ValueError(f"unknown Fisher type {fisher!r}; use one of {sorted(FISHER_TYPES)}")
    model = _differentiable(model)
    return dict(
        model_func=model,
        loss_func=nn.CrossEntropyLoss(reduction="mean"),
        params=[p for p in model.parameters()],
        data=_batches(x, y),
        fisher_type=FISHER_TYPES[fisher],
        separate_weight_and_bias=False,
        check_deterministic=False,
        num_data=x.shape[0],
        num_per_example_loss_terms=1,
    )


def kronecker_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str = "type-2"):
    """Per layer (A, G): A = E[a a^T] of the augmented input [in+1, in+1], G of the output gradients
    [out, out], both for the MEAN loss (K-FAC block = G (x) A in the joint [W | b] order)."""
    kfac = KFACLinearOperator(**_common_kwargs(model, x, y, fisher))
    kfac.compute_kronecker_factors()
    state = kfac.state_dict()
    return [(state["input_covariances"][name], state["gradient_covariances"][name]) for name, _ in _linears(model)]


def kfac_layers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str = "type-2") -> list[KroneckerLayer]:
    """K-FAC in eigen form: eigvecs = P (Q_G (x) Q_A), eigvals = lam_G (x) lam_A."""
    layers = []
    for (_, linear), (a, g) in zip(_linears(model), kronecker_factors(model, x, y, fisher)):
        lam_a, q_a = torch.linalg.eigh(a)
        lam_g, q_g = torch.linalg.eigh(g)
        perm = joint_to_param_order(linear.out_features, linear.in_features)
        layers.append(KroneckerLayer(torch.kron(q_g, q_a)[perm], torch.kron(lam_g, lam_a), (q_g, q_a, perm)))
    return layers


def ekfac_layers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str = "type-2") -> list[KroneckerLayer]:
    """EK-FAC: the K-FAC eigenbasis with curvlinops' corrected eigenvalues diag(Q^T F Q) per layer."""
    ekfac = EKFACLinearOperator(**_common_kwargs(model, x, y, fisher))
    ekfac.compute_kronecker_factors()
    ekfac.compute_eigenvalue_correction()
    state = ekfac.state_dict()
    out = []
    for name, linear in _linears(model):
        q_a = state["input_covariances_eigenvectors"][name]
        q_g = state["gradient_covariances_eigenvectors"][name]
        perm = joint_to_param_order(linear.out_features, linear.in_features)
        out.append(KroneckerLayer(torch.kron(q_g, q_a)[perm], state["corrected_eigenvalues"][name].flatten(),
                                  (q_g, q_a, perm)))
    return out


def ggn_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> GGNLinearOperator:
    """curvlinops' matrix-free GGN of the mean cross-entropy (the reference for ``exact_ggn``)."""
    model = _differentiable(model)
    return GGNLinearOperator(
        model, nn.CrossEntropyLoss(reduction="mean"), list(model.parameters()), _batches(x, y),
        check_deterministic=False,
    )


def layers_to_curvature(layers: list[KroneckerLayer], slices: list[slice]) -> EigenCurvature:
    """Per-layer Kronecker eigen forms as one block-diagonal ``EigenCurvature``."""
    return EigenCurvature(list(slices), [layer.eigvals for layer in layers], [layer.eigvecs for layer in layers],
                          [layer.kron for layer in layers])
