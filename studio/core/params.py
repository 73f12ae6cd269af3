"""Typed parameters: declared once in a dataclass, with label, help and limits in field metadata.

Tabs, notebooks, the CLI and tests read the same declaration: :func:`spec` writes the metadata,
:func:`validate` checks a filled-in instance and raises :class:`ParamError` with a message that
says what to do.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, get_args, get_origin

from studio.errors import UserError


class ParamError(UserError):
    """User input out of range or of the wrong kind; the message is meant for the user."""


def spec(label: str, help: str = "", *, minimum: float | None = None, maximum: float | None = None,
         step: float | None = None, max_chars: int | None = None, choices: tuple | None = None,
         advanced: bool = False, group: str | None = None) -> dict[str, Any]:
    """Field metadata: ``field(default=..., metadata=spec("Steps", "...", minimum=1, maximum=200))``.
    ``group`` names a set of fields that belong to one choice (one method's settings): a tab shows
    them together, in their own collapsible box."""
    return {"label": label, "help": help, "minimum": minimum, "maximum": maximum, "step": step,
            "max_chars": max_chars, "choices": choices, "advanced": advanced, "group": group}


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices_of(cls, f: dataclasses.Field) -> tuple | None:
    if f.metadata.get("choices"):
        return tuple(f.metadata["choices"])
    tp = field_types(cls)[f.name]
    return get_args(tp) if get_origin(tp) is Literal else None


def coerce(cls, values: dict[str, Any]):
    """Build ``cls`` from a dict of (possibly GUI-typed) values: floats from sliders become ints
    where the field is an int; unknown names are an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    types = field_types(cls)
    out = {}
    for name, v in values.items():
        tp = types[name]
        label = fields[name].metadata.get("label", name)
        try:
            if tp is int and not isinstance(v, bool):
                fv = float(v)
                if not math.isfinite(fv) or fv != int(fv):
                    raise ParamError(f"{label} must be a whole number, got {v!r}")
                v = int(fv)
            elif tp is float:
                v = float(v)
            elif tp is bool:
                v = bool(v)
            elif tp is str and v is None:
                v = ""
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ParamError):
                raise
            raise ParamError(f"{label} must be a number, got {v!r}") from None
        out[name] = v
    return cls(**out)


def validate(params) -> None:
    """Check every field of ``params`` against its metadata (range, length, choices)."""
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        m = f.metadata
        label = m.get("label", f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ParamError(f"{label} must be a finite number, got {v}")
        lo, hi = m.get("minimum"), m.get("maximum")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ParamError(f"{label} must be between {lo} and {hi}, got {v}")
        if isinstance(v, str) and m.get("max_chars") and len(v) > m["max_chars"]:
            raise ParamError(f"{label} is {len(v)} characters long; the limit is {m['max_chars']}")
        options = choices_of(type(params), f)
        if options and v not in options:
            raise ParamError(f"{label} must be one of {', '.join(map(str, options))}, got {v!r}")
