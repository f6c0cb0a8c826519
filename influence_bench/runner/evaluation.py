"""One entry, evaluated: fit, scores on both damping tracks, LDS, curvature metrics and cost.

The same function runs in the run's own process or in a worker process of its own
(``runner.isolation``); either way what it returns (``EntryResult``) is small: rows of the long
table, the dev-half LDS of every damping on the grid, each test point's LDS, per-layer spectra and
two score matrices. Nothing larger crosses a process boundary.

Damping (PROTOCOL.md section 7): the fixed track uses one damping for all entries, over all test
queries. The tuned track picks, per entry, the damping with the best LDS at alpha 0.5 on a fixed dev
half of the queries, from half-decade steps of 1e-3 to 10 times the entry's own mean eigenvalue plus
the fixed damping itself (so the pick is never worse than the fixed damping on the dev half), and
reports it on the other half.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from influence_bench import schema
from influence_bench.entries.base import Entry
from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.metrics.lds import lds, noise_ceiling
from influence_bench.problem import InfluenceProblem

TUNING_ALPHA = 0.5
SPLIT_SEED = 0  # dev / held-out halves of the test queries
GRID_FACTORS = tuple(10.0 ** (k / 2) for k in range(-6, 3))  # 1e-3, 3.2e-3, ..., 10: x mean eigenvalue
SCORE_REPEATS = 3  # the fixed-damping scores are timed this often when one pass is quick
QUICK_S = 2.0  # "quick": at most this many seconds per pass


class EntryOutputError(ValueError):
    """An entry returned something unusable (NaN, inf, a wrong shape or dtype)."""


@dataclass
class EvalSettings:
    damping: float
    eps: float
    tuning_alpha: float = TUNING_ALPHA
    split_seed: int = SPLIT_SEED


@dataclass
class EntryResult:
    name: str
    status: str  # "ok", "skipped" or one of schema.FAILURE_STATUSES
    message: str = ""
    rows: list[dict] = field(default_factory=list)
    grid: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    scores_fixed: np.ndarray | None = None  # [n_test, n_train]
    scores_tuned: np.ndarray | None = None  # [n_test, n_train]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return schema.is_failure(self.status)

    # -- across a process boundary: a directory of small files -------------------------------------
    def save(self, directory: Path) -> None:
        """Write into ``directory`` (which should be fresh); ``result.json`` last, as the completion mark."""
        directory.mkdir(parents=True, exist_ok=True)
        for track, scores in (("fixed", self.scores_fixed), ("tuned", self.scores_tuned)):
            if scores is not None:
                np.save(directory / f"scores.{track}.npy", scores)
        if self.spectra:
            np.savez(directory / "spectra.npz", **self.spectra)
        payload = {"name": self.name, "status": self.status, "message": self.message, "rows": self.rows,
                   "grid": self.grid, "points": self.points}
        tmp = directory / "result.json.tmp"
        tmp.write_text(json.dumps(payload, default=_json_default))
        tmp.replace(directory / "result.json")

    @classmethod
    def load(cls, directory: Path) -> "EntryResult":
        payload = json.loads((directory / "result.json").read_text())
        scores = {t: np.load(directory / f"scores.{t}.npy") if (directory / f"scores.{t}.npy").exists() else None
                  for t in ("fixed", "tuned")}
        spectra = {}
        if (directory / "spectra.npz").exists():
            with np.load(directory / "spectra.npz") as archive:
                spectra = {k: archive[k] for k in archive.files}
        return cls(payload["name"], payload["status"], payload["message"], payload["rows"], payload["grid"],
                   payload["points"], spectra, scores["fixed"], scores["tuned"])


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def failed(name: str, message: str, status: str = "error") -> EntryResult:
    return EntryResult(name, status, message, rows=[schema.failure_row(name, message, status)])


_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def classify(exc: BaseException) -> tuple[str, str]:
    """The status and message of an exception an entry raised: ``invalid-output`` for unusable scores,
    ``oom`` for an allocation the memory limit refused, ``error`` for the rest."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EntryOutputError):
        return "invalid-output", str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom", f"out of GPU memory: {message.splitlines()[0][:300]} (a smaller problem, or a larger GPU)"
    if isinstance(exc, MemoryError) or any(s in str(exc).lower() for s in _OUT_OF_MEMORY):
        return "oom", f"out of memory: {message.splitlines()[0][:300]} (raise --entry-memory)"
    return "error", message


def failed_with(name: str, exc: BaseException) -> EntryResult:
    status, message = classify(exc)
    return failed(name, message, status)


# -- helpers ----------------------------------------------------------------------------------------
def dev_eval_split(n_test: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Half of the test queries pick the tuned damping (dev), the other half report it (held out)."""
    perm = np.random.default_rng(seed).permutation(n_test)
    return np.sort(perm[: n_test // 2]), np.sort(perm[n_test // 2 :])


def reset_gpu_peak() -> bool:
    """Start this process's count of peak GPU memory; False where CUDA is not available (no row then)."""
    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def gpu_peak_mb() -> float:
    """The most GPU memory this process's tensors held since ``reset_gpu_peak`` (MB)."""
    return torch.cuda.max_memory_allocated() / 2**20


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


@dataclass
class Timed:
    wall_s: float
    cpu_s: float


def _synchronize() -> None:
    """Wait for queued GPU work (so that it counts in the timing that queued it)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> tuple[object, Timed]:
    _synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _synchronize()
    return out, Timed(time.perf_counter() - wall, time.process_time() - cpu)


def check_scores(name: str, scores: torch.Tensor, expected: tuple[int, int]) -> np.ndarray:
    """The scores as float64 numpy, or EntryOutputError saying what is wrong with them."""
    if not isinstance(scores, torch.Tensor):
        raise EntryOutputError(f"{name} returned scores of type {type(scores).__name__}, expected a torch.Tensor")
    if tuple(scores.shape) != expected:
        raise EntryOutputError(f"{name} returned scores of shape {tuple(scores.shape)}, expected "
                               f"[n_queries, n_train] = {list(expected)}")
    out = scores.detach().cpu().to(torch.float64).numpy()
    bad = int((~np.isfinite(out)).sum())
    if bad:
        raise EntryOutputError(f"{name} returned scores with {bad} NaN or infinite values")
    return out


def fixed_track(entry: Entry, problem: InfluenceProblem, damping: float) -> tuple[np.ndarray, torch.Tensor | None]:
    """Scores [n_test, n_train] at the fixed damping and, where the entry inverts, its inverse products [n_test, P]."""
    expected = (problem.n_test, problem.n_train)
    if entry.has("scores"):
        return check_scores(entry.name, entry.scores(problem, damping), expected), None
    ihvp = entry.inverse(problem.test_grads, damping)
    if tuple(ihvp.shape) != (problem.n_test, problem.n_params):
        raise EntryOutputError(f"{entry.name}.inverse returned shape {tuple(ihvp.shape)} for input "
                               f"{[problem.n_test, problem.n_params]}; it must keep the shape [k, P]")
    ihvp = ihvp.to(torch.float64)
    return check_scores(entry.name, -ihvp @ problem.train_grads.T, expected), ihvp


def damping_grid(mean_eigenvalue: float, fixed: float) -> list[tuple[float, float]]:
    """(damping, factor) pairs: half-decade factors of the mean eigenvalue, then the fixed damping (factor NaN)."""
    scale = abs(mean_eigenvalue)
    points = [(f * scale, f) for f in GRID_FACTORS] if math.isfinite(scale) and scale > 0 else []
    return points + [(fixed, math.nan)]


def alpha_index(gt: LDSGroundTruth, alpha: float) -> int:
    return int(np.argmin(np.abs(gt.alphas - alpha)))


def tune(entry: Entry, problem: InfluenceProblem, gt: LDSGroundTruth, settings: EvalSettings, fixed_scores: np.ndarray,
         dev: np.ndarray) -> tuple[float, list[dict], dict[float, np.ndarray]]:
    """The tuned damping, the grid rows, and the dev-half scores computed at each grid damping."""
    a = alpha_index(gt, settings.tuning_alpha)
    grid = damping_grid(entry.mean_eigenvalue(problem), settings.damping)
    dev_scores: dict[float, np.ndarray] = {}
    rows = []
    for damping, factor in grid:
        if factor != factor:  # the fixed damping: its scores exist already
            scores = fixed_scores[dev]
        else:
            scores = check_scores(entry.name, entry.scores(problem, damping, queries=torch.as_tensor(dev, device=problem.device)),
                                  (len(dev), problem.n_train))
        dev_scores[damping] = scores
        value = lds(scores, gt.masks[a], gt.targets[a][:, dev]).mean
        rows.append({"entry": entry.name, "damping": damping, "factor": factor, "dev_lds": value, "chosen": False,
                     "is_fixed": factor != factor, "at_edge": False})
    finite = [r for r in rows if math.isfinite(r["dev_lds"])]
    best = max(finite, key=lambda r: r["dev_lds"]) if finite else rows[-1]
    best["chosen"] = True
    dampings = sorted(r["damping"] for r in rows)
    best["at_edge"] = len(rows) > 1 and best["damping"] in (dampings[0], dampings[-1])
    return best["damping"], rows, dev_scores


def lds_rows(name: str, track: str, scores: np.ndarray, gt: LDSGroundTruth, queries: np.ndarray, damping: float,
             metric: str = "lds", message: str = "") -> tuple[list[dict], list[dict]]:
    """LDS rows per alpha (with CI and noise ceiling) and each test point's LDS. scores: [len(queries), n_train]."""
    rows, points = [], []
    for a, alpha in enumerate(gt.alphas):
        s = lds(scores, gt.masks[a], gt.targets[a][:, queries])
        ceiling = noise_ceiling(gt.losses[a][:, :, queries]).mean
        rows.append(schema.row(name, track, metric, s.mean, True, alpha=float(alpha), ci_low=s.ci_low,
                               ci_high=s.ci_high, ceiling=ceiling, n_undefined=s.n_undefined, n_points=s.n_points,
                               damping=damping, message=message))
        points += [{"entry": name, "track": track if metric == "lds" else f"{track}_heldout", "alpha": float(alpha),
                    "query": int(q), "lds": float(v)} for q, v in zip(queries, s.per_point)]
    return rows, points


# -- the evaluation ---------------------------------------------------------------------------------
def evaluate_entry(entry: Entry, problem: InfluenceProblem, gt: LDSGroundTruth, settings: EvalSettings,
                   reference: Callable[[], "object"], isolated: bool = True,
                   before_fit: Callable[[], None] = lambda: None) -> EntryResult:
    """Everything measured about one entry. ``reference()`` gives the GGN reference (loaded on demand);
    ``before_fit()`` is called just before the entry's fit (where an isolated entry's time limit starts).

    Raises what the entry raises; the caller turns it into a failed row.
    """
    name = entry.name
    reason = entry.skip(problem)
    if reason:
        return failed(name, reason, status="skipped")
    torch.manual_seed(0)
    on_gpu = reset_gpu_peak()
    before_fit()
    _, fit_t = timed(lambda: entry.fit(problem))
    (scores_fixed, ihvp), score_t = timed(lambda: fixed_track(entry, problem, settings.damping))
    repeats = [score_t.wall_s]
    while score_t.wall_s <= QUICK_S and len(repeats) < SCORE_REPEATS:
        repeats.append(timed(lambda: fixed_track(entry, problem, settings.damping))[1].wall_s)

    everyone = np.arange(problem.n_test)
    dev, held_out = dev_eval_split(problem.n_test, settings.split_seed)
    rows, points = lds_rows(name, "fixed", scores_fixed, gt, everyone, _shown(entry, settings.damping))
    more_rows, more_points = lds_rows(name, "fixed", scores_fixed[held_out], gt, held_out,
                                      _shown(entry, settings.damping), metric="lds_heldout")
    rows, points = rows + more_rows, points + more_points

    grid: list[dict] = []
    scores_tuned = scores_fixed
    if entry.has_damping:
        tuned, grid, dev_scores = tune(entry, problem, gt, settings, scores_fixed, dev)
        scores_tuned = np.empty_like(scores_fixed)
        scores_tuned[dev] = dev_scores[tuned]
        scores_tuned[held_out] = scores_fixed[held_out] if tuned == settings.damping else check_scores(
            name, entry.scores(problem, tuned, queries=torch.as_tensor(held_out, device=problem.device)), (len(held_out), problem.n_train))
        edge = next(r for r in grid if r["chosen"])["at_edge"]
        note = "the tuned damping is at an end of the grid: the optimum may lie outside it" if edge else ""
    else:
        tuned, note = math.nan, "no damping to tune (no curvature)"
    more_rows, more_points = lds_rows(name, "tuned", scores_tuned[held_out], gt, held_out, tuned, message=note)
    rows, points = rows + more_rows, points + more_points

    peak_mb = peak_rss_mb()  # the entry's own work (fit, scores, tuning), before the metrics load the reference
    gpu_mb = gpu_peak_mb() if on_gpu else None
    try:
        rows += metric_rows(entry, problem, settings, reference(), scores_fixed, ihvp)
    except Exception as exc:  # noqa: BLE001 - its valid scores are kept, its row says what failed
        message = f"metrics failed: {type(exc).__name__}: {exc}"
        return EntryResult(name, "error", message, [schema.failure_row(name, message)], grid, points, {},
                           scores_fixed, scores_tuned)
    rows += [schema.row(name, "diagnostics", key, value, None) for key, value in entry.diagnostics().items()]
    spread = (max(repeats) - min(repeats)) / float(np.median(repeats)) if len(repeats) > 1 else math.nan
    memory_note = "" if isolated else "in-process run: the peak of the whole process, not of this entry alone"
    rows += [schema.row(name, "cost", "fit_s", fit_t.wall_s, False),
             schema.row(name, "cost", "fit_cpu_s", fit_t.cpu_s, False),
             schema.row(name, "cost", "score_s", float(np.median(repeats)), False),
             schema.row(name, "cost", "score_cpu_s", score_t.cpu_s, False),
             schema.row(name, "cost", "score_s_spread", spread, False),
             schema.row(name, "cost", "total_s", fit_t.wall_s + float(np.median(repeats)), False),
             schema.row(name, "cost", "peak_rss_mb", peak_mb, False, message=memory_note)]
    if gpu_mb is not None:  # what the entry's own CUDA tensors held (0 for an entry that stays on the CPU)
        rows.append(schema.row(name, "cost", "gpu_peak_mb", gpu_mb, False, message=memory_note))
    return EntryResult(name, "ok", "", rows, grid, points, layer_spectra(entry, problem), scores_fixed, scores_tuned)


def _shown(entry: Entry, damping: float) -> float:
    """The damping recorded for a score set: NaN for an entry where damping changes nothing."""
    return damping if entry.has_damping else math.nan


def metric_rows(entry: Entry, problem: InfluenceProblem, settings: EvalSettings, reference, scores_fixed: np.ndarray,
                ihvp: torch.Tensor | None) -> list[dict]:
    from influence_bench.metrics.registry import MetricContext, compute_all, direction

    queries = reference.queries.cpu().numpy()
    ctx = MetricContext(entry, problem, reference, settings.damping, settings.eps,
                        None if ihvp is None else ihvp[queries], torch.from_numpy(scores_fixed[queries]))
    rows = []
    for metric, m in compute_all(ctx).items():
        rows.append(schema.row(entry.name, "fixed", metric, m.value, direction(metric),
                               damping=_shown(entry, settings.damping), estimated=m.estimated, status=m.status,
                               message=m.message))
    return rows


def layer_spectra(entry: Entry, problem: InfluenceProblem) -> dict[str, np.ndarray]:
    """Sorted eigenvalues of each layer's block of the entry's curvature (eigen entries below the dense limit)."""
    from influence_bench.metrics.spectrum import layer_eigvals

    if not entry.has("eigen") or not problem.dense_allowed:
        return {}
    curv = entry.eigen_form()
    return {f"{entry.name}/layer{i}": np.sort(layer_eigvals(curv, layer).cpu().numpy())
            for i, layer in enumerate(problem.layer_slices)}
