"""Rows about the task rather than one entry: the reference model (training loss, gradient norm,
negative Hessian eigenvalues), the noise ceilings with their clipped points, and each entry's
leave-one-out correlations (computed here, in the parent, from the scores every entry returns).

Task-level rows carry the entry name ``schema.SHARED_GRADIENTS`` ("(shared)"), like the shared costs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from influence_bench import schema
from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.groundtruth.loo import LOOGroundTruth
from influence_bench.metrics.lds import noise_ceiling
from influence_bench.metrics.loo import loo_noise_ceiling, loo_rows
from influence_bench.problem import InfluenceProblem
from influence_bench.runner.evaluation import EntryResult, dev_eval_split

SHARED = schema.SHARED_GRADIENTS
NOISE_RELATIVE = 1e-8  # an eigenvalue below -NOISE_RELATIVE * max |eig| is negative beyond float64 round-off


def hessian_statistics(hessian: torch.Tensor) -> dict[str, float]:
    """How many eigenvalues of the dense Hessian are negative (all, and beyond round-off)."""
    eigvals = torch.linalg.eigvalsh(hessian.to(torch.float64))
    noise = NOISE_RELATIVE * float(eigvals.abs().max())
    return {"reference_negative_hessian_eigenvalues": float((eigvals < 0).sum()),
            "reference_negative_hessian_eigenvalues_beyond_noise": float((eigvals < -noise).sum()),
            "reference_min_hessian_eigenvalue": float(eigvals.min()),
            "reference_max_hessian_eigenvalue": float(eigvals.max())}


def reference_rows(problem: InfluenceProblem, hessian_stats: dict[str, float]) -> list[dict]:
    """Is the reference model at a stationary point? Its mean training loss, the norm of the gradient
    of that loss (the mean of the per-example gradients), and the Hessian's negative eigenvalues."""
    with torch.no_grad():
        loss = float(problem.loss.mean(problem.model(problem.x_train), problem.y_train))
    grad_norm = float(torch.linalg.norm(problem.train_grads.mean(0)))
    rows = [schema.row(SHARED, "diagnostics", "reference_train_loss", loss, False),
            schema.row(SHARED, "diagnostics", "reference_grad_norm", grad_norm, False,
                       message="norm of the gradient of the mean training loss at the reference model")]
    for key, value in hessian_stats.items():
        message = f"below -{NOISE_RELATIVE:g} x max |eigenvalue|" if key.endswith("beyond_noise") else ""
        rows.append(schema.row(SHARED, "diagnostics", key, value, None, message=message))
    return rows


def _queries(n_test: int, track: str) -> np.ndarray:
    """The test queries a track reports on: all (fixed), the held-out half (tuned)."""
    return np.arange(n_test) if track == "fixed" else dev_eval_split(n_test)[1]


def ceiling_rows(gt: LDSGroundTruth, loo: LOOGroundTruth | None) -> list[dict]:
    """The LDS noise ceiling per track and alpha, and the LOO ceilings, each with its clipped points."""
    rows = []
    n_test = gt.losses.shape[-1]
    for track in schema.TRACKS:
        q = _queries(n_test, track)
        for a, alpha in enumerate(gt.alphas):
            c = noise_ceiling(gt.losses[a][:, :, q])
            rows.append(schema.row(SHARED, track, "noise_ceiling", c.mean, True, alpha=float(alpha), ci_low=c.ci_low,
                                   ci_high=c.ci_high, n_undefined=c.n_undefined, n_points=c.n_points,
                                   message=f"{c.n_clipped} of {c.n_points} test points clipped at 0"))
        if loo is not None:
            for name, c in loo_noise_ceiling(restrict(loo, q)).items():
                rows.append(schema.row(SHARED, track, f"loo_{name}_ceiling", c.mean, True, ci_low=c.ci_low,
                                       ci_high=c.ci_high, n_undefined=c.n_undefined, n_points=c.n_points,
                                       message=f"{c.n_clipped} of {c.n_points} test points clipped at 0"))
    return rows


def restrict(loo: LOOGroundTruth, queries: np.ndarray) -> LOOGroundTruth:
    return dataclasses.replace(loo, losses_without=loo.losses_without[..., queries],
                               losses_full=loo.losses_full[..., queries])


def entry_loo_rows(result: EntryResult, loo: LOOGroundTruth) -> list[dict]:
    """LOO Pearson and Spearman of an entry on both tracks (tuned: the held-out queries, at its tuned damping)."""
    if not result.ok or result.scores_fixed is None:
        return []
    lds = {r["track"]: r["damping"] for r in result.rows if r["metric"] == schema.LDS}
    rows = []
    for track, scores in (("fixed", result.scores_fixed), ("tuned", result.scores_tuned)):
        q = _queries(scores.shape[0], track)
        rows += loo_rows(result.name, track, scores[q], restrict(loo, q), lds.get(track, float("nan")))
    return rows
