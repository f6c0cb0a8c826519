"""The fixed task set. ``get_task(name)`` is the only way in; unknown names list the valid ones."""

from __future__ import annotations

from influence_bench.naming import UnknownTaskError, unknown_task
from influence_bench.tasks.digits_mlp import DIGITS_MLP, DIGITS_MLP_COSINE
from influence_bench.tasks.spec import TaskData, TaskSpec, TrainingRecipe

BUILT_IN_TASKS = (DIGITS_MLP, DIGITS_MLP_COSINE)
TASKS: dict[str, TaskSpec] = {t.name: t for t in BUILT_IN_TASKS}
DEFAULT_TASK = DIGITS_MLP.name


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task (from a plugin module); a name can be registered once."""
    if spec.name in TASKS and TASKS[spec.name] is not spec:
        raise ValueError(f"a task named {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (``digits-mlp`` or its versioned key ``digits-mlp.v1``)."""
    for spec in TASKS.values():
        if name in (spec.name, spec.key):
            return spec
    raise unknown_task(name, sorted(TASKS))


__all__ = ["BUILT_IN_TASKS", "TASKS", "DEFAULT_TASK", "TaskData", "TaskSpec", "TrainingRecipe", "UnknownTaskError", "get_task", "register_task"]
