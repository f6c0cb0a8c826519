"""influence_bench: a benchmark suite for curvature approximations in influence functions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("influence_bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

PROTOCOL_VERSION = "1"
"""Version of ../shared/PROTOCOL.md that the measurements follow; part of every cache key."""
