"""The results schema: the one definition of what a run writes, shared by the runner, the report and
the tests.

A results directory holds:

  results.parquet / results.csv  the long table, one row per entry x track x metric (x alpha): COLUMNS
  lds_points.parquet             each test point's LDS per entry, track and alpha: POINT_COLUMNS
  bootstrap.npz                  per track/alpha the LDS of every entry on the same B paired resamples
                                 of test points and masks (``bootstrap_key(track, alpha, entry)`` ->
                                 [B]; tracks BOOTSTRAP_TRACKS), for paired intervals of any difference
                                 (PROTOCOL.md section 9)
  damping_grid.csv               every grid damping's dev-half LDS per entry: GRID_COLUMNS
  decomposition.csv, split.csv   the chain (PROTOCOL.md section 6) with paired intervals per step
  spectra.npz                    sorted per-layer eigenvalues of every curvature and of the GGN
  scores/ENTRY.{fixed,tuned}.npy [n_test, n_train] float64 scores (tuned: the tuned damping)
  reference.pt                   the trained reference model (state dict)
  manifest.json                  configuration, provenance, failures
"""

from __future__ import annotations

import math

import pandas as pd

RESULTS_FILE = "results.parquet"
RESULTS_CSV = "results.csv"
POINTS_FILE = "lds_points.parquet"
BOOTSTRAP_FILE = "bootstrap.npz"
GRID_FILE = "damping_grid.csv"
DECOMPOSITION_FILE = "decomposition.csv"
SPLIT_FILE = "split.csv"
SPECTRA_FILE = "spectra.npz"
MANIFEST_FILE = "manifest.json"
REFERENCE_FILE = "reference.pt"
SCORES_DIR = "scores"

TRACKS = ("fixed", "tuned")  # the two damping tracks of LDS and the metrics
ROW_TRACKS = TRACKS + ("cost", "diagnostics", "all")  # "all": an entry-level status row (failed, skipped)
# why an entry has no result (one status row, track "all"): it ran past --entry-timeout from its fit on,
# past --entry-memory, its process died without a result, it raised, or it returned NaN / inf / a wrong shape
FAILURE_STATUSES = ("timeout", "oom", "crashed", "error", "invalid-output")
STATUSES = ("ok", "not applicable", "skipped", *FAILURE_STATUSES)
# bootstrap track -> (score set, test queries): "fixed" over all queries (the chain of the fixed track),
# "tuned" on the held-out half (the ranking and the chain of the tuned track)
BOOTSTRAP_TRACKS = {"fixed": ("fixed", "all"), "tuned": ("tuned", "held_out")}
# metric names shared by the runner and the report
LDS, LDS_HELDOUT = "lds", "lds_heldout"  # LDS_HELDOUT: fixed damping on the held-out half (track "fixed")
COST_METRICS = ("fit_s", "fit_cpu_s", "score_s", "score_cpu_s", "score_s_spread", "total_s", "peak_rss_mb",
                "gpu_peak_mb")  # gpu_peak_mb: only where CUDA was available to the entry's process
# rows of SHARED_GRADIENTS: per-example gradients, the dense GGN and Hessian, the fidelity reference
SHARED_COST_METRICS = ("gradient_s", "gradient_cpu_s", "ggn_s", "ggn_eigen_s", "hessian_s", "reference_s")
MEAN_ALPHA = "mean"  # the alpha of decomposition.csv / split.csv rows averaged over alphas
SHARED_GRADIENTS = "(shared)"  # the work every entry shares: gradients, dense GGN / Hessian, the reference
RANKING_ALPHA = 0.5

# a row of the long table
ROW_COLUMNS = ("entry", "track", "metric", "alpha", "value", "ci_low", "ci_high", "ceiling", "n_undefined",
               "n_points", "higher_is_better", "damping", "estimated", "status", "message")
PROVENANCE_COLUMNS = ("task", "task_version", "task_fingerprint", "preset", "n_masks", "n_seeds", "seeds",
                      "influence_bench_version", "torch_version", "curvlinops_version", "numpy_version",
                      "python_version", "git_commit", "machine", "timestamp")
COLUMNS = ROW_COLUMNS + PROVENANCE_COLUMNS
POINT_COLUMNS = ("entry", "track", "alpha", "query", "lds")
GRID_COLUMNS = ("entry", "damping", "factor", "dev_lds", "chosen", "is_fixed", "at_edge")
DECOMPOSITION_COLUMNS = ("track", "alpha", "step", "from", "to", "lds_from", "lds_to", "drop", "drop_ci_low",
                         "drop_ci_high", "resolved", "share_of_ggn_to_kfac")
SPLIT_COLUMNS = ("track", "alpha", "change", "basis_first", "eigenvalues_first", "shapley", "shapley_ci_low",
                 "shapley_ci_high", "share_of_block_to_kfac")


PARAMETER_PREFIX = "param."  # one column per entry parameter: param.fisher, param.separate, ...


def with_parameter_columns(table: pd.DataFrame, points: dict[str, dict]) -> pd.DataFrame:
    """Add one ``param.NAME`` column per parameter of any entry in ``points`` (entry -> its full
    parameter point), as text (``"mc"``, ``"true"``); empty for rows of entries without it."""
    names = list(dict.fromkeys(k for params in points.values() for k in params))
    for name in names:
        values = {entry: str(params[name]).lower() for entry, params in points.items() if name in params}
        table[PARAMETER_PREFIX + name] = table.entry.map(values).fillna("")
    return table


def parameter_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(PARAMETER_PREFIX)]


def bootstrap_key(track: str, alpha: float, entry: str) -> str:
    return f"{track}|{float(alpha):.1f}|{entry}"


def row(entry: str, track: str, metric: str, value: float, higher_is_better: bool | None, **extra) -> dict:
    """One row of the long table; unknown keys are an error (the schema is closed)."""
    out = {"entry": entry, "track": track, "metric": metric, "alpha": math.nan, "value": float(value),
           "ci_low": math.nan, "ci_high": math.nan, "ceiling": math.nan, "n_undefined": math.nan,
           "n_points": math.nan, "higher_is_better": higher_is_better, "damping": math.nan, "estimated": False,
           "status": "ok", "message": ""}
    unknown = set(extra) - set(ROW_COLUMNS)
    if unknown:
        raise KeyError(f"not columns of the results table: {sorted(unknown)}")
    out.update(extra)
    return out


def failure_row(entry: str, message: str, status: str = "error") -> dict:
    if status not in FAILURE_STATUSES + ("skipped",):
        raise ValueError(f"not a failure status: {status!r}; known: {', '.join(FAILURE_STATUSES)}")
    return row(entry, "all", "status", math.nan, None, status=status, message=message)


class SchemaError(ValueError):
    """A results table that does not follow this schema."""


def is_failure(status) -> bool:
    return status in FAILURE_STATUSES


def validate(table: pd.DataFrame) -> pd.DataFrame:
    """Check a results table has every column and known statuses and tracks; returns it."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SchemaError(f"the results table lacks the columns {', '.join(missing)}: it was not written by this "
                          "version of `influence-bench run`; re-run it to write it again")
    bad = set(table.status.dropna()) - set(STATUSES)
    if bad:
        raise SchemaError(f"unknown statuses {sorted(bad)}; known: {', '.join(STATUSES)}")
    bad = set(table.track.dropna()) - set(ROW_TRACKS)
    if bad:
        raise SchemaError(f"unknown tracks {sorted(bad)}; known: {', '.join(ROW_TRACKS)}")
    return table
