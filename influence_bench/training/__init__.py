"""Training: the plain single-model loop and the batched retraining engine."""

from influence_bench.training.batch_order import epoch_order
from influence_bench.training.batched import StackedMLP, StackedModule, train_batched
from influence_bench.training.single import per_example_loss, train_single

__all__ = ["StackedMLP", "StackedModule", "epoch_order", "per_example_loss", "train_batched", "train_single"]
