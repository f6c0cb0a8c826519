"""A content-addressed artifact cache: every file has its SHA-256 recorded beside it.

A missing ``.sha256``, a hash mismatch, an unreadable or a mis-shaped file is reported and treated
as absent, so the caller rebuilds it; a file is never used without its hash checking out. Writes
are atomic (temporary file, then rename; the hash is written last).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import platformdirs

CACHE_ENV = "INFLUENCE_BENCH_CACHE"


def default_cache_dir() -> Path:
    """``$INFLUENCE_BENCH_CACHE`` if set, else the user's cache directory."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("influence_bench"))


def content_key(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (task spec, preset, protocol and package version)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def build_lock(root: Path, what: str, report: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the artifacts under ``root`` while building or reading them: a second process
    building the same artifacts waits (saying so), then finds them in the cache instead of training
    them again, and no process sees another's file mid-write (an ``fcntl`` lock on ``root/.lock``,
    released by the system if its holder dies)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (report or _warn)(f"waiting for another process building {what} in {root}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class UnwritableDirectoryError(RuntimeError):
    """A cache or results directory this process cannot write (said in one line, before any work)."""


def check_writable(path: Path, what: str, option: str) -> Path:
    """Create ``path`` if needed and write a probe file into it; one-line error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UnwritableDirectoryError(f"the {what} {path} cannot be written ({exc.strerror or exc}); "
                                       f"choose another with {option}") from None
    return path


class CorruptArtifactError(RuntimeError):
    pass


def _warn(message: str) -> None:
    print(f"influence-bench: {message}", file=sys.stderr)


class ArtifactStore:
    """Files under ``root``; ``report`` receives a line for every artifact that failed its check."""

    def __init__(self, root: Path, report: Callable[[str], None] = _warn):
        self.root = Path(root)
        self.report = report

    def path(self, name: str) -> Path:
        return self.root / name

    def _write_atomic(self, path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def save(self, name: str, write: Callable[[Any], None]) -> Path:
        """Write ``name`` through ``write(fileobj)``, then its hash."""
        path = self.path(name)
        Path(f"{path}.sha256").unlink(missing_ok=True)
        self._write_atomic(path, write)
        digest = sha256_file(path)
        self._write_atomic(Path(f"{path}.sha256"), lambda f: f.write(f"{digest}  {path.name}\n"), "w")
        return path

    def verified_path(self, name: str) -> Path | None:
        """The path if the file exists and matches its recorded hash; otherwise None (reported)."""
        path = self.path(name)
        sha = Path(f"{path}.sha256")
        if not path.exists():
            if sha.exists():
                sha.unlink()
            return None
        if not sha.exists():
            self.discard(name, "has no recorded SHA-256 (interrupted write?)")
            return None
        recorded = (sha.read_text().split() or [""])[0]
        if recorded != sha256_file(path):
            self.discard(name, "does not match its recorded SHA-256 (corrupt or truncated)")
            return None
        return path

    def discard(self, name: str, why: str) -> None:
        path = self.path(name)
        self.report(f"cache file {path} {why}; removing it and rebuilding")
        path.unlink(missing_ok=True)
        Path(f"{path}.sha256").unlink(missing_ok=True)

    # -- numpy archives ----------------------------------------------------------------------
    def save_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        return self.save(name, lambda f: np.savez(f, **arrays))

    def load_arrays(self, name: str, check: Callable[[dict], str | None] | None = None) -> dict | None:
        """Arrays of ``name`` if present, intact and accepted by ``check`` (returns a reason or None)."""
        path = self.verified_path(name)
        if path is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable archive is rebuilt
            self.discard(name, f"cannot be read ({exc})")
            return None
        reason = check(arrays) if check else None
        if reason:
            self.discard(name, f"does not match what was asked for ({reason})")
            return None
        return arrays
