"""Values for a config dataclass's fields, checked against the field types: options come from
plan text and command lines, and ``queries=1.5`` or ``lr=nan`` must be an error naming the
option, not a traceback deep inside a model."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from inca.errors import IncaError


def typed_values(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """``data`` with each value checked against ``cls``'s field type (``int``, ``float``,
    ``bool``, ``str``, optionally ``| None``): whole floats become ints, ints become floats,
    NaN and infinities are refused. Unknown keys are left to the caller."""
    types = {f.name: str(f.type).replace(" ", "") for f in fields(cls)}
    out = {}
    for key, value in data.items():
        kind = types.get(key)
        if kind is None:
            out[key] = value
            continue
        optional = kind.endswith("|None") or kind.startswith("None|")
        base = kind.replace("|None", "").replace("None|", "")
        out[key] = _typed(value, base, optional, f"{what}: {key}")
    return out


def _typed(value: Any, kind: str, optional: bool, name: str) -> Any:
    if value is None and optional:
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise IncaError(f"{name} is true or false, got {value!r}")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IncaError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise IncaError(f"{name} must be a finite number, got {value!r}")
        if kind == "int":
            if not float(value).is_integer():
                raise IncaError(f"{name} must be a whole number, got {value!r}")
            return int(value)
        return float(value)
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value
