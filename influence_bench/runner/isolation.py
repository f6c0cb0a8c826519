"""Entries (and the GGN reference) in processes of their own, with a time and a memory limit.

A crash, a NaN or a memory peak stays with its process; peak memory is that process's own. The
parent writes a job (``job.json``, the shared gradients, the reference model) into a work
directory; a worker evaluates one entry and writes its ``EntryResult`` to
``WORKDIR/entries/NAME/`` (``main([WORKDIR, "--entry", NAME])``; ``--reference`` builds the GGN
reference into ``WORKDIR/reference.pt``). Workers are forked from a forkserver that has imported
torch and the entries once, so each starts in a fraction of a second; ``python -m
influence_bench.runner.isolation WORKDIR --entry NAME`` runs the same by hand. An entry given as an object (not a registered name) is
pickled into its directory first.

Limits. The worker writes ``fit.started`` just before the entry's ``fit``; the time limit counts
from there (the worker's start-up, imports and loading the problem do not count, up to
``STARTUP_TIMEOUT_S``). The memory limit is ``RLIMIT_DATA`` of the worker: an allocation past it
fails inside the entry, which becomes status ``oom``. Every outcome gets its own status
(``schema.FAILURE_STATUSES``): ``timeout``, ``oom``, ``crashed`` (the process died without a result:
``os._exit``, a segfault, the kernel's OOM killer), ``error``, ``invalid-output``.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import resource
import select
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from influence_bench.entries.base import Entry
from influence_bench.runner.evaluation import EntryResult, EvalSettings, evaluate_entry, failed, failed_with

REFERENCE_FILE = "reference.pt"
HESSIAN_FILE = "hessian.pt"
SHARED_TIMES_FILE = "shared_times.json"
FIT_STARTED_FILE = "fit.started"  # written by the worker just before fit: the time limit counts from it
LOG_FILE = "worker.log"  # the worker's stdout and stderr
STARTUP_TIMEOUT_S = 900.0  # a worker that has not reached fit by then is stopped (status "timeout")
POLL_S = 0.1


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
    checkpoints: str | None = None  # the reference training's checkpoints (groundtruth.Checkpoints), if read
    device: str = "cpu"  # where the entries fit and score (the problem's tensors live there)

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
    from influence_bench.plugins import load_plugins
    from influence_bench.tasks import get_task

    load_plugins(job.plugins, environment=False)  # located by the run, $INFLUENCE_BENCH_PLUGINS included
    spec = get_task(job.task)
    model = spec.make_model()
    model.load_state_dict(torch.load(job.checkpoint, weights_only=True))
    problem = InfluenceProblem.of_task(spec, model, job.dense_limit, device=job.device)
    grads = torch.load(job.gradients, weights_only=True)
    problem.set_gradients(grads["train"], grads["test"])
    if job.checkpoints:
        from influence_bench.groundtruth.reference import Checkpoints

        kept = Checkpoints.load(job.checkpoints)
        problem.set_checkpoints(kept.models(spec), kept.learning_rates)
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
        _save(workdir / HESSIAN_FILE, lambda p: torch.save(problem.hessian.cpu(), p))
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

        reference = GGNReference.load(workdir / REFERENCE_FILE, device=job.device)
        share_dense(problem, entry, workdir, reference)
        result = evaluate_entry(entry, problem, gt, job.settings, lambda: reference,
                                before_fit=lambda: (out / FIT_STARTED_FILE).write_text(repr(time.time())))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, never a lost run
        result = failed_with(name, exc)
        (out / "traceback.txt").write_text(traceback.format_exc())
    result.save(out)
    return 1 if result.failed else 0


def instantiate(out: Path, name: str, job: Job) -> Entry:
    pickled = out / "entry.pkl"
    if pickled.exists():
        return pickle.loads(pickled.read_bytes())
    from influence_bench.entries import make_entry

    return make_entry(name, damping=job.damping, eps=job.eps)


# -- in the parent ----------------------------------------------------------------------------------
THREADS_ENV = "INFLUENCE_BENCH_THREADS"


PRELOAD = ["influence_bench.runner.isolation", "influence_bench.entries", "influence_bench.groundtruth.lds",
           "influence_bench.groundtruth.loo", "influence_bench.metrics.registry", "influence_bench.metrics.reference",
           "influence_bench.runner.shared", "kronfluence"]  # kronfluence: the extra, where installed


def start_workers() -> multiprocessing.context.BaseContext:
    """The forkserver every worker is forked from: it imports torch, curvlinops and the entries once
    (``PRELOAD``), so a worker starts in a fraction of a second instead of importing them again.
    Call early (a run does, before it loads the ground truth): the server starts in the background."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return context


def _worker(args: list[str], log: str, env: dict, path: list[str], memory_mb: float | None, run_pid: int) -> None:
    """The body of a worker, forked from the forkserver: the run's environment and import path (the
    forkserver may be older than them), its output into ``log``, its limits, then ``main``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    _die_with_parent()
    _die_with_run(run_pid)
    _limit_memory(memory_mb)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts afresh (it would be the server's)
    except OSError:
        pass
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not its default process lock: a semaphore the worker's os._exit would leak
    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start(args: list[str], log: Path, threads: int | None = None,
           memory_mb: float | None = None) -> multiprocessing.Process:
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    if threads:
        env.update({THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)})
    process = start_workers().Process(target=_worker,
                                      args=(args, str(log), env, list(sys.path), memory_mb, os.getpid()))
    process.start()
    return process


def _die_with_parent() -> None:
    """In a worker: SIGKILL it when its parent, the forkserver, dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _die_with_run(pid: int) -> None:
    """In a worker: SIGKILL itself as soon as the run's process ``pid`` ends (a thread waits on its
    pidfd). The worker's parent is the forkserver, not the run, and the forkserver lives as long as any
    worker holds its pipe, so the parent-death signal alone would leave a killed run's workers behind."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): poll
        handle = None

    def wait() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:
            while _exists(pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, daemon=True, name="die-with-run").start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _limit_memory(memory_mb: float | None) -> None:
    """In a worker: its data segment (``RLIMIT_DATA``) at ``memory_mb``, so an allocation past it fails."""
    if memory_mb:
        limit = int(memory_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def default_memory_mb() -> float:
    """The default memory limit of one entry: 8 GiB, or 80 % of this machine's memory when that is less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return 8192.0
    return float(min(8192, int(0.8 * total)))


def _ended(returncode: int) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode)
        why = (" (the kernel's out-of-memory killer sends it: try fewer --jobs or a lower --entry-memory)"
               if sig == signal.SIGKILL else "")
        return f"its process was killed by {sig.name}{why}"
    return f"its process exited with code {returncode}"


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def build_reference_isolated(workdir: Path, timeout_s: float) -> tuple[Path, dict[str, float], dict[str, float]]:
    """Build the GGN reference (and the shared dense matrices) in a process of its own: its path, the
    seconds each shared piece took and the Hessian's statistics (raises RuntimeError on failure)."""
    log = workdir / "reference.log"
    process = _start([str(workdir), "--reference"], log)
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise RuntimeError(f"building the GGN reference timed out after {timeout_s:.0f} s")
    if process.exitcode != 0 or not (workdir / REFERENCE_FILE).exists():
        raise RuntimeError(f"building the GGN reference failed ({_ended(process.exitcode)}): {_log_tail(log)}")
    shared = json.loads((workdir / SHARED_TIMES_FILE).read_text())
    return workdir / REFERENCE_FILE, shared["times"], shared["stats"]


def evaluate_all_isolated(workdir: Path, entries: list, timeout_s: float, jobs: int = 1,
                          on_done=lambda result: None, memory_mb: float | None = None,
                          on_start=lambda name: None) -> list[EntryResult]:
    """Every entry in its own process, ``jobs`` at a time (each with cores // jobs threads); in order.
    ``on_start(name)`` and ``on_done(result)`` are called as each starts and finishes."""
    if jobs == 1:
        out = []
        for e in entries:
            on_start(e if isinstance(e, str) else e.name)
            out.append(evaluate_isolated(workdir, e, timeout_s, memory_mb=memory_mb))
            on_done(out[-1])
        return out
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)

    def one(e):
        on_start(e if isinstance(e, str) else e.name)
        result = evaluate_isolated(workdir, e, timeout_s, threads, memory_mb)
        on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait for their processes
        return list(pool.map(one, entries))


def evaluate_isolated(workdir: Path, entry: str | Entry, timeout_s: float, threads: int | None = None,
                      memory_mb: float | None = None) -> EntryResult:
    """One entry in a worker of its own: its result, or a failure row with its own status."""
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
    process = _start([str(workdir), "--entry", name], out / LOG_FILE, threads, memory_mb)
    stopped = _watch(process, out, timeout_s)
    if stopped:
        return failed(name, stopped, status="timeout")
    if (out / "result.json").exists():
        return EntryResult.load(out)
    return failed(name, f"{_ended(process.exitcode)} without a result: {_log_tail(out / LOG_FILE)}",
                  status="crashed")


def _watch(process: multiprocessing.Process, out: Path, timeout_s: float) -> str:
    """Wait for the worker; stop it past its limit. Returns why it was stopped ("" if it ended)."""
    started = time.time()
    while process.is_alive():
        marker = out / FIT_STARTED_FILE
        fit_started = _read_time(marker) if marker.exists() else None
        now = time.time()
        if fit_started is None and now - started > STARTUP_TIMEOUT_S:
            why = f"its process did not reach fit within {STARTUP_TIMEOUT_S:.0f} s of starting"
        elif fit_started is not None and now - fit_started > timeout_s:
            why = f"timed out: still running {timeout_s:g} s after its fit started (raise --entry-timeout)"
        else:
            process.join(POLL_S)
            continue
        process.kill()
        process.join()
        return why
    process.join()
    return ""


def _read_time(marker: Path) -> float | None:
    try:
        return float(marker.read_text())
    except (OSError, ValueError):  # being written
        return None


def _log_tail(log: Path) -> str:
    try:
        return _tail(log.read_text(errors="replace"))
    except OSError:
        return "(no output)"


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
