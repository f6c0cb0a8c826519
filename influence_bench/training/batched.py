"""Batched retraining: many copies of a task's model trained at once with stacked parameters.

Model b has its own subset ``members[b]`` and seed ``seeds[b]``; it starts from exactly the
parameters of ``spec.init_model(seeds[b])``, sees the batches of ``epoch_order`` with its own
generator, and takes the same SGD steps as ``train_single`` -- only the gradients are batched.

Two engines give those gradients through one interface (``parameters()``, ``mean_loss_gradients``,
``per_example_loss``, ``model(b, spec)``): the generic one (``training.engine``: ``torch.func`` for
any ``nn.Module``) and, for a GELU MLP, the hand-written fast path below (``StackedMLP``: the
backward pass written out with ``torch.baddbmm`` over the model axis). ``engine="auto"`` takes the
fast path where it applies: ``benchmarks/benchmarks.py`` (``EngineThroughput``) measures both, and
the plain loop, on every task in one run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from influence_bench.tasks.losses import Loss
from influence_bench.tasks.models import MLP
from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe
from influence_bench.training.batch_order import epoch_order, n_steps_per_epoch
from influence_bench.training.engine import StackedModule

ENGINES = ("auto", "generic", "mlp")

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
}


@dataclass
class StackedMLP:
    """B MLPs: ``weights[l]: [B, out, in]``, ``biases[l]: [B, out]``; the hand-written fast path."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    activation: str
    loss: Loss

    @classmethod
    def from_models(cls, models: list[nn.Sequential], activation: str, loss: Loss,
                    device: str | torch.device = "cpu") -> "StackedMLP":
        linears = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
        n_layers = len(linears[0])
        weights = [torch.stack([ls[i].weight.detach() for ls in linears]).to(device) for i in range(n_layers)]
        biases = [torch.stack([ls[i].bias.detach() for ls in linears]).to(device) for i in range(n_layers)]
        return cls(weights, biases, activation, loss)

    @property
    def n_models(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n, d] (own inputs per model) or [n, d] (shared) -> logits [B, n, C]."""
        act = _ACTIVATIONS[self.activation]
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:
                h = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < last:
                h = act(h)
        return h

    def per_example_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of every model on every example of a shared set: [B, n]."""
        with torch.no_grad():
            outputs = self.forward(x)
            n_models, n, n_outputs = outputs.shape
            y_all = y.repeat(n_models, *([1] * (y.dim() - 1)))
            losses = self.loss.per_example(outputs.reshape(-1, n_outputs), y_all)
        return losses.view(n_models, n)

    def mean_loss_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        return mean_loss_gradients(self, x, y)

    def model(self, b: int, spec: TaskSpec) -> nn.Sequential:
        """Model ``b`` as a plain ``nn.Sequential`` of the task's architecture."""
        model = spec.make_model()
        linears = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, bias in zip(linears, self.weights, self.biases):
                lin.weight.copy_(w[b])
                lin.bias.copy_(bias[b])
        return model


def fast_path_reason(spec: TaskSpec) -> str | None:
    """Why the hand-written MLP path cannot train ``spec`` (None when it can)."""
    if not isinstance(spec.model, MLP):
        return f"the model is a {spec.model.factory}, not an MLP"
    if spec.model.activation != "gelu":
        return f"the MLP's activation is {spec.model.activation}; the written-out backward pass has GELU only"
    return None


def initial_stack(spec: TaskSpec, seeds: list[int], device: str | torch.device = "cpu",
                  engine: str = "auto") -> StackedMLP | StackedModule:
    """Stack ``spec.init_model(seed)`` for every seed (each seed built once), for the chosen engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    reason = fast_path_reason(spec)
    if engine == "mlp" and reason:
        raise ValueError(f"the mlp engine cannot train {spec.name}: {reason}")
    cache = {s: spec.init_model(s) for s in dict.fromkeys(seeds)}
    models = [cache[s] for s in seeds]
    if engine == "generic" or reason:
        return StackedModule.from_models(models, spec.loss, device)
    return StackedMLP.from_models(models, spec.model.activation, spec.loss, device)



def mean_loss_gradients(stack: StackedMLP, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of each model's mean loss on its own batch, by hand (no autograd).

    x: [B, bs, d], y: [B, bs, ...]. Returns gradients in ``stack.parameters()`` order. Backpropagation
    written out: dz_L = loss'(z_L) / bs (softmax - onehot for cross-entropy); dW_l = dz_l^T h_{l-1};
    db_l = sum dz_l; dz_{l-1} = act'(z_{l-1}) * (dz_l W_l).
    """
    if stack.activation != "gelu":
        raise NotImplementedError("the hand-written backward pass supports GELU only")
    hs, zs = [x], []
    last = len(stack.weights) - 1
    for i, (w, b) in enumerate(zip(stack.weights, stack.biases)):
        z = torch.baddbmm(b.unsqueeze(1), hs[-1], w.transpose(1, 2))
        zs.append(z)
        if i < last:
            hs.append(F.gelu(z))
    dz = stack.loss.output_gradient(zs[-1], y) / x.shape[1]
    grads: list[torch.Tensor] = []
    for i in range(last, -1, -1):
        grads.append(dz.sum(1))  # bias
        grads.append(torch.bmm(dz.transpose(1, 2), hs[i]))  # weight [B, out, in]
        if i > 0:
            dz = torch.ops.aten.gelu_backward(torch.bmm(dz, stack.weights[i]), zs[i - 1])
    return grads[::-1]


def sgd_step(stack, params: list[torch.Tensor], buffers: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             lr: float | torch.Tensor, momentum: float, weight_decay: float) -> None:
    """One step of every model, in place: SGD with momentum as ``torch.optim.SGD`` takes it."""
    grads = stack.mean_loss_gradients(x, y)
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    if isinstance(lr, torch.Tensor):  # compiled: a tensor rate, so that a schedule does not recompile
        torch._foreach_add_(params, torch._foreach_mul(buffers, lr), alpha=-1)
    else:
        torch._foreach_add_(params, buffers, alpha=-lr)


_COMPILED: dict[tuple[float, float], Callable] = {}
COMPILE_ENV = "INFLUENCE_BENCH_COMPILE"


def compiled_step(recipe: TrainingRecipe) -> Callable:
    """``sgd_step`` through ``torch.compile`` (Inductor: the GELUs, biases, softmax and the optimiser's
    updates fused into a few loops around the matrix products), one per momentum and weight decay;
    shapes are static, so each stack size compiles once per process (Inductor caches on disk)."""
    key = (recipe.momentum, recipe.weight_decay)
    if key in _COMPILED:
        return _COMPILED[key]
    eager = partial(sgd_step, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    chosen = [torch.compile(eager, dynamic=False)]

    def step(*args):
        try:
            return chosen[0](*args)
        except Exception as exc:  # noqa: BLE001 - Inductor fails before any update (no C++ compiler, say)
            if chosen[0] is eager:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training without it "
                          f"(set {COMPILE_ENV}=0 to skip the attempt)", RuntimeWarning, stacklevel=2)
            chosen[0] = eager
            return eager(*args)

    _COMPILED[key] = step
    return step


def default_compile(device: str | torch.device = "cpu") -> bool:
    """``$INFLUENCE_BENCH_COMPILE`` (0 or 1), else on for the CPU."""
    value = os.environ.get(COMPILE_ENV)
    if value is not None and value not in ("0", "1"):
        raise ValueError(f"${COMPILE_ENV}={value!r}: use 0 or 1")
    return value == "1" if value is not None else torch.device(device).type == "cpu"


def train_batched(
    spec: TaskSpec,
    data: TaskData,
    members: torch.Tensor,
    seeds: list[int],
    recipe: TrainingRecipe | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[float], None] | None = None,
    at_epoch_end: Callable[[int, float, StackedMLP | StackedModule], None] | None = None,
    engine: str = "auto",
    workers: int = 1,
    compile: bool = False,
) -> StackedMLP | StackedModule:
    """Train ``len(seeds)`` models; members: [B, n_train] bool with the same count in every row.

    SGD with momentum as ``torch.optim.SGD`` does it (buffer = momentum * buffer + grad, starting
    from the first gradient; p -= lr * buffer). ``on_epoch(models)`` is called after every epoch
    with the share of the batch done, in models, for progress bars; ``at_epoch_end(epoch, lr, stack)``
    after every epoch (1-based) with the rate it used, to keep checkpoints. engine: ``auto`` (the
    MLP fast path where it applies, else the generic engine), ``generic`` or ``mlp``.

    ``workers > 1`` splits the models over that many single-threaded worker processes
    (``training.parallel``; the same parameters per model) and reports progress as each group finishes;
    it applies on the CPU without ``at_epoch_end`` (checkpoints need the stack at every epoch), and with
    a spec and data that pickle (else this process trains them all, with a warning). ``compile=True``
    runs each step through ``torch.compile`` (``compiled_step``: the elementwise work fused, the same
    steps to float rounding).
    """
    recipe = recipe or spec.recipe
    members = torch.as_tensor(members, dtype=torch.bool).cpu()
    if members.dim() != 2 or members.shape[0] != len(seeds):
        raise ValueError(f"members must be [n_models, n_train] with one row per seed, got {tuple(members.shape)}")
    counts = members.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every model of one batch must train on the same number of points; group by subset size")
    if workers > 1 and len(seeds) > 1 and at_epoch_end is None and torch.device(device).type == "cpu":
        from influence_bench.training import parallel

        why = parallel.picklable(spec, data, recipe)
        if why is None:
            return parallel.train_in_workers(spec, data, members, list(seeds), recipe, device, engine, workers, on_epoch,
                                             compile)
        warnings.warn(f"training {len(seeds)} models of {spec.name} in this process: the task does not pickle "
                      f"for worker processes ({why})", RuntimeWarning, stacklevel=2)
    n_models, bs = len(seeds), recipe.batch_size
    steps = n_steps_per_epoch(int(counts[0]), bs, recipe.drop_last)

    stack = initial_stack(spec, seeds, device, engine)
    params = stack.parameters()
    buffers = [torch.zeros_like(p) for p in params]
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    step = compiled_step(recipe) if compile else partial(sgd_step, momentum=recipe.momentum, weight_decay=recipe.weight_decay)

    for epoch, lr in enumerate(recipe.learning_rates(), start=1):
        orders = torch.stack([epoch_order(g, m) for g, m in zip(generators, members)]).to(device)
        rate = torch.tensor(lr, dtype=params[0].dtype, device=device) if compile else lr
        for k in range(steps):
            idx = orders[:, k * bs : (k + 1) * bs]  # [B, bs]
            step(stack, params, buffers, x_train[idx], y_train[idx], rate)
        if on_epoch is not None:
            on_epoch(n_models / recipe.epochs)
        if at_epoch_end is not None:
            at_epoch_end(epoch, lr, stack)
    return stack
