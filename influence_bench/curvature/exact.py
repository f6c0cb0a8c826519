"""Exact quantities of a trained model, computed once with torch.func and shared by every entry.

Parameters are ordered as ``model.parameters()`` and flattened row-major: W1, b1, W2, b2, ...
All results are float64. Every function that involves the loss is given the task's ``Loss``
(``tasks.losses``): nothing here assumes cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg.blas import dsyrk
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap

from influence_bench.tasks.losses import Loss, get_loss

Params = dict[str, torch.Tensor]


def named_params(model: nn.Module) -> Params:
    return {k: v.detach() for k, v in model.named_parameters()}


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    out, start = {}, 0
    for k, p in like.items():
        out[k] = vector[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


LAYER_TYPES = (nn.Linear, nn.Conv2d)  # the layers with parameters (K-FAC's, curvlinops' supported ones)


def layer_slices(model: nn.Module) -> list[slice]:
    """One slice per nn.Linear or nn.Conv2d (weight and bias together) in the flattened parameter vector."""
    slices, start = [], 0
    for module in model.modules():
        if isinstance(module, LAYER_TYPES):
            size = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
            slices.append(slice(start, start + size))
            start += size
    return slices


def tensor_slices(model: nn.Module) -> list[slice]:
    """One slice per parameter tensor (each layer's weight, then its bias), in ``model.parameters()`` order."""
    slices, start = [], 0
    for p in model.parameters():
        slices.append(slice(start, start + p.numel()))
        start += p.numel()
    return slices


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str,
                          chunk: int = 512) -> torch.Tensor:
    """g_i = grad of the loss of example i at the trained parameters: [n, P]."""
    params = named_params(model)
    loss = get_loss(loss)

    def loss_of(p: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(model, p, (xi.unsqueeze(0),))
        return loss.mean(outputs, yi.unsqueeze(0))

    per_example = vmap(grad(loss_of), in_dims=(None, 0, 0))
    rows = []
    for part in _chunks(x.shape[0], chunk):
        g = per_example(params, x[part], y[part])
        rows.append(torch.cat([t.reshape(t.shape[0], -1) for t in g.values()], dim=1))
    return torch.cat(rows)


def per_example_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J_n = d f(x_n) / d theta of the logits: [n, C, P]."""
    params = named_params(model)

    def logits(p: Params, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, x)
    return torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in jac.values()], dim=2)


CHUNK_BYTES = 512 * 2**20  # the float64 Jacobians of one chunk stay below this (twice: J and S^T J)


def _ggn_sqrt_rows(model: nn.Module, x: torch.Tensor, loss: Loss | str, chunk: int):
    """Chunks of B = [S_n^T J_n]_n ([chunk * C, P]): the GGN of the summed loss is B^T B. A chunk has at
    most ``chunk`` points and fewer where its Jacobians would pass ``CHUNK_BYTES`` (wide models)."""
    if next(model.parameters()).dtype != torch.float64:
        raise TypeError("the exact GGN is computed in float64: pass model.double() and float64 inputs")
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        all_logits = model(x)
    chunk = max(1, min(chunk, CHUNK_BYTES // (8 * all_logits.shape[-1] * n_params)))
    for part in _chunks(x.shape[0], chunk):
        jac = per_example_jacobians(model, x[part])  # [c, C, P]
        sqrt_h = get_loss(loss).hessian_sqrt(all_logits[part])  # [c, C, C]
        yield torch.einsum("nck,ncp->nkp", sqrt_h, jac).reshape(-1, n_params)


def _syrk_sums(rows, slices: list[slice]) -> list[torch.Tensor]:
    """sum over chunks b of b[:, s]^T b[:, s] for every slice s, in one pass over the chunks.

    BLAS dsyrk on the upper triangle: half the work of a full product. On the CPU (the chunks cross
    from another device), the sums returned on the chunks' device.
    """
    uppers = [np.zeros((s.stop - s.start, s.stop - s.start), order="F") for s in slices]
    device = torch.device("cpu")
    for b in rows:
        device = b.device
        for k, s in enumerate(slices):
            uppers[k] = dsyrk(1.0, b[:, s].cpu().numpy().T, beta=1.0, c=uppers[k], trans=0, lower=0, overwrite_c=1)
    return [torch.from_numpy(np.triu(u) + np.triu(u, 1).T).to(device) for u in uppers]


def exact_ggn(model: nn.Module, x: torch.Tensor, loss: Loss | str, chunk: int = 256) -> torch.Tensor:
    """GGN of the MEAN loss: (1/n) sum_n J_n^T H_n J_n, from stacked per-example Jacobians.

    With H_n = S_n S_n^T each chunk contributes B^T B for B = [S_n^T J_n]_n stacked: one symmetric
    rank-k update per chunk instead of one matrix-vector product per column.
    """
    n_params = sum(p.numel() for p in model.parameters())
    (ggn,) = _syrk_sums(_ggn_sqrt_rows(model, x, loss, chunk), [slice(0, n_params)])
    return ggn.div_(x.shape[0])


def exact_ggn_blocks(model: nn.Module, x: torch.Tensor, slices: list[slice], loss: Loss | str,
                     chunk: int = 256) -> list[torch.Tensor]:
    """The diagonal blocks G[s, s] of the exact GGN, without the rest of the matrix."""
    return [block.div_(x.shape[0]) for block in _syrk_sums(_ggn_sqrt_rows(model, x, loss, chunk), slices)]


def exact_ggn_diagonal(model: nn.Module, x: torch.Tensor, loss: Loss | str, chunk: int = 256) -> torch.Tensor:
    """diag(G) = (1/n) sum of the squared columns of B: [P]."""
    return sum(b.square().sum(0) for b in _ggn_sqrt_rows(model, x, loss, chunk)) / x.shape[0]


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss | str,
                  chunk: int = 128) -> torch.Tensor:
    """Hessian of the MEAN loss: [P, P].

    Reverse over reverse: the graph of the gradient is built once (``vjp``) and pulled back along
    ``chunk`` unit vectors at a time (vmap), each pull-back giving one row of the Hessian.
    """
    params = named_params(model)
    flat = flatten(params)

    loss = get_loss(loss)

    def mean_loss(v: torch.Tensor) -> torch.Tensor:
        return loss.mean(functional_call(model, unflatten(v, params), (x,)), y)

    _, pullback = vjp(grad(mean_loss), flat)
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    hess = torch.cat([vmap(pullback)(eye[part])[0] for part in _chunks(flat.numel(), chunk)])
    return (hess + hess.T) / 2  # symmetric up to rounding
