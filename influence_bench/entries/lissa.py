"""``lissa``: LiSSA, the stochastic Neumann recursion for (GGN + damping I)^-1 (matrix-free)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from influence_bench.curvature import curvlinops_adapter, exact
from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS
from influence_bench.entries.base import Entry, register
from influence_bench.tasks.losses import Loss

RowsMatvec = Callable[[torch.Tensor], torch.Tensor]  # [k, P] -> [k, P]
SCALE_MARGIN = 1.5  # automatic scale = SCALE_MARGIN * (largest curvature eigenvalue + damping)
SCALE_PROBES = 10  # mini-batches whose largest GGN eigenvalue sets the automatic scale
POWER_ITERATIONS = 20
BLOWUP = 10.0  # a convergent recursion keeps ||h_t|| <= (t + 1) ||v||; this many times more is divergence


def minibatch_ggn(model: nn.Module, loss: Loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x [b, ...], rows [k, P]) -> G_b v for each row, G_b the GGN of the mean loss on x.

    G_b v = (1/b) J^T H J v with J v by forward mode (one per row, vmap), the loss Hessian in the
    outputs H in closed form (``Loss.hessian_product``: diag(p) - p p^T for cross-entropy), and one
    reverse pass shared by all rows. Equals curvlinops'
    GGN operator on the batch (tests/test_matrix_free.py) at a half to a third of its cost (it
    re-runs the forward pass and the loss Hessian for every row): LiSSA is thousands of such products.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    sizes = [p.numel() for p in params.values()]

    def matvec(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        k = rows.shape[0]
        logits_of = lambda p: functional_call(model, p, (x,))  # noqa: E731
        tangents = {name: t.reshape(k, *params[name].shape) for name, t in zip(params, rows.split(sizes, dim=1))}
        logits, pull_back = vjp(logits_of, params)  # [b, C]
        jv = vmap(lambda t: jvp(logits_of, (params,), (t,))[1])(tangents)  # [k, b, C]
        hjv = loss.hessian_product(logits, jv) / x.shape[0]
        (out,) = vmap(pull_back)(hjv)
        return torch.cat([t.reshape(k, -1) for t in out.values()], dim=1)

    return matvec


def minibatch_top_eigenvalue(model: nn.Module, x: torch.Tensor, loss: Loss) -> float:
    """Largest eigenvalue of the mini-batch GGN (1/b) B^T B, exactly, from the [b C, b C] Gram matrix
    B B^T of its square root B = [S_n^T J_n]_n (S_n S_n^T the loss Hessian in the outputs of point n)."""
    with torch.no_grad():
        sqrt_h = loss.hessian_sqrt(model(x))  # [b, C, C]
    root = torch.einsum("nck,ncp->nkp", sqrt_h, exact.per_example_jacobians(model, x)).flatten(0, 1)  # [b C, P]
    return float(torch.linalg.eigvalsh(root @ root.T)[-1]) / x.shape[0]


def largest_eigenvalue(matvec: RowsMatvec, dim: int, generator: torch.Generator,
                       iterations: int = POWER_ITERATIONS, device: str | torch.device = "cpu") -> float:
    """Power iteration from a random start (an estimate from below), drawn on the CPU (the same start
    on every device) and run on ``device``."""
    x = torch.randn(1, dim, dtype=torch.float64, generator=generator, device="cpu").to(device)
    eigenvalue = 0.0
    for _ in range(iterations):
        x = x / torch.linalg.norm(x)
        y = matvec(x)
        eigenvalue = float((x * y).sum())
        x = y
    return eigenvalue


@register
class LiSSA(Entry):
    """LiSSA (Agarwal, Bullins & Hazan 2017), as used for influence functions by Koh & Liang (2017).

    h_0 = v; h_t = v + (I - (C_t + damping I) / scale) h_{t-1}; result h_T / scale, averaged over
    ``repeats`` independent runs. C_t is the GGN of the mean loss on a mini-batch of ``batch_size``
    training points drawn with replacement at each step (``batch_size=None``: the full GGN, the
    deterministic truncated Neumann series). In expectation h_T / scale is the damped Neumann series
    truncated after ``depth`` terms, which converges to (C + damping I)^-1 v when 0 < C + damping I
    < 2 scale; directions with eigenvalue lam converge like (1 - (lam + damping) / scale)^depth, so
    at small damping LiSSA is effectively damped by ~scale / depth.

    ``scale=None`` chooses 1.5 x (the largest eigenvalue of the curvature the steps use + damping):
    for mini-batches the largest top eigenvalue of 10 sampled mini-batch GGNs (exact, from their
    Gram matrices); for the full GGN, 20 power iterations. Mini-batches need their own: their top
    eigenvalue is far above the full GGN's (digits-mlp: 0.49 full; up to ~5 for batches of 32, ~9
    for batches of 8, 232 for the worst single point), and a scale from the full GGN made the
    recursion diverge there for batches of 1 to 32. The random stream is re-seeded from ``seed`` at
    each call, so a call is deterministic and each row's result does not depend on the other rows.
    A diverging recursion (non-finite values, or an iterate norm above 10 (t + 1) ||v||) raises
    FloatingPointError.

    Defaults (depth 300, batches of 16, one run) are sized by cost: on digits-mlp (6,570 parameters,
    1,617 training points) a call on 64 rows takes ~5 s on one core of the shared 2-core machine
    (~16 ms a step), ~20 calls a benchmark run. They are far from converged at small damping
    (there scale / depth ~ 2e-2 >> the grid's dampings); on the tiny problem at damping 1e-2 they
    reach 0.58 relative error (depth 600: 0.34; 1000: 0.17).
    """

    name = "lissa"
    description = "LiSSA: stochastic Neumann recursion on mini-batch GGNs (Agarwal et al. 2017)"
    capabilities = frozenset({"operator"})
    inverse_rtol = 0.7  # truncated (and stochastic): 0.58 measured on the tiny problem at damping 1e-2

    def __init__(self, damping: float = DEFAULT_DAMPING, eps: float = DEFAULT_EPS, depth: int = 300,
                 scale: float | None = None, batch_size: int | None = 16, repeats: int = 1, seed: int = 0):
        super().__init__(damping, eps)
        self.depth = depth
        self.scale = scale
        self.batch_size = batch_size
        self.repeats = repeats
        self.seed = seed

    def get_params(self):
        return {**super().get_params(), "depth": self.depth, "scale": self.scale, "batch_size": self.batch_size,
                "repeats": self.repeats, "seed": self.seed}

    def fit(self, problem):
        self.operator_ = problem.ggn_operator
        self.ggn_of_ = (problem.model, problem.x_train, problem.y_train, problem.loss)  # what rebuilds the GGNs after unpickling
        self.x_train_ = problem.x_train
        self.batch_ggn_ = minibatch_ggn(problem.model, problem.loss)
        self.top_eigenvalue_ = self._top_eigenvalue(problem) if self.scale is None else None
        return self

    def __getstate__(self):
        """Without curvlinops' operator and the mini-batch GGN, closures that do not pickle: ``__setstate__``
        rebuilds them."""
        return {name: value for name, value in self.__dict__.items() if name not in ("operator_", "batch_ggn_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "ggn_of_" in state:
            self.operator_ = curvlinops_adapter.ggn_operator(*state["ggn_of_"])
            self.batch_ggn_ = minibatch_ggn(state["ggn_of_"][0], state["ggn_of_"][3])

    # -- the curvature of one step ---------------------------------------------------------------
    def _full_matvec(self) -> RowsMatvec:
        return curvlinops_adapter.rows_matvec(self.operator_)

    def _step_matvec(self, generator: torch.Generator) -> RowsMatvec:
        """C_t: the full GGN, or the GGN of a fresh mini-batch drawn with replacement."""
        if self.batch_size is None:
            return self._full_matvec()
        x = self._sample(generator)
        return lambda rows: self.batch_ggn_(x, rows)

    def _sample(self, generator: torch.Generator) -> torch.Tensor:
        """A mini-batch of training inputs, drawn with replacement: [batch_size, ...]."""
        rows = torch.randint(self.x_train_.shape[0], (self.batch_size,), generator=generator, device="cpu")
        return self.x_train_[rows.to(self.x_train_.device)]

    def _top_eigenvalue(self, problem) -> float:
        """The largest eigenvalue of the full GGN, or the largest over SCALE_PROBES sampled mini-batch GGNs."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.batch_size is None:
            return largest_eigenvalue(self._full_matvec(), problem.n_params, generator, device=problem.device)
        return max(minibatch_top_eigenvalue(problem.model, self._sample(generator), problem.loss) for _ in range(SCALE_PROBES))

    def _scale(self, damping: float) -> float:
        return self.scale if self.scale is not None else SCALE_MARGIN * (self.top_eigenvalue_ + damping)

    # -- the recursion ---------------------------------------------------------------------------
    def _recursion(self, v: torch.Tensor, damping: float, scale: float, generator: torch.Generator) -> torch.Tensor:
        """h_T of one run for each row of v [k, P]."""
        limit = BLOWUP * torch.linalg.norm(v, dim=1)
        h = v.clone()
        for t in range(1, self.depth + 1):
            curvature = self._step_matvec(generator)
            h = v + h - (curvature(h) + damping * h) / scale
            norm = torch.linalg.norm(h, dim=1)
            if not (torch.isfinite(norm).all() and (norm <= (t + 1) * limit).all()):
                self._diverged(t, damping, scale)
        return h

    def _diverged(self, step: int, damping: float, scale: float) -> None:
        raise FloatingPointError(
            f"LiSSA diverged at step {step} of depth={self.depth} (scale={scale:.4g}, batch_size={self.batch_size}, "
            f"damping={damping:.3g}): the iterate grew beyond {BLOWUP:g} (t + 1) ||v||. The recursion needs "
            f"scale above half the largest eigenvalue of every step's curvature + damping: increase `scale` "
            f"(or leave it None for the automatic choice) or `batch_size`.")

    def inverse(self, vectors, damping=None):
        self._check_fitted()
        damping = self._damping(damping)
        scale = self.last_scale_ = self._scale(damping)
        generator = torch.Generator().manual_seed(self.seed)
        v = vectors.to(torch.float64)
        runs = torch.stack([self._recursion(v, damping, scale, generator) for _ in range(self.repeats)])
        return runs.mean(0) / scale

    def curvature_matvec(self, vectors):
        self._check_fitted()
        return self._full_matvec()(vectors.to(torch.float64))

    def diagnostics(self):
        found = {"lissa_top_eigenvalue": getattr(self, "top_eigenvalue_", None),
                 "lissa_scale_last": getattr(self, "last_scale_", None)}
        return {name: value for name, value in found.items() if value is not None}
