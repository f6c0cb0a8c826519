"""The fixed task set. ``get_task(name)`` is the only way in; unknown names list the valid ones.

Tasks come from the entry-point group ``influence_bench.tasks`` of the installed packages (this
package declares ``digits-mlp`` and ``digits-mlp-cosine`` there; an outside package declares its own
the same way), and from ``--plugins`` modules that call ``register_task``.
"""

from __future__ import annotations

from influence_bench.naming import UnknownTaskError, unknown_task
from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe

TASKS: dict[str, TaskSpec] = {}
TASK_ORIGINS: dict[str, str] = {}
DEFAULT_TASK = "digits-mlp"


def register_task(spec: TaskSpec, origin: str | None = None) -> TaskSpec:
    """Add a task (from an entry point or a plugin module); two tasks of one name are an error naming both."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"{spec!r} is not a TaskSpec: a task entry point names a TaskSpec object")
    origin = origin or "a plugin module"
    if spec.name in TASKS and TASKS[spec.name] is not spec:
        raise ValueError(f"two tasks are named {spec.name!r}: {TASK_ORIGINS.get(spec.name, '?')} and {origin}; "
                         "rename one of them")
    TASKS[spec.name] = spec
    TASK_ORIGINS.setdefault(spec.name, origin)
    return spec


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (``digits-mlp`` or its versioned key ``digits-mlp.v1``)."""
    for spec in TASKS.values():
        if name in (spec.name, spec.key):
            return spec
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
BUILT_IN_TASKS = tuple(spec for name, spec in TASKS.items() if "entry point of influence_bench " in TASK_ORIGINS[name])

__all__ = ["BUILT_IN_TASKS", "TASKS", "DEFAULT_TASK", "TaskData", "TaskSpec", "TrainingRecipe", "UnknownTaskError",
           "get_task", "register_task"]
