"""Where a result came from: versions, commit, machine, time."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def git_commit(path: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=path or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path or Path(__file__).parent,
                               capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, str]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "influence_bench_version": _version("influence_bench"),
        "torch_version": torch.__version__,
        "curvlinops_version": _version("curvlinops-for-pytorch"),
        "numpy_version": _version("numpy"),
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, {device}",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
