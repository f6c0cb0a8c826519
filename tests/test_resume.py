"""A run killed with SIGKILL resumes; a results directory is never mixed between configurations; two
ground-truth builders share the work through a lock."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from influence_bench import schema
from influence_bench.runner.resume import ENTRIES_DIR, RUN_FILE

TESTS = Path(__file__).parent
ENTRIES = "identity,test-sleeps,kfac"
OUTCOME_COLUMNS = ["entry", "track", "metric", "alpha", "value", "ci_low", "ci_high", "status"]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "influence_bench.cli", "run", "--task", "digits-tiny", "--preset", "smoke",
            "--plugins", "resume_plugins", "--entries", ENTRIES, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return root, dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                      INFLUENCE_BENCH_CACHE=str(root / "cache"))


def outcomes(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / schema.RESULTS_FILE)
    table = table[~table.track.isin(["cost"])][OUTCOME_COLUMNS]
    return table.sort_values(OUTCOME_COLUMNS[:4]).reset_index(drop=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split()[2] != "Z"


def test_a_killed_run_resumes_with_only_the_unfinished_entries_and_matches_an_uninterrupted_one(env):
    """Also the determinism check (issue: the same command twice gives bitwise-identical scores and metrics):
    the killed-and-resumed run and the uninterrupted one are two runs of the same smoke command."""
    root, environment = env
    whole = subprocess.run(command(root / "whole"), env=environment, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    out, pid_file = root / "killed", root / "worker.pid"
    slow = dict(environment, RESUME_SLEEP_S="600", RESUME_PID_FILE=str(pid_file))
    run = subprocess.Popen(command(out), env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pid_file.exists(), "the run never reached the slow entry"
    time.sleep(0.5)
    run.send_signal(signal.SIGKILL)
    run.wait()
    worker = int(pid_file.read_text())
    for _ in range(40):  # the worker dies with its run (parent-death signal), not left as an orphan
        if not alive(worker):
            break
        time.sleep(0.25)
    assert not alive(worker)
    finished = sorted(p.name for p in (out / ENTRIES_DIR).iterdir() if not p.name.startswith("."))
    assert finished == ["identity"]  # the entry before the slow one was kept as it finished
    kept = (out / ENTRIES_DIR / "identity" / "result.json").stat().st_mtime_ns

    resumed = subprocess.run(command(out), env=environment, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 3 entries already finished" in resumed.stderr
    assert (out / ENTRIES_DIR / "identity" / "result.json").stat().st_mtime_ns == kept  # not evaluated again
    assert_same_results(out, root / "whole")


def assert_same_results(one: Path, other: Path) -> None:
    """Two runs of one command: bitwise the same scores, metrics, per-point LDS and bootstrap (timings aside)."""
    pd.testing.assert_frame_equal(outcomes(one), outcomes(other), check_exact=True)
    for entry in ENTRIES.split(","):
        for track in ("fixed", "tuned"):
            name = f"{entry}.{track}.npy"
            assert np.array_equal(np.load(one / schema.SCORES_DIR / name), np.load(other / schema.SCORES_DIR / name))
    pd.testing.assert_frame_equal(pd.read_parquet(one / schema.POINTS_FILE), pd.read_parquet(other / schema.POINTS_FILE),
                                  check_exact=True)
    with np.load(one / schema.BOOTSTRAP_FILE) as a, np.load(other / schema.BOOTSTRAP_FILE) as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a.files)


def test_another_configuration_is_refused_and_fresh_starts_over(env):
    root, environment = env
    out = root / "refused"
    out.mkdir()
    (out / RUN_FILE).write_text('{"task": "digits-tiny.v1", "damping": 0.001}')
    refused = subprocess.run(command(out), env=environment, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "holds a run with another configuration" in message and "damping: 0.001 there, 0.0001 now" in message
    assert "--fresh" in message and not (out / schema.RESULTS_FILE).exists()

    stranger = root / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    refused = subprocess.run(command(stranger), env=environment, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "is not empty" in refused.stderr
    assert (stranger / "notes.txt").read_text() == "mine"  # nothing of it is touched without --fresh


BUILDER = """
import os, sys, time
import influence_bench.groundtruth.lds as lds
import influence_bench.training.batched as batched
from influence_bench.groundtruth import get_preset
from influence_bench.tasks import get_task
calls = [0]
train = batched.train_batched
def counting(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ.get("STALL_AT_CHUNK", "0")):  # stall in this chunk's training, marked
        open(os.environ["STALL_MARK"], "w").close()
        time.sleep(600)
    return train(*args, **kwargs)
batched.train_batched = counting
gt = lds.build_lds_groundtruth(get_task("digits-mlp"), get_preset("smoke"), sys.argv[1], progress=False)
import hashlib
print(calls[0], hashlib.sha256(gt.losses.tobytes() + gt.masks.tobytes()).hexdigest())
"""


def test_two_concurrent_builders_train_each_chunk_once_and_agree(tmp_path):
    """While a lock holder builds (here: the test itself holds the lock), both builders wait and say so;
    released, one trains every chunk and the other loads them: no chunk is trained twice."""
    from influence_bench.groundtruth import get_preset, groundtruth_dir
    from influence_bench.groundtruth.cache import build_lock
    from influence_bench.tasks import get_task

    logs = [tmp_path / f"builder{i}.err" for i in range(2)]
    with build_lock(groundtruth_dir(get_task("digits-mlp"), get_preset("smoke"), tmp_path), "the test"):
        builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path)], stdout=subprocess.PIPE,
                                     stderr=log.open("w"), text=True) for log in logs]
        deadline = time.monotonic() + 120
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.2)
    outputs = [b.communicate(timeout=600)[0] for b in builders]
    assert all(b.returncode == 0 for b in builders), [log.read_text() for log in logs]
    counts, digests = zip(*(out.split() for out in outputs))
    n_chunks = 4 * 2  # smoke: 4 alphas x 8 masks, 4 masks per chunk
    assert sorted(map(int, counts)) == [0, n_chunks]
    assert digests[0] == digests[1]  # the same losses and masks, bit for bit


def test_an_unwritable_cache_or_results_directory_is_one_line_before_any_work(env, tmp_path):
    _, environment = env
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    for extra, what in (([], "results directory"), (["--cache-dir", str(blocked / "cache")], "cache directory")):
        out = blocked / "out" if not extra else tmp_path / "out"
        result = subprocess.run(command(out, *extra), env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        message = " ".join(result.stderr.split())  # one message, wrapped by the terminal width
        assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
        assert what in message and "cannot be written (" in message


def test_a_ground_truth_build_killed_mid_chunk_keeps_its_finished_chunks_and_resumes_to_the_same_result(tmp_path):
    from influence_bench.groundtruth import get_preset, groundtruth_dir
    from influence_bench.tasks import get_task

    mark = tmp_path / "stalled"
    killed_cache, whole_cache = tmp_path / "killed", tmp_path / "whole"
    stalled = subprocess.Popen([sys.executable, "-c", BUILDER, str(killed_cache)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, STALL_AT_CHUNK="3", STALL_MARK=str(mark)))
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert time.monotonic() < deadline and stalled.poll() is None, "the build never reached its third chunk"
        time.sleep(0.2)
    stalled.send_signal(signal.SIGKILL)
    stalled.wait()
    root = groundtruth_dir(get_task("digits-mlp"), get_preset("smoke"), killed_cache)
    kept = sorted(p.relative_to(root) for p in root.rglob("chunk*.npz"))
    assert len(kept) == 2 and all(Path(f"{root / p}.sha256").exists() for p in kept)

    resumed, whole = (subprocess.run([sys.executable, "-c", BUILDER, str(cache)], capture_output=True, text=True,
                                     timeout=600) for cache in (killed_cache, whole_cache))
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr + whole.stderr
    (resumed_calls, resumed_digest), (whole_calls, whole_digest) = resumed.stdout.split(), whole.stdout.split()
    assert (int(resumed_calls), int(whole_calls)) == (8 - 2, 8)  # only the unfinished chunks were trained
    assert resumed_digest == whole_digest  # the same losses and masks as an uninterrupted build, bit for bit
