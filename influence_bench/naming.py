"""Names of entries and their parameter points, read and checked without importing torch.

The entry classes (``entries.base``) and the command line's catalogue (``catalogue``) both use these,
so a name means one thing everywhere: ``kfac[fisher=mc,separate=true]`` is the entry ``kfac`` at the
point ``fisher=mc, separate=true`` of its grid, and its canonical form lists the parameters in
declared order and leaves defaults out.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence


class UnknownEntryError(KeyError):
    """An entry name, parameter or value that is not registered (the message says what is valid)."""

    def __str__(self) -> str:
        return self.args[0]


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def unknown_task(name: str, valid: Sequence[str]) -> UnknownTaskError:
    return UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(valid)} (see `influence-bench list`)")


_POINT = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[(.*)\])?\s*$")


def parse_point(spec: str) -> tuple[str, dict[str, str]]:
    """``"kfac[fisher=mc, separate=true]"`` -> ``("kfac", {"fisher": "mc", "separate": "true"})``."""
    match = _POINT.match(spec)
    if not match:
        raise UnknownEntryError(f"cannot read the entry {spec!r}; write NAME or NAME[param=value,...]")
    name, inner = match.group(1), match.group(2)
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (inner or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UnknownEntryError(f"cannot read {item!r} in the entry {spec!r}; write param=value")
        if key.strip() in params:
            raise UnknownEntryError(f"parameter {key.strip()!r} given twice in the entry {spec!r}")
        params[key.strip()] = value.strip()
    return name, params


def split_names(text: str) -> list[str]:
    """``"identity,kfac[fisher=mc,separate=true]"`` -> ``["identity", "kfac[fisher=mc,separate=true]"]``:
    commas inside brackets belong to a parameter point."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    return [n.strip() for n in names if n.strip()]


def unknown_entry(name: str, valid: Sequence[str]) -> UnknownEntryError:
    return UnknownEntryError(f"unknown entry {name!r}; valid entries: {', '.join(valid)} "
                             "(see `influence-bench list`)")


def unknown_parameter(entry: str, parameters: Mapping[str, Sequence], key: str) -> UnknownEntryError:
    known = ", ".join(parameters) or "none"
    return UnknownEntryError(f"entry {entry!r} has no parameter {key!r}; its parameters: {known}")


def coerce_point(entry: str, parameters: Mapping[str, Sequence], raw: Mapping[str, str]) -> dict[str, Any]:
    """Text values (from a name such as ``kfac[fisher=mc]``) as the grid's typed values."""
    out = {}
    for key, value in raw.items():
        if key not in parameters:
            raise unknown_parameter(entry, parameters, key)
        typed = next((c for c in parameters[key] if str(c).lower() == value.lower()), None)
        if typed is None:
            raise UnknownEntryError(f"entry {entry!r}: {key}={value} is not in its grid; "
                                    f"{key} takes {', '.join(str(v).lower() for v in parameters[key])}")
        out[key] = typed
    return out


def full_point(parameters: Mapping[str, Sequence], params: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared parameter, defaults (the first allowed value) filled in."""
    return {key: params.get(key, allowed[0]) for key, allowed in parameters.items()}


def point_name(entry: str, parameters: Mapping[str, Sequence], params: Mapping[str, Any]) -> str:
    """The canonical name of a point: declared order, parameters at their default left out."""
    shown = [f"{k}={str(params[k]).lower()}" for k, allowed in parameters.items()
             if k in params and params[k] != allowed[0]]
    return f"{entry}[{','.join(shown)}]" if shown else entry
