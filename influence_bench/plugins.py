"""Where entries and tasks come from: entry points, and ``--plugins`` for what is not installed.

An installed package (this one included) declares its entries and tasks in its metadata, under the
entry-point groups ``influence_bench.entries`` and ``influence_bench.tasks``::

    [project.entry-points."influence_bench.entries"]
    my-entry = "my_package.entry:MyEntry"

The name of an entry point is the entry's (or task's) name. Entry points are *discovered* from the
installed packages' metadata without importing anything (``discover``: the command line checks names
against it), and *loaded* (imported) when a registry is first needed (``load_group``). A module that
fails to import does not stop the others: its names are kept with the traceback (``LOAD_FAILURES``),
and a run turns each into a failure row. Two entry points with one name are an error naming both.

``--plugins`` (or ``$INFLUENCE_BENCH_PLUGINS``, comma-separated) imports modules that are not installed:
a module name, importable or in the current directory, or a path to a ``.py`` file. Their classes
register themselves with ``@register`` (``register_task`` for tasks).

This module does not import torch: the command line uses it before any heavy import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Callable

PLUGINS_ENV = "INFLUENCE_BENCH_PLUGINS"
ENTRY_GROUP = "influence_bench.entries"
TASK_GROUP = "influence_bench.tasks"
OWN_DISTRIBUTION = "influence_bench"

# entry or task name -> why it is not registered (an entry point or a --plugins module that failed to
# import, with its traceback), per group; a plugin module's failure is kept under "plugin:MODULE"
LOAD_FAILURES: dict[str, dict[str, str]] = {ENTRY_GROUP: {}, TASK_GROUP: {}}


class PluginError(ImportError):
    """A plugin cannot be found, or two plugins give one name."""


class DuplicateNameError(PluginError):
    pass


@dataclass(frozen=True)
class Discovered:
    """One entry point as the metadata declares it (nothing imported)."""

    name: str
    value: str  # "module:attribute"
    distribution: str
    version: str
    entry_point: EntryPoint

    @property
    def builtin(self) -> bool:
        return self.distribution == OWN_DISTRIBUTION

    @property
    def origin(self) -> str:
        return f"{self.value} (entry point of {self.distribution} {self.version})"


def _distribution_name(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"].replace("-", "_"), dist.version


def discover(group: str) -> list[Discovered]:
    """Every entry point of ``group``: this package's first (in the order of its installed metadata, which
    setuptools sorts by name: ``entries.BUILTIN_ORDER`` puts the registry in the chain's order), then the
    others by name. Two with one name raise DuplicateNameError naming both."""
    found: dict[str, Discovered] = {}
    for ep in entry_points(group=group):
        dist, version = _distribution_name(ep)
        item = Discovered(ep.name, ep.value, dist, version, ep)
        if ep.name in found and found[ep.name].value != ep.value:
            raise DuplicateNameError(f"two packages name an {_kind(group)} {ep.name!r}: {found[ep.name].origin} and "
                                     f"{item.origin}; uninstall one, or rename its entry point")
        found.setdefault(ep.name, item)
    own = [d for d in found.values() if d.builtin]
    if group == ENTRY_GROUP and not own:
        raise PluginError("influence_bench's own entry points are missing from its installed metadata: "
                          "install the package (`pip install -e .` in its folder), then try again")
    return own + sorted((d for d in found.values() if not d.builtin), key=lambda d: d.name)


def outside_names(group: str) -> list[str]:
    """Names that installed packages other than this one declare in ``group`` (nothing imported)."""
    return [d.name for d in discover(group) if not d.builtin]


def _kind(group: str) -> str:
    return "entry" if group == ENTRY_GROUP else "task"


def load_group(group: str, registry: dict, register: Callable[[object, str], object]) -> None:
    """Import every entry point of ``group`` and ``register(obj, origin)`` it (``register`` accepts an
    object that its module's import registered already, and records the entry point as its origin).

    A module that fails to import, or an object that is not what its entry point says, is kept in
    ``LOAD_FAILURES[group]`` under the entry point's name with the traceback; the others load."""
    failures = LOAD_FAILURES[group]
    for item in discover(group):
        try:
            obj = item.entry_point.load()
            if getattr(obj, "name", None) != item.name:
                raise PluginError(f"the entry point {item.name!r} loads {obj!r}, whose name is "
                                  f"{getattr(obj, 'name', None)!r}: an entry point must carry its {_kind(group)}'s name")
            register(obj, item.origin)
        except Exception:  # noqa: BLE001 - one broken plugin must not stop the others
            failures[item.name] = (f"{_kind(group)} {item.name!r} from {item.origin} failed to load:\n"
                                   f"{traceback.format_exc().rstrip()}")
        else:
            failures.pop(item.name, None)


# -- --plugins: modules that are not installed ---------------------------------------------------------
def plugin_modules(extra: list[str] | None = None) -> list[str]:
    """The plugin modules of ``$INFLUENCE_BENCH_PLUGINS`` and ``extra`` (``--plugins``), once each."""
    names = [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    return list(dict.fromkeys([m.strip() for m in names] + [m.strip() for m in extra or () if m.strip()]))


def locate(plugin: str, cwd: Path | None = None) -> str:
    """Where a plugin is, in a form any process can import: an absolute ``.py`` path for a file (given as
    a path, or a module of that name in the current directory that is not importable otherwise), else
    the importable module name. A plugin that is nowhere raises PluginError saying what was looked for."""
    cwd = cwd or Path.cwd()
    if os.pathsep in plugin:  # "folder:module", as this function gives a package in the current directory
        return plugin
    if plugin.endswith(".py") or os.sep in plugin:
        path = (cwd / plugin).resolve()
        if path.is_dir() and (path / "__init__.py").is_file():  # a package folder: its parent on the path
            return f"{path.parent}{os.pathsep}{path.name}"
        if not path.is_file():
            raise PluginError(f"plugin file {plugin!r} does not exist (looked for {path})")
        return str(path)
    try:
        found = importlib.util.find_spec(plugin) is not None
    except (ModuleNotFoundError, ValueError):
        found = False
    except Exception:  # noqa: BLE001 - its parent package raised while importing: it exists, and fails later
        found = True
    if found:
        return plugin
    head = plugin.split(".")[0]
    for candidate in (cwd / f"{head}.py", cwd / head / "__init__.py"):
        if candidate.is_file():
            if "." in plugin or candidate.name == "__init__.py":
                return f"{cwd}{os.pathsep}{plugin}"  # a package in the current directory: its folder on the path
            return str(candidate.resolve())
    raise PluginError(f"plugin module {plugin!r} was not found: not importable, and no {head}.py or {head}/ "
                      f"in the current directory {cwd}; give a module name, or a path to a .py file")


def import_plugin(located: str):
    """Import a plugin as ``locate`` gives it; an exception inside the module propagates."""
    if os.pathsep in located:  # "folder:module"
        folder, module = located.rsplit(os.pathsep, 1)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return importlib.import_module(module)
    if located.endswith(".py"):
        path = Path(located)
        name = path.stem
        if name in sys.modules:
            if getattr(sys.modules[name], "__file__", None) == str(path):
                return sys.modules[name]
            raise PluginError(f"plugin file {path} would be the module {name!r}, but a module of that name is "
                              f"already imported ({getattr(sys.modules[name], '__file__', 'built in')}); rename "
                              "the file")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so that its classes pickle by reference, as an installed module's would
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    return importlib.import_module(located)


def load_plugins(extra: list[str] | None = None, environment: bool = True) -> list[str]:
    """Load every entry point and import every plugin module (``--plugins`` and the environment).

    Returns the located plugins (what another process needs to import the same: it passes them with
    ``environment=False``, not to read ``$INFLUENCE_BENCH_PLUGINS`` a second time). A plugin that cannot
    be found raises PluginError; one that raises while importing is kept in ``LOAD_FAILURES`` (under
    ``plugin:MODULE``) with its traceback, and the others load."""
    import influence_bench.entries  # noqa: F401 - the entry points first: built-ins, then installed plugins
    import influence_bench.tasks  # noqa: F401 - the task entry points too

    names = plugin_modules(extra) if environment else list(dict.fromkeys(extra or ()))
    located = [locate(p) for p in names]
    failures = LOAD_FAILURES[ENTRY_GROUP]
    for key in [k for k in failures if k.startswith("plugin:")]:
        del failures[key]  # the plugins of an earlier call in this process are not this call's
    for plugin, where in zip(names, located):
        try:
            import_plugin(where)
        except Exception:  # noqa: BLE001
            failures[f"plugin:{plugin}"] = f"plugin module {plugin!r} failed to import:\n{traceback.format_exc().rstrip()}"
    return located


def entry_failures() -> dict[str, str]:
    """Entry names (or ``plugin:MODULE``) that could not be loaded -> why, with the traceback."""
    return dict(LOAD_FAILURES[ENTRY_GROUP])
