"""The metric registry: every metric declares its direction, what it needs and when it applies.

A metric family is one module (``matrix``, ``spectrum``, ``inverse``); each registers functions that
take a ``MetricContext`` (the fitted entry, the problem, the GGN reference, the entry's inverse
products at the fixed damping) and return ``Measured`` values. A metric that does not apply returns
``not_applicable(reason)``; one computed from an estimate (above the dense limit, or for an entry with
only an operator) says so in ``estimated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from influence_bench.entries.base import Entry
    from influence_bench.metrics.reference import GGNReference
    from influence_bench.problem import InfluenceProblem


@dataclass(frozen=True)
class Measured:
    value: float
    estimated: bool = False
    status: str = "ok"  # "ok" or "not applicable"
    message: str = ""


def not_applicable(reason: str) -> Measured:
    return Measured(math.nan, status="not applicable", message=reason)


@dataclass
class MetricContext:
    entry: "Entry"
    problem: "InfluenceProblem"
    reference: "GGNReference"
    damping: float
    eps: float
    ihvp: torch.Tensor | None  # [q, P]: the entry's inverse applied to the reference's query gradients
    scores: torch.Tensor  # [q, n_train]: the entry's scores for the reference's queries, fixed damping (on the CPU)
    cache: dict = field(default_factory=dict)  # shared work between metrics of one entry (Lanczos, ...)


@dataclass(frozen=True)
class Metric:
    name: str
    family: str
    higher_is_better: bool
    description: str
    needs: frozenset[str]  # entry capabilities, any of which suffices ("curvature": eigen or operator)
    compute: Callable[[MetricContext], dict[str, Measured]]  # may return sub-metrics ("name/layer0")


METRICS: dict[str, Metric] = {}


def register_metric(name: str, family: str, higher_is_better: bool, description: str, needs: tuple[str, ...] = ()):
    """Decorator: register ``compute(context) -> Measured | dict[str, Measured]`` as a metric."""

    def wrap(fn):
        def compute(ctx: MetricContext) -> dict[str, Measured]:
            out = fn(ctx)
            return out if isinstance(out, dict) else {name: out}

        METRICS[name] = Metric(name, family, higher_is_better, description, frozenset(needs), compute)
        return fn

    return wrap


def applies(metric: Metric, entry: "Entry") -> str | None:
    """Why the metric does not apply to this entry (None when it does)."""
    if not metric.needs:
        return None
    have = set(entry.capabilities)
    if "curvature" in metric.needs and (have & {"eigen", "operator"}):
        return None
    if have & metric.needs:
        return None
    return f"needs a curvature ({' or '.join(sorted(metric.needs))}); entry {entry.name!r} declares none"


def direction(metric_name: str) -> bool | None:
    metric = METRICS.get(metric_name.split("/")[0])
    return metric.higher_is_better if metric else None


def compute_all(ctx: MetricContext) -> dict[str, Measured]:
    """Every registered metric for one entry (a metric that raises fails the entry's metrics, loudly)."""
    import influence_bench.metrics.inverse  # noqa: F401 - the families register themselves
    import influence_bench.metrics.matrix  # noqa: F401
    import influence_bench.metrics.mislabel  # noqa: F401
    import influence_bench.metrics.spectrum  # noqa: F401

    out: dict[str, Measured] = {}
    for metric in METRICS.values():
        reason = applies(metric, ctx.entry)
        if reason:
            out[metric.name] = not_applicable(reason)
            continue
        out.update(metric.compute(ctx))
    return out
