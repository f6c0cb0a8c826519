"""Writing a results directory (the files of ``influence_bench.schema``), each file atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.runner.evaluation import EntryResult


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` beside ``path``, then rename over it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_results_dir(out: Path, table: pd.DataFrame, results: list[EntryResult], boot: dict[str, np.ndarray],
                      decomposition: pd.DataFrame, split: pd.DataFrame, spectra: dict[str, np.ndarray],
                      manifest: dict) -> None:
    schema.validate(table)
    atomic_write(out / schema.RESULTS_FILE, lambda p: table.to_parquet(p, index=False))
    atomic_write(out / schema.RESULTS_CSV, lambda p: table.to_csv(p, index=False))
    points = pd.DataFrame([p for r in results for p in r.points], columns=list(schema.POINT_COLUMNS))
    atomic_write(out / schema.POINTS_FILE, lambda p: points.to_parquet(p, index=False))
    grid = pd.DataFrame([g for r in results for g in r.grid], columns=list(schema.GRID_COLUMNS))
    atomic_write(out / schema.GRID_FILE, lambda p: grid.to_csv(p, index=False))
    atomic_write(out / schema.BOOTSTRAP_FILE, lambda p: np.savez(p, **boot))
    atomic_write(out / schema.DECOMPOSITION_FILE, lambda p: decomposition.to_csv(p, index=False))
    atomic_write(out / schema.SPLIT_FILE, lambda p: split.to_csv(p, index=False))
    atomic_write(out / schema.SPECTRA_FILE, lambda p: np.savez(p, **spectra))
    for r in results:
        for track, scores in (("fixed", r.scores_fixed), ("tuned", r.scores_tuned)):
            if scores is not None:  # valid scores are kept even when the entry's metrics failed
                atomic_write(out / schema.SCORES_DIR / f"{r.name}.{track}.npy", lambda p, s=scores: np.save(p, s))
    atomic_write(out / schema.MANIFEST_FILE, lambda p: p.write_text(json.dumps(manifest, indent=2, default=str)))
