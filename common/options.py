"""Typed, bounded options: how every plug-in (strategy, evaluator, dataset) declares its options,
and the one reader of them from a spec's mapping.

A plug-in's options are a frozen dataclass whose fields are made with `option(...)`: the default,
one line of help, and for sizes the largest value a spec may ask for (`most`), so that a careless
or hostile request is refused before anything is built. `parse_options` reads a mapping into the
dataclass with errors that name `<prefix>.<option>`; `describe_options` lists the fields for help
texts (`nas options`, `--help`, the proto comments), so the help and the checks cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from raynas.common.errors import ConfigError, prefixed_errors


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a plug-in that has none."""


def option(default: Any, help: str, *, most: float | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field of an options class: its default, its help text, and the largest value a
    spec may give it (`most`, for anything that sizes what is built or allocated) or the values it
    may take (`choices`). A list default is given as a tuple (frozen dataclasses share defaults)."""
    metadata = {"help": help, **({"most": most} if most is not None else {}),
                **({"choices": tuple(choices)} if choices is not None else {})}
    return dataclasses.field(default=default, metadata=metadata)


def _check_field(name: str, f: dataclasses.Field, value: Any) -> None:
    most = f.metadata.get("most")
    if most is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {value}")
        if value > most:
            raise ConfigError(name, f"{value} is too large", f"at most {most:,}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(name, f"unknown value {value!r}", choices)


def parse_options(cls: type, values: Mapping[str, Any] | None, prefix: str, owner: str, **fixed: Any) -> Any:
    """`values` read into the options dataclass `cls`; `fixed` are fields the owner sets itself
    (not options a spec may give). Errors name `<prefix>.<option>`: an unknown option lists the
    known ones, a value above its bound states the bound, and the class's own checks run on
    construction."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(prefix, f"must be a mapping of option names to values, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", f"not an option of {owner}", sorted(fields) or "none")
    for key, value in values.items():
        _check_field(f"{prefix}.{key}", fields[key], value)
    with prefixed_errors(prefix, fields):
        return cls(**values, **fixed)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of an options class that a spec may set (those made with `option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Each option of `cls`: name, type, default, help, and its bound or choices where it has one."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in option_fields(cls):
        kind = hints.get(f.name, Any)
        rows.append({"name": f.name, "type": getattr(kind, "__name__", None) or str(kind).replace("typing.", ""),
                     "default": f.default if f.default is not dataclasses.MISSING else None,
                     "help": f.metadata["help"],
                     **{k: f.metadata[k] for k in ("most", "choices") if k in f.metadata}})
    return rows


def format_options(cls: type, indent: str = "  ") -> str:
    """The options of `cls` as lines of text, one per option."""
    lines = []
    for row in describe_options(cls):
        bound = (f"; at most {row['most']:,}" if "most" in row else
                 f"; one of {', '.join(map(str, row['choices']))}" if "choices" in row else "")
        lines.append(f"{indent}{row['name']} ({row['type']}, default {row['default']!r}{bound}): {row['help']}")
    return "\n".join(lines) or f"{indent}(none)"
