"""The plain single-model PyTorch loop: the recipe's definition and the batched engine's reference."""

from __future__ import annotations

import torch
from torch import nn

from influence_bench.tasks.losses import Loss
from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe
from influence_bench.training.batch_order import epoch_order, n_steps_per_epoch


def train_single(
    spec: TaskSpec,
    data: TaskData,
    member: torch.Tensor,
    seed: int,
    recipe: TrainingRecipe | None = None,
) -> nn.Module:
    """Train one model on the training points where ``member`` ([n_train] bool) is True."""
    recipe = recipe or spec.recipe
    model = spec.init_model(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = None
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs, eta_min=recipe.eta_min)
    generator = torch.Generator().manual_seed(seed)
    steps = n_steps_per_epoch(int(member.sum()), recipe.batch_size, recipe.drop_last)
    for _ in range(recipe.epochs):
        order = epoch_order(generator, member)
        for k in range(steps):
            idx = order[k * recipe.batch_size : (k + 1) * recipe.batch_size]
            opt.zero_grad()
            spec.loss.mean(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        if scheduler is not None:
            scheduler.step()
    return model


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """The loss of each example: [n]."""
    with torch.no_grad():
        return loss.per_example(model(x), y)
