"""Run the hot-path benchmarks and gate them against this machine's saved baseline.

    python benchmarks/hot_paths/gate.py            # compare with the newest baseline; exit 1 when a median
                                                   # is more than FAIL_MEDIAN_PERCENT % above the baseline's
    python benchmarks/hot_paths/gate.py --record   # record a new baseline (after an intended change)

Without a baseline for this machine the first run records one. Baselines are pytest-benchmark's saved
runs, ``.benchmarks/<machine id>/NNNN_baseline.json`` in the repository root (git-ignored: a timing
belongs to the machine that took it). Further arguments go to pytest (``-k kfac``).

The timer is the process's CPU time (``time.process_time``) of a single-threaded process (the
conftest pins every library to one thread): on a machine shared with other jobs, the time spent
waiting for a core is not charged to the code. Measured here beside another engineer's jobs on 2
cores: at load average 3.1 to 3.8 the medians of up to six CPU-time runs of each benchmark differed
by at most 38% (the per-example gradients, whose 85 MB output page-faults afresh on every call, in
kernel time that grows with the load; the others by 8 to 28%); in later runs (load average up to
5.2) unchanged code came out 55 to 83% above the baseline (the LDS, the K-FAC inverse). Two wall-time
runs differed by up to 65%. A 100% gate clears every spread measured here and still fails a path that
became twice as slow (an algorithmic regression: a factor made dense, a loop instead of vmap). On a
machine without other jobs, run the suite twice, measure the spread there and tighten the gate:
arguments after the gate's own override it (``--benchmark-compare-fail=median:25%``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pytest_benchmark.utils import get_machine_id

HERE = Path(__file__).resolve().parent
STORAGE = HERE.parents[1] / ".benchmarks"
FAIL_MEDIAN_PERCENT = 100
OPTIONS = [
    "--benchmark-enable",  # pyproject's addopts disable benchmarks for the test suite
    "-p", "no:randomly",  # file order: the same sequence of warm caches every time
    f"--benchmark-storage=file://{STORAGE}",
    "--benchmark-timer=time.process_time",
    "--benchmark-warmup=on", "--benchmark-warmup-iterations=3",  # vmap's first call alone takes 1.4 s
    "--benchmark-min-rounds=10",
    "--benchmark-columns=min,median,iqr,rounds",
]


def newest_baseline() -> Path | None:
    """The newest ``NNNN_baseline.json`` saved on this machine, or None."""
    found = sorted((STORAGE / get_machine_id()).glob("[0-9][0-9][0-9][0-9]_baseline.json"))
    return found[-1] if found else None


def main(argv: list[str]) -> int:
    record = "--record" in argv
    extra = [a for a in argv if a != "--record"]
    baseline = None if record else newest_baseline()
    suite = [str(HERE), *OPTIONS]
    if baseline is None:
        print(f"recording a baseline in {STORAGE / get_machine_id()}"
              + ("" if record else " (none saved on this machine yet)"), flush=True)
        return int(pytest.main([*suite, "--benchmark-save=baseline", *extra]))
    shown = baseline.relative_to(STORAGE.parent)
    print(f"gate: each median at most {FAIL_MEDIAN_PERCENT}% above {shown}", flush=True)
    return int(pytest.main([*suite, f"--benchmark-compare={baseline}",
                            f"--benchmark-compare-fail=median:{FAIL_MEDIAN_PERCENT}%", *extra]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
