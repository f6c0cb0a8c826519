"""What a run computes once and shares between entries: the dense exact GGN, its eigendecomposition
and the dense Hessian (below the dense limit) and the GGN reference of the fidelity metrics, each timed once (PROTOCOL.md section 8:
shared work is timed separately, not charged to the entries that read it)."""

from __future__ import annotations

import time
from typing import Iterable

from influence_bench.metrics.reference import GGNReference, build_reference
from influence_bench.problem import InfluenceProblem


def shared_needs(entry_classes: Iterable[type]) -> set[str]:
    """The dense matrices ("ggn", "hessian") that any of the entries declares it reads."""
    needs: set[str] = set()
    for cls in entry_classes:
        needs |= set(getattr(cls, "uses", ()))
    return needs


def prepare_shared(problem: InfluenceProblem, damping: float, eps: float,
                   needs: set[str]) -> tuple[GGNReference, dict[str, float], dict[str, float]]:
    """Build the reference (and the dense Hessian where an entry needs it); wall seconds of each, and
    the Hessian's negative-eigenvalue counts where it was built."""
    from influence_bench.runner.task_rows import hessian_statistics

    times, stats = {}, {}
    if problem.dense_allowed:
        start = time.perf_counter()
        _ = problem.ggn
        times["ggn_s"] = time.perf_counter() - start
        start = time.perf_counter()
        _ = problem.ggn_eigen
        times["ggn_eigen_s"] = time.perf_counter() - start
        if "hessian" in needs:
            start = time.perf_counter()
            _ = problem.hessian
            times["hessian_s"] = time.perf_counter() - start
            stats = hessian_statistics(problem.hessian)
    start = time.perf_counter()
    reference = build_reference(problem, damping, eps)
    times["reference_s"] = time.perf_counter() - start
    return reference, times, stats
