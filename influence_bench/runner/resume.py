"""A results directory that survives a killed run: each entry's outcome is kept as it finishes.

``run.json`` records the configuration of the run writing the directory; ``entries/NAME/`` holds
each finished entry's outcome (scores, rows, grid, status), renamed into place only when complete.
Started again with the same configuration, a run takes the finished entries from there and
evaluates only the others; with a different one it refuses and says how to go on. It never mixes
two configurations in one directory, and only ``fresh`` removes what is there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from influence_bench.runner.evaluation import EntryResult

RUN_FILE = "run.json"
ENTRIES_DIR = "entries"


class ResultsDirError(RuntimeError):
    """A results directory that this run must not write into."""


def _differences(saved: dict, config: dict) -> list[str]:
    keys = sorted(set(saved) | set(config))
    return [f"{k}: {saved.get(k)!r} there, {config.get(k)!r} now" for k in keys if saved.get(k) != config.get(k)]


def open_results_dir(out: Path, config: dict, fresh: bool = False) -> dict[str, EntryResult]:
    """Make ``out`` this run's directory; returns the outcomes of the entries it already finished.

    Raises ResultsDirError for a directory of another configuration, or one this version did not
    write, unless ``fresh`` (which removes it first).
    """
    out = Path(out)
    config = json.loads(json.dumps(config, default=str))  # compare as it will be read back
    if fresh and out.exists():
        shutil.rmtree(out)
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            saved = json.loads(run_file.read_text())
        except (OSError, ValueError) as exc:
            raise ResultsDirError(f"{run_file} cannot be read ({exc}); start over with --fresh") from None
        differences = _differences(saved, config)
        if differences:
            raise ResultsDirError(
                f"{out} holds a run with another configuration ({'; '.join(differences)}); resume it with its "
                f"own command, write to another --out, or start over with --fresh")
        return finished_entries(out)
    if out.exists() and any(out.iterdir()):
        raise ResultsDirError(f"{out} is not empty and was not written by this version's `influence-bench run` "
                              f"(no {RUN_FILE}); write to another --out, or start over with --fresh")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(run_file, json.dumps(config, indent=2, sort_keys=True))
    return {}


def finished_entries(out: Path) -> dict[str, EntryResult]:
    """Every complete outcome under ``out/entries`` (a half-written one, without its mark, is dropped)."""
    found = {}
    root = Path(out) / ENTRIES_DIR
    for directory in sorted(root.iterdir()) if root.exists() else []:
        if directory.name.startswith(".") or not (directory / "result.json").exists():
            continue
        try:
            result = EntryResult.load(directory)
        except (OSError, ValueError, KeyError) as exc:
            print(f"influence-bench: {directory} cannot be read ({exc}); the entry runs again", file=sys.stderr)
            continue
        found[result.name] = result
    return found


def save_outcome(out: Path, result: EntryResult) -> None:
    """Keep one entry's outcome: written beside its place, then renamed into it."""
    root = Path(out) / ENTRIES_DIR
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{result.name}."))
    try:
        result.save(staging)
        final = root / result.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_atomically(path: Path, text: str) -> None:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as f:
        f.write(text)
    os.replace(name, path)

