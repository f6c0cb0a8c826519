"""The batch order shared by every training of a task (single or batched).

Each epoch draws a permutation of ALL training indices from the model's own generator
(``torch.Generator().manual_seed(seed)``) and keeps the members of the model's subset in that order.
So a leave-one-out model sees the full-data model's order with one index removed, and a masked
model sees a uniform random order of its subset. The last partial batch is dropped.
"""

from __future__ import annotations

import torch


def epoch_order(generator: torch.Generator, member: torch.Tensor) -> torch.Tensor:
    """Indices of one epoch: ``perm[member[perm]]`` for ``perm = randperm(n_train)``. member: [n_train] bool."""
    perm = torch.randperm(member.shape[0], generator=generator)
    return perm[member[perm]]


def n_steps_per_epoch(n_subset: int, batch_size: int, drop_last: bool = True) -> int:
    return n_subset // batch_size if drop_last else -(-n_subset // batch_size)
