"""The fixed task set. ``get_task(name)`` is the only way in; unknown names list the valid ones.

Tasks come from the entry-point group ``influence_bench.tasks`` of the installed packages (this
package declares ``digits-mlp`` and ``digits-mlp-cosine`` there; an outside package declares its own
the same way), and from ``--plugins`` modules that call ``register_task``.
"""

from __future__ import annotations

from influence_bench.naming import UnknownTaskError, unknown_task
from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe

TASKS: dict[str, TaskSpec] = {}  # name -> its newest version
TASK_VERSIONS: dict[str, TaskSpec] = {}  # key (name.vN) -> every registered version, old ones included
TASK_ORIGINS: dict[str, str] = {}
DEFAULT_TASK = "digits-mlp"
LOCAL_PREFIX = "local:"  # local:MODEL:PATH.npz names a task on a user's own arrays (tasks.local)
# what `run --task all` runs and the cross-task leaderboard ranks over (digits-mlp-cosine, a variant of the
# reference task's schedule, stays runnable by name)
TASK_SET = ("digits-mlp", "digits-logreg", "digits-cnn", "diabetes-mlp", "digits-mlp-noisy", "wide-mlp")


def register_task(spec: TaskSpec, origin: str | None = None) -> TaskSpec:
    """Add a task (from an entry point or a plugin module). Versions of one name coexist: the name
    resolves to the newest, ``name.vN`` to version N. Two tasks of one name and version are an error
    naming both (a published version is never edited in place: a change is a new version)."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"{spec!r} is not a TaskSpec: a task entry point names a TaskSpec object")
    origin = origin or "a plugin module"
    known = TASK_VERSIONS.get(spec.key)
    if known is not None and known is not spec:
        raise ValueError(f"two tasks are {spec.key!r} (name {spec.name!r}, version {spec.version}): "
                         f"{TASK_ORIGINS.get(spec.key, '?')} and {origin}; a changed task is a new version "
                         "(raise `version`), another task needs another name")
    TASK_VERSIONS[spec.key] = spec
    TASK_ORIGINS.setdefault(spec.key, origin)
    TASK_ORIGINS.setdefault(spec.name, origin)
    newest = TASKS.get(spec.name)
    if newest is None or newest.version <= spec.version:
        TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The task called ``name``: its newest version (``digits-mlp``), a version by its key
    (``digits-mlp.v1``), or a local data file (``local:MODEL:PATH.npz``, ``tasks.local``)."""
    if name in TASKS:
        return TASKS[name]
    if name in TASK_VERSIONS:
        return TASK_VERSIONS[name]
    if name.startswith(LOCAL_PREFIX):
        from influence_bench.tasks.local import task_from_reference

        return task_from_reference(name)
    from influence_bench.plugins import ENTRY_GROUP, LOAD_FAILURES, TASK_GROUP

    if name in LOAD_FAILURES[TASK_GROUP]:
        raise TaskLoadError(LOAD_FAILURES[TASK_GROUP][name])
    broken = [k.removeprefix("plugin:") for k in LOAD_FAILURES[ENTRY_GROUP] if k.startswith("plugin:")]
    if broken:
        raise TaskLoadError(f"unknown task {name!r}; the plugin module(s) {', '.join(broken)} failed to import and "
                            f"may be the one that provides it:\n" + "\n".join(
                                LOAD_FAILURES[ENTRY_GROUP][f"plugin:{m}"] for m in broken))
    raise unknown_task(name, sorted(TASKS))


class TaskLoadError(ImportError):
    """A task whose module (an entry point, or a plugin module) failed to import: the message says why."""


def _load_task_entry_points() -> None:
    from influence_bench.plugins import TASK_GROUP, load_group

    load_group(TASK_GROUP, TASKS, lambda spec, origin: register_task(spec, origin))


_load_task_entry_points()
# the tasks this package ships (the catalogue lists them without importing torch)
BUILT_IN_TASKS = tuple(spec for key, spec in TASK_VERSIONS.items() if "entry point of influence_bench " in TASK_ORIGINS[key])

__all__ = ["BUILT_IN_TASKS", "LOCAL_PREFIX", "TASKS", "TASK_SET", "TASK_VERSIONS", "DEFAULT_TASK", "TaskData", "TaskSpec", "TrainingRecipe", "UnknownTaskError",
           "get_task", "register_task"]
