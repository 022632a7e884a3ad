"""The SearchSpec flags, derived from the spec's fields (name, type, help in their metadata) and
the plug-in registries (the names each of --space, --strategy, --evaluator and --dataset takes),
shared by `nas search` (in this process) and `nas submit` (to the service)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from raynas.controller.runtime import catalogue
from raynas.controller.runtime.spec import (
    OPTION_FIELDS,
    TRAIN_SHORTCUTS,
    SearchSpec,
    load_config,
    upgraded,
    with_shortcuts,
)

#: The fields whose values are plug-in names, and the registry each names.
PLUGIN_FIELDS = {"space": "space", "strategy": "strategy", "evaluator": "evaluator", "dataset": "dataset"}
#: Former names of option flags, kept for the commands people have written down.
ALIASES = {"evaluator_options": ("--train-option", "--table-option")}


def key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, booleans, lists), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _scalar_type(annotation: Any) -> type:
    """int for `int` and `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="spec file (.json or .toml) with SearchSpec fields; flags override it")
    hints = typing.get_type_hints(SearchSpec)
    for f in dataclasses.fields(SearchSpec):
        help_text = f.metadata["help"]
        if f.name in PLUGIN_FIELDS:
            help_text += f": {catalogue.names_text(PLUGIN_FIELDS[f.name])} (nas options describes each)"
        if f.name in OPTION_FIELDS:
            p.add_argument(_flag(f), *ALIASES.get(f.name, ()), dest=f.name, action="append", type=key_value,
                           default=[], metavar="KEY=VALUE", help=help_text)
        elif hints[f.name] is bool:
            # --flag / --no-flag; unset (None) keeps the config file's value or the default.
            p.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(_flag(f), dest=f.name, type=_scalar_type(hints[f.name]), help=help_text)
    for name, help_text in TRAIN_SHORTCUTS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=f"train_{name}", type=int, help=help_text)


def spec_data_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the config file and flags set (the rest keep SearchSpec's defaults)."""
    data: dict[str, Any] = upgraded(load_config(args.config)) if args.config else {}
    # The evaluator's options: the config's, then the shortcut flags, then --evaluator-option.
    flags = with_shortcuts(dict(args.evaluator_options),
                           {name: getattr(args, f"train_{name}") for name in TRAIN_SHORTCUTS})
    evaluator = {**data.get("evaluator_options", {}), **flags}
    for f in dataclasses.fields(SearchSpec):
        value = getattr(args, f.name)
        if f.name in OPTION_FIELDS:
            if value:
                data[f.name] = {**data.get(f.name, {}), **dict(value)}
        elif value is not None:
            data[f.name] = value
    if evaluator:
        data["evaluator_options"] = evaluator
    if data.get("evaluator") == "table":
        # The only tabulated space; no reason to make the user say it.
        data.setdefault("space", "nb201")
    return data


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    """The spec the flags give; resolving it (controller/runtime/plan.py) checks it whole."""
    return SearchSpec.from_dict(spec_data_from_args(args), source="config" if args.config else "spec")
