"""Entries from outside the package: ``--plugins my_pkg.my_entry`` (or $INFLUENCE_BENCH_PLUGINS,
comma-separated) imports modules whose ``@register`` classes join the registry."""

from __future__ import annotations

import importlib
import os

PLUGINS_ENV = "INFLUENCE_BENCH_PLUGINS"


class PluginError(ImportError):
    pass


def plugin_modules(extra: list[str] | None = None) -> list[str]:
    names = [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    return list(dict.fromkeys([m.strip() for m in names] + list(extra or [])))


def load_plugins(extra: list[str] | None = None) -> list[str]:
    """Import every plugin module; a module that fails to import is a clear error."""
    import influence_bench.entries  # noqa: F401 - the built-in entries first

    loaded = []
    for name in plugin_modules(extra):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"plugin module {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
        loaded.append(name)
    return loaded
