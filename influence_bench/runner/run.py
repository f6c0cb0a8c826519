"""``influence-bench run``: every selected entry against a task's ground truth, into a results directory.

Each entry runs in a process of its own (``runner.worker``), so a crash, a NaN or a memory peak
stays with that entry. The parent computes what every entry shares once (the per-example gradients,
timed separately; the exact GGN as the fidelity reference) and all metrics.

Results directory:
  results.parquet / results.csv   one long table: task x entry x track x metric (+ alpha), with
                                  direction, CI, ceiling, damping, status and provenance columns
  decomposition.csv, split.csv    the chain (PROTOCOL.md section 6), per track and alpha
  spectra.npz                     sorted per-layer eigenvalues of every curvature and of the GGN
  scores/ENTRY.fixed.npy          [n_test, n_train] float64 scores, fixed damping
  scores/ENTRY.tuned.npy          the same at the tuned damping
  reference.pt                    the trained reference model (state dict)
  manifest.json                   configuration, provenance, failures
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from influence_bench.curvature.eigen import DEFAULT_DAMPING, DEFAULT_EPS, EigenCurvature
from influence_bench.groundtruth import build_lds_groundtruth, get_preset, reference_model
from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.metrics.curvature import CURVATURE_METRICS, curvature_fidelity, layer_eigvals
from influence_bench.metrics.decomposition import basis_eigenvalue_split, chain_table
from influence_bench.metrics.lds import lds, noise_ceiling
from influence_bench.problem import InfluenceProblem
from influence_bench.runner.plugins import load_plugins
from influence_bench.runner.provenance import provenance
from influence_bench.tasks import get_task

TUNING_ALPHA = 0.5
SPLIT_SEED = 0  # dev / eval halves of the test queries
ENTRY_TIMEOUT_S = 3600


@dataclass
class RunConfig:
    task: str = "digits-mlp"
    preset: str = "standard"
    entries: list[str] | None = None  # None: every registered entry
    out_dir: Path | None = None
    cache_dir: Path | None = None
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)
    damping: float = DEFAULT_DAMPING
    eps: float = DEFAULT_EPS
    entry_timeout_s: float = ENTRY_TIMEOUT_S
    progress: bool = True


@dataclass
class EntryOutcome:
    name: str
    ok: bool
    message: str = ""
    dampings: list[float] = field(default_factory=list)
    scores: np.ndarray | None = None  # [n_dampings, n_test, n_train]
    curvature: EigenCurvature | None = None
    fit_s: float = math.nan
    score_s: float = math.nan
    peak_rss_mb: float = math.nan
    tuned_index: int = 0  # which of ``dampings`` the tuned track chose (set by ``evaluate``)


def dev_eval_split(n_test: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Half of the test queries pick the tuned damping (dev), the other half report it (eval)."""
    perm = np.random.default_rng(seed).permutation(n_test)
    return np.sort(perm[: n_test // 2]), np.sort(perm[n_test // 2 :])


# -- one entry, one process -------------------------------------------------------------------
def run_entry_process(workdir: Path, name: str, n_test: int, n_train: int, timeout_s: float) -> EntryOutcome:
    out = workdir / "entries" / name
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    try:
        proc = subprocess.run([sys.executable, "-m", "influence_bench.runner.worker", str(workdir), name],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return EntryOutcome(name, False, f"timed out after {timeout_s:.0f} s")
    result_file = out / "result.json"
    if not result_file.exists():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return EntryOutcome(name, False, f"worker exited with code {proc.returncode} without a result: {' | '.join(tail)}")
    result = json.loads(result_file.read_text())
    if "error" in result:
        return EntryOutcome(name, False, result["error"])
    scores = np.load(out / "scores.npy")
    expected = (len(result["dampings"]), n_test, n_train)
    if scores.shape != expected:
        return EntryOutcome(name, False, f"scores of shape {scores.shape[1:]}, expected [n_test, n_train] = {expected[1:]}")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        return EntryOutcome(name, False, f"scores contain {bad} NaN or infinite values")
    curvature = None
    if result["has_curvature"]:
        saved = torch.load(out / "curvature.pt", weights_only=True)
        curvature = EigenCurvature([slice(a, b) for a, b in saved["slices"]], saved["eigvals"], saved["eigvecs"],
                                   saved.get("kron"))
    return EntryOutcome(name, True, "", result["dampings"], scores, curvature,
                        result["fit_s"], result["score_s"], result["peak_rss_mb"])


# -- rows of the long table -----------------------------------------------------------------------
def _row(entry: str, track: str, metric: str, value: float, higher: bool | None, **extra) -> dict:
    row = {"entry": entry, "track": track, "metric": metric, "alpha": math.nan, "value": value,
           "ci_low": math.nan, "ci_high": math.nan, "ceiling": math.nan, "n_undefined": math.nan,
           "n_points": math.nan, "higher_is_better": higher, "damping": math.nan, "status": "ok", "message": ""}
    row.update(extra)
    return row


def lds_rows(entry: str, track: str, scores: np.ndarray, gt: LDSGroundTruth, points: np.ndarray,
             ceilings: dict[float, float], damping: float, metric: str = "lds") -> list[dict]:
    rows = []
    targets = gt.targets
    for a, alpha in enumerate(gt.alphas):
        s = lds(scores[points], gt.masks[a], targets[a][:, points])
        rows.append(_row(entry, track, metric, s.mean, True, alpha=float(alpha), ci_low=s.ci_low, ci_high=s.ci_high,
                         ceiling=ceilings[float(alpha)], n_undefined=s.n_undefined, n_points=s.n_points, damping=damping))
    return rows


def reported_damping(outcome: EntryOutcome, k: int) -> float:
    """The damping of score set k; NaN for an entry without a curvature (the damping changes nothing)."""
    return outcome.dampings[k] if outcome.curvature is not None else math.nan


def tune_damping(outcome: EntryOutcome, gt: LDSGroundTruth, dev: np.ndarray) -> int:
    """Index (into outcome.dampings) of the grid damping with the best LDS at alpha 0.5 on the dev half."""
    a = int(np.argmin(np.abs(gt.alphas - TUNING_ALPHA)))
    best, best_value = 1, -math.inf
    for k in range(1, len(outcome.dampings)):
        value = lds(outcome.scores[k][dev], gt.masks[a], gt.targets[a][:, dev]).mean
        if math.isfinite(value) and value > best_value:
            best, best_value = k, value
    return best


# -- the run ----------------------------------------------------------------------------------
def default_out_dir(task: str, preset: str) -> Path:
    return Path("results") / f"{task}-{preset}"


def run(config: RunConfig) -> tuple[Path, list[EntryOutcome]]:
    from influence_bench.entries import ENTRIES

    load_plugins(config.plugins)
    spec, preset = get_task(config.task), get_preset(config.preset)
    names = list(config.entries) if config.entries else list(ENTRIES)
    out = Path(config.out_dir or default_out_dir(spec.name, preset.name))
    (out / "scores").mkdir(parents=True, exist_ok=True)
    workdir = out / "_work"
    workdir.mkdir(exist_ok=True)

    gt = build_lds_groundtruth(spec, preset, config.cache_dir, device=config.device, progress=config.progress)
    model = reference_model(spec, config.cache_dir, device=config.device)
    torch.save(model.state_dict(), out / "reference.pt")
    problem = InfluenceProblem(model, spec.data, name=spec.key)

    start = time.perf_counter()
    train_grads, test_grads = problem.train_grads, problem.test_grads
    gradient_s = time.perf_counter() - start
    torch.save({"train": train_grads, "test": test_grads}, workdir / "gradients.pt")
    (workdir / "job.json").write_text(json.dumps({
        "task": spec.name, "checkpoint": str((out / "reference.pt").resolve()), "damping": config.damping,
        "eps": config.eps, "tune": True, "plugins": config.plugins,
    }))

    outcomes: list[EntryOutcome] = []
    bar = tqdm(names, desc="entries", unit="entry", disable=not config.progress)
    for name in bar:
        bar.set_postfix_str(name)
        if name not in ENTRIES:
            valid = ", ".join(ENTRIES)
            outcomes.append(EntryOutcome(name, False, f"unknown entry {name!r}; valid entries: {valid}"))
            continue
        outcomes.append(run_entry_process(workdir, name, problem.n_test, problem.n_train, config.entry_timeout_s))

    ggn = next((o for o in outcomes if o.ok and o.name == "ggn" and o.curvature is not None), None)
    if ggn is not None:  # the ggn entry's eigendecomposition is the fidelity reference: not computed twice
        problem.share_ggn_eigen(ggn.curvature)
    table, decomposition, split, spectra = evaluate(outcomes, problem, gt, config)
    table = pd.concat([table, pd.DataFrame([_row("(shared gradients)", "cost", "gradient_s", gradient_s, False)])],
                      ignore_index=True)
    meta = {"task": spec.name, "task_version": spec.version, "task_fingerprint": spec.fingerprint[:16],
            "preset": preset.name, "n_masks": preset.n_masks, "n_seeds": preset.n_seeds,
            "seeds": f"split={spec.split_seed} masks={spec.mask_seed} retrain=0..{preset.n_seeds - 1} "
                     f"reference={spec.reference_seed} bootstrap=0 dev-split={SPLIT_SEED}",
            **provenance()}
    for key, value in meta.items():
        table[key] = value
    for o in outcomes:
        if o.scores is not None:  # valid scores are kept even when the entry's metrics failed
            np.save(out / "scores" / f"{o.name}.fixed.npy", o.scores[0])
            np.save(out / "scores" / f"{o.name}.tuned.npy", o.scores[o.tuned_index])

    table.to_parquet(out / "results.parquet", index=False)
    table.to_csv(out / "results.csv", index=False)
    decomposition.to_csv(out / "decomposition.csv", index=False)
    split.to_csv(out / "split.csv", index=False)
    np.savez(out / "spectra.npz", **spectra)
    failures = [o for o in outcomes if not o.ok]
    (out / "manifest.json").write_text(json.dumps({
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        **meta, "entries": names, "failures": {o.name: o.message for o in failures},
    }, indent=2, default=str))
    shutil.rmtree(workdir, ignore_errors=True)
    return out, outcomes


def evaluate(outcomes: list[EntryOutcome], problem: InfluenceProblem, gt: LDSGroundTruth, config: RunConfig):
    """All metrics of all entries: the long table, the decomposition tables and the spectra."""
    _ = problem.ggn  # the full GGN, which every fidelity metric needs, first: its layer blocks are sliced from it
    dev, held_out = dev_eval_split(problem.n_test)
    everyone = np.arange(problem.n_test)
    ceiling_all = {float(a): noise_ceiling(gt.losses[i][:, :, everyone]).mean for i, a in enumerate(gt.alphas)}
    ceiling_eval = {float(a): noise_ceiling(gt.losses[i][:, :, held_out]).mean for i, a in enumerate(gt.alphas)}
    reference_scores = problem.ggn_eigen.bilinear_scores(
        problem.ggn_eigen.project(problem.test_grads), problem.ggn_eigen.project(problem.train_grads),
        config.damping, config.eps)
    rows: list[dict] = []
    spectra = {f"ggn/layer{i}": np.sort(e.numpy()) for i, e in enumerate(problem.ggn_layer_eigvals)}
    for o in outcomes:
        if o.ok:
            try:
                entry_rows, entry_spectra = evaluate_entry(o, problem, gt, config, reference_scores,
                                                           (dev, held_out, everyone), (ceiling_all, ceiling_eval))
                rows += entry_rows
                spectra.update(entry_spectra)
                continue
            except Exception as exc:  # noqa: BLE001 - one entry's bad output must not lose the others'
                o.ok, o.message = False, f"metrics failed: {type(exc).__name__}: {exc}"
        rows.append(_row(o.name, "all", "status", math.nan, None, status="failed", message=o.message))
    table = pd.DataFrame(rows)
    decomposition, split = decomposition_tables(table)
    return table, decomposition, split, spectra


def evaluate_entry(o: EntryOutcome, problem: InfluenceProblem, gt: LDSGroundTruth, config: RunConfig,
                   reference_scores: torch.Tensor, queries: tuple, ceilings: tuple) -> tuple[list[dict], dict]:
    """The rows (LDS on both tracks, fidelity, cost) and the per-layer spectra of one entry."""
    dev, held_out, everyone = queries
    ceiling_all, ceiling_eval = ceilings
    damping = partial(reported_damping, o)
    rows = lds_rows(o.name, "fixed", o.scores[0], gt, everyone, ceiling_all, damping(0))
    # the fixed track on the held-out half too, to compare with the tuned track on the same queries
    rows += lds_rows(o.name, "fixed", o.scores[0], gt, held_out, ceiling_eval, damping(0), "lds_heldout")
    o.tuned_index = tune_damping(o, gt, dev) if len(o.dampings) > 1 else 0
    rows += lds_rows(o.name, "tuned", o.scores[o.tuned_index], gt, held_out, ceiling_eval, damping(o.tuned_index))
    fidelity = curvature_fidelity(o.curvature, torch.from_numpy(o.scores[0]), problem, reference_scores,
                                  config.damping, config.eps)
    for metric, value in fidelity.items():
        info = CURVATURE_METRICS.get(metric.split("/")[0])
        rows.append(_row(o.name, "fixed", metric, value, info.higher_is_better if info else False,
                         damping=damping(0), status="ok" if math.isfinite(value) else "not applicable"))
    rows += [_row(o.name, "cost", "fit_s", o.fit_s, False), _row(o.name, "cost", "score_s", o.score_s, False),
             _row(o.name, "cost", "total_s", o.fit_s + o.score_s, False),
             _row(o.name, "cost", "peak_rss_mb", o.peak_rss_mb, False)]
    spectra = {}
    if o.curvature is not None:
        for i, layer in enumerate(problem.layer_slices):
            spectra[f"{o.name}/layer{i}"] = np.sort(layer_eigvals(o.curvature, layer).numpy())
    return rows, spectra


def decomposition_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chain and the basis/eigenvalue split for each track and alpha (and their mean over alphas)."""
    lds_rows_ = table[(table.metric == "lds") & (table.status == "ok")]
    chains, splits = [], []
    for (track, alpha), group in lds_rows_.groupby(["track", "alpha"]):
        values = dict(zip(group.entry, group.value))
        for frame, out in ((chain_table(values), chains), (basis_eigenvalue_split(values), splits)):
            frame.insert(0, "alpha", alpha)
            frame.insert(0, "track", track)
            out.append(frame)
    for track in lds_rows_.track.unique():
        mean = lds_rows_[lds_rows_.track == track].groupby("entry").value.mean().to_dict()
        for frame, out in ((chain_table(mean), chains), (basis_eigenvalue_split(mean), splits)):
            frame.insert(0, "alpha", "mean")
            frame.insert(0, "track", track)
            out.append(frame)
    empty = pd.DataFrame()
    return (pd.concat(chains, ignore_index=True) if chains else empty,
            pd.concat(splits, ignore_index=True) if splits else empty)


def summarize_for_console(table: pd.DataFrame) -> pd.DataFrame:
    """Entries x (LDS per alpha, both tracks) for printing."""
    lds_only = table[table.metric == "lds"]
    if lds_only.empty:
        return pd.DataFrame()
    pivot = lds_only.pivot_table(index="entry", columns=["track", "alpha"], values="value")
    return pivot


__all__ = ["RunConfig", "EntryOutcome", "run", "dev_eval_split", "summarize_for_console", "default_out_dir"]
