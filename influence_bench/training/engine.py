"""The generic batched engine: many copies of any ``nn.Module`` trained at once with ``torch.func``.

The copies' parameters and buffers are stacked along a leading model axis (``stack_module_state``);
the model runs on them through ``functional_call``, and ``vmap(grad(mean_loss))`` gives every
copy the gradient of ITS OWN mean loss on ITS OWN batch in one call. The optimiser steps of
``training.batched`` then follow the single-model loop (``training.single``) exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from influence_bench.tasks.losses import Loss


@dataclass
class StackedModule:
    """B copies of ``template``'s architecture: ``params[name]`` and ``buffers[name]`` are [B, ...]."""

    template: nn.Module  # the architecture (its own weights are never used)
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    loss: Loss

    @classmethod
    def from_models(cls, models: list[nn.Module], loss: Loss, device: str | torch.device = "cpu") -> "StackedModule":
        params, buffers = stack_module_state(models)
        template = copy.deepcopy(models[0]).to("meta")
        return cls(template, {k: v.detach().to(device).clone() for k, v in params.items()},
                   {k: v.to(device).clone() for k, v in buffers.items()}, loss)

    @property
    def n_models(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every model on a shared input x [n, ...]: outputs [B, n, C]."""
        return vmap(self._call, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def mean_loss_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The gradient of each model's mean loss on its own batch (x [B, bs, ...], y [B, bs, ...]),
        in ``parameters()`` order."""

        def mean_loss(params, buffers, xb, yb):
            return self.loss.mean(self._call(params, buffers, xb), yb)

        grads = vmap(grad(mean_loss), in_dims=(0, 0, 0, 0))(self.params, self.buffers, x, y)
        return [grads[k] for k in self.params]

    def per_example_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of every model on every example of a shared set: [B, n]."""
        with torch.no_grad():
            outputs = self.forward(x)
            return vmap(lambda out: self.loss.per_example(out, y))(outputs)

    def model(self, b: int, spec) -> nn.Module:
        """Model ``b`` as a plain module of the task's architecture."""
        model = spec.make_model()
        state = {k: v[b] for k, v in {**self.params, **self.buffers}.items()}
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
        return model
