"""The built-in tasks and entries as data, so that the command line lists them and checks names
without importing torch.

``catalogue.json`` beside this module is generated from the registries (``python -m
influence_bench.catalogue``); ``tests/test_cli.py`` checks it equals what the registries say, so it
cannot go stale unnoticed. Entries and tasks of plugins are not in it: a command given ``--plugins``
imports them, and checks names against the registries themselves.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

from influence_bench.naming import coerce_point, full_point, parse_point, point_name, unknown_entry, unknown_task

CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")
REGENERATE = "python -m influence_bench.catalogue"


def build() -> dict:
    """The catalogue from the registries (imports every built-in entry and task, and so torch)."""
    from influence_bench.entries import ENTRIES
    from influence_bench.tasks import BUILT_IN_TASKS, DEFAULT_TASK, TASK_SET

    entries = []
    for name, cls in ENTRIES.items():
        if not cls.__module__.startswith("influence_bench."):
            continue  # a plugin's
        invalid = {}
        for values in itertools.product(*cls.parameters.values()):
            point = dict(zip(cls.parameters, values))
            reason = cls.invalid_point(point)
            if reason:
                invalid[cls.point_name(point)] = reason
        entries.append({"name": name, "description": cls.description, "capabilities": sorted(cls.capabilities),
                        "parameters": {k: list(v) for k, v in cls.parameters.items()}, "invalid": invalid})
    tasks = [{"name": t.name, "version": t.version, "key": t.key, "n_params": t.n_params,
              "description": t.description} for t in BUILT_IN_TASKS]
    return {"default_task": DEFAULT_TASK, "task_set": list(TASK_SET), "tasks": tasks, "entries": entries}


@lru_cache(maxsize=1)
def load() -> dict:
    try:
        return json.loads(CATALOGUE_FILE.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the package's catalogue {CATALOGUE_FILE} cannot be read ({exc}); reinstall "
                           f"influence-bench, or regenerate it with `{REGENERATE}`") from None


def task_name(name: str) -> str:
    """The built-in task called ``name`` (or its versioned key): its name, or UnknownTaskError."""
    for task in load()["tasks"]:
        if name in (task["name"], task["key"]):
            return task["name"]
    raise unknown_task(name, sorted(t["name"] for t in load()["tasks"]))


def entry_name(name: str) -> str:
    """The canonical name of a built-in entry's point (``kfac[separate=true,fisher=mc]`` ->
    ``kfac[fisher=mc,separate=true]``), or UnknownEntryError saying what is valid: the messages of
    ``entries.make_entry``, without importing the entries."""
    from influence_bench.naming import UnknownEntryError

    base, raw = parse_point(name)
    entries = {e["name"]: e for e in load()["entries"]}
    if base not in entries:
        raise unknown_entry(base, list(entries))
    parameters = entries[base]["parameters"]
    canonical = point_name(base, parameters, full_point(parameters, coerce_point(base, parameters, raw)))
    if canonical in entries[base]["invalid"]:
        raise UnknownEntryError(f"entry {canonical!r}: {entries[base]['invalid'][canonical]}")
    return canonical


def main() -> None:
    CATALOGUE_FILE.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {CATALOGUE_FILE}")


if __name__ == "__main__":
    main()
