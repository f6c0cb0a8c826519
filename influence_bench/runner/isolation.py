"""Entries (and the GGN reference) in processes of their own.

A crash, a NaN or a memory peak stays with its process; peak memory is that process's own. The
parent writes a job (``job.json``, the shared gradients, the reference model) into a work
directory; ``python -m influence_bench.runner.isolation WORKDIR --entry NAME`` evaluates one entry
and writes its ``EntryResult`` to ``WORKDIR/entries/NAME/``; ``--reference`` builds the GGN
reference into ``WORKDIR/reference.pt``. An entry given as an object (not a registered name) is
pickled into its directory first.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from influence_bench.entries.base import Entry
from influence_bench.runner.evaluation import EntryResult, EvalSettings, evaluate_entry, failed

REFERENCE_FILE = "reference.pt"
HESSIAN_FILE = "hessian.pt"
SHARED_TIMES_FILE = "shared_times.json"


@dataclass
class Job:
    """What every process of a run needs to rebuild the problem (all small or on disk)."""

    task: str
    preset: str
    cache_dir: str | None
    checkpoint: str
    gradients: str
    damping: float
    eps: float
    dense_limit: int
    plugins: list[str]
    shared: list[str]  # dense matrices some entry reads ("ggn", "hessian"): computed once, in the reference process
    alphas: list[float] | None = None  # a subset of the preset's alphas (None: all of them)

    def write(self, workdir: Path) -> None:
        (workdir / "job.json").write_text(json.dumps(self.__dict__))

    @classmethod
    def read(cls, workdir: Path) -> "Job":
        return cls(**json.loads((workdir / "job.json").read_text()))

    @property
    def settings(self) -> EvalSettings:
        return EvalSettings(self.damping, self.eps)


def load_problem(job: Job):
    """The problem and the ground truth, rebuilt from the job (the gradients are the parent's)."""
    from influence_bench.groundtruth import build_lds_groundtruth, get_preset
    from influence_bench.problem import InfluenceProblem
    from influence_bench.runner.plugins import load_plugins
    from influence_bench.tasks import get_task

    load_plugins(job.plugins)
    spec = get_task(job.task)
    model = spec.make_model()
    model.load_state_dict(torch.load(job.checkpoint, weights_only=True))
    problem = InfluenceProblem(model, spec.data, name=spec.key, dense_limit=job.dense_limit)
    grads = torch.load(job.gradients, weights_only=True)
    problem.set_gradients(grads["train"], grads["test"])
    preset = get_preset(job.preset).with_alphas(tuple(job.alphas) if job.alphas else None)
    gt = build_lds_groundtruth(spec, preset, Path(job.cache_dir) if job.cache_dir else None, progress=False)
    return problem, gt


def entry_dir(workdir: Path, name: str) -> Path:
    return workdir / "entries" / name


# -- in the worker ----------------------------------------------------------------------------------
def build_reference_here(workdir: Path) -> int:
    from influence_bench.runner.shared import prepare_shared

    job = Job.read(workdir)
    problem, _ = load_problem(job)
    reference, times, stats = prepare_shared(problem, job.damping, job.eps, set(job.shared))
    if problem.is_computed("hessian"):
        _save(workdir / HESSIAN_FILE, lambda p: torch.save(problem.hessian, p))
    _save(workdir / SHARED_TIMES_FILE, lambda p: p.write_text(json.dumps({"times": times, "stats": stats})))
    _save(workdir / REFERENCE_FILE, reference.save)  # last: its presence means everything is there
    return 0


def _save(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def share_dense(problem, entry: Entry, workdir: Path, reference) -> None:
    """Give the problem the run's dense GGN / Hessian where the entry reads them (mapped, not copied)."""
    if "ggn" in entry.uses and reference.ggn is not None:
        problem.share("ggn", reference.ggn)
        problem.share_ggn_eigen(reference.eigvals.flip(0), reference.ggn_eigvecs)
    if "hessian" in entry.uses and (workdir / HESSIAN_FILE).exists():
        problem.share("hessian", torch.load(workdir / HESSIAN_FILE, weights_only=True, mmap=True))


def evaluate_here(workdir: Path, name: str) -> int:
    out = entry_dir(workdir, name)
    try:
        job = Job.read(workdir)
        problem, gt = load_problem(job)
        entry = instantiate(out, name, job)
        from influence_bench.metrics.reference import GGNReference

        reference = GGNReference.load(workdir / REFERENCE_FILE)
        share_dense(problem, entry, workdir, reference)
        result = evaluate_entry(entry, problem, gt, job.settings, lambda: reference)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, never a lost run
        result = failed(name, f"{type(exc).__name__}: {exc}")
        (out / "traceback.txt").write_text(traceback.format_exc())
    result.save(out)
    return 0 if result.status != "failed" else 1


def instantiate(out: Path, name: str, job: Job) -> Entry:
    pickled = out / "entry.pkl"
    if pickled.exists():
        return pickle.loads(pickled.read_bytes())
    from influence_bench.entries import make_entry

    return make_entry(name, damping=job.damping, eps=job.eps)


# -- in the parent ----------------------------------------------------------------------------------
THREADS_ENV = "INFLUENCE_BENCH_THREADS"


def _run(workdir: Path, args: list[str], timeout_s: float, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    if threads:
        env.update({THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)})
    return subprocess.run([sys.executable, "-m", "influence_bench.runner.isolation", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the worker, before it starts: SIGKILL it when the run's process dies (Linux), so a killed run
    leaves no worker behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(proc: subprocess.CompletedProcess) -> str:
    return " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])


def build_reference_isolated(workdir: Path, timeout_s: float) -> tuple[Path, dict[str, float], dict[str, float]]:
    """Build the GGN reference (and the shared dense matrices) in a process of its own: its path, the
    seconds each shared piece took and the Hessian's statistics (raises RuntimeError on failure)."""
    try:
        proc = _run(workdir, ["--reference"], timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"building the GGN reference timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not (workdir / REFERENCE_FILE).exists():
        raise RuntimeError(f"building the GGN reference failed (exit code {proc.returncode}): {_tail(proc)}")
    shared = json.loads((workdir / SHARED_TIMES_FILE).read_text())
    return workdir / REFERENCE_FILE, shared["times"], shared["stats"]


def evaluate_all_isolated(workdir: Path, entries: list, timeout_s: float, jobs: int = 1,
                          on_done=lambda result: None) -> list[EntryResult]:
    """Every entry in its own process, ``jobs`` at a time (each with cores // jobs threads); in order."""
    if jobs == 1:
        out = []
        for e in entries:
            out.append(evaluate_isolated(workdir, e, timeout_s))
            on_done(out[-1])
        return out
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)

    def one(e):
        result = evaluate_isolated(workdir, e, timeout_s, threads)
        on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait for their processes
        return list(pool.map(one, entries))


def evaluate_isolated(workdir: Path, entry: str | Entry, timeout_s: float, threads: int | None = None) -> EntryResult:
    name = entry if isinstance(entry, str) else entry.name
    out = entry_dir(workdir, name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if isinstance(entry, Entry):
        try:
            (out / "entry.pkl").write_bytes(pickle.dumps(entry))
        except Exception as exc:  # noqa: BLE001
            return failed(name, f"the entry object cannot be pickled for its own process ({type(exc).__name__}: "
                                f"{exc}); register its class in an importable module, or run with isolate=False")
    try:
        proc = _run(workdir, ["--entry", name], timeout_s, threads)
    except subprocess.TimeoutExpired:
        return failed(name, f"timed out after {timeout_s:.0f} s (raise --entry-timeout)")
    if not (out / "result.json").exists():
        return failed(name, f"its process exited with code {proc.returncode} without a result "
                            f"(killed for memory?): {_tail(proc)}")
    return EntryResult.load(out)


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    workdir = Path(argv[0])
    if argv[1] == "--reference":
        return build_reference_here(workdir)
    if argv[1] == "--entry":
        return evaluate_here(workdir, argv[2])
    raise SystemExit("usage: python -m influence_bench.runner.isolation WORKDIR (--reference | --entry NAME)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
