"""One entry, in a process of its own: fit, score at every damping asked for, report cost.

``python -m influence_bench.runner.worker WORKDIR ENTRY`` reads ``WORKDIR/job.json`` and the shared
gradients, and writes ``WORKDIR/entries/ENTRY/``: ``scores.npy`` ([n_dampings, n_test, n_train]),
``curvature.pt`` (the eigen form, when the entry has one) and ``result.json`` (dampings, cost) --
or ``result.json`` with ``error`` and its traceback when the entry fails. Peak memory is the
resident set of this process.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

DAMPING_GRID_FACTORS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # x mean eigenvalue of the entry's curvature


def peak_rss_mb() -> float:
    """Peak resident set of this process (MB).

    Linux: VmHWM of /proc/self/status, which starts afresh at exec; ru_maxrss would carry over the
    high-water mark of the parent that forked this process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2))


def run_entry(workdir: Path, entry_name: str) -> int:
    out = workdir / "entries" / entry_name
    out.mkdir(parents=True, exist_ok=True)
    try:
        job = json.loads((workdir / "job.json").read_text())
        from influence_bench.entries import get_entry
        from influence_bench.problem import InfluenceProblem
        from influence_bench.runner.plugins import load_plugins
        from influence_bench.tasks import get_task

        load_plugins(job.get("plugins"))
        spec = get_task(job["task"])
        model = spec.make_model()
        model.load_state_dict(torch.load(job["checkpoint"], weights_only=True))
        problem = InfluenceProblem(model, spec.data, name=spec.key)
        grads = torch.load(workdir / "gradients.pt", weights_only=True)
        problem.set_gradients(grads["train"], grads["test"])
        entry = get_entry(entry_name)(damping=job["damping"], eps=job["eps"])
        torch.manual_seed(0)

        start = time.perf_counter()
        entry.fit(problem)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        fixed = entry.scores(problem)
        score_s = time.perf_counter() - start
        curv = entry.curvature_
        # without a curvature the damping changes nothing: nothing to tune
        grid = [f * entry.mean_eigenvalue() for f in DAMPING_GRID_FACTORS] if job["tune"] and curv is not None else []
        scores = [fixed] + [entry.scores(problem, damping=d) for d in grid]
        stacked = np.stack([np.asarray(s.detach().cpu(), dtype=np.float64) for s in scores])
        np.save(out / "scores.npy", stacked)
        if curv is not None:
            torch.save({"slices": [(s.start, s.stop) for s in curv.slices], "eigvals": curv.eigvals,
                        "eigvecs": curv.eigvecs, "kron": curv.kron}, out / "curvature.pt")
        _write(out / "result.json", {
            "entry": entry_name, "dampings": [job["damping"]] + grid, "fit_s": fit_s, "score_s": score_s,
            "peak_rss_mb": peak_rss_mb(), "has_curvature": curv is not None,
        })
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, never a lost run
        _write(out / "result.json", {
            "entry": entry_name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
        })
        return 1


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    sys.exit(run_entry(Path(sys.argv[1]), sys.argv[2]))
