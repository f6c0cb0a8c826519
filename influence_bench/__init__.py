"""influence_bench: a benchmark suite for curvature approximations in influence functions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("influence_bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

PROTOCOL_VERSION = "1"
"""Version of ../shared/PROTOCOL.md that the measurements follow; part of every cache key."""


def run(*args, **kwargs):
    """Run entries against a task; see ``influence_bench.api.run`` (imported on first use, so that
    ``import influence_bench`` and the command line stay fast)."""
    from influence_bench.api import run as _run

    return _run(*args, **kwargs)


def run_all(*args, **kwargs):
    """Run entries on every task of the fixed set and write the cross-task leaderboard; see
    ``influence_bench.api.run_all``."""
    from influence_bench.api import run_all as _run_all

    return _run_all(*args, **kwargs)
