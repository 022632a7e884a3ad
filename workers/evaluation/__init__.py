"""Evaluators: the multi-fidelity interface (`base`), one registry, and the built-ins: `train`
(train each child on the search's dataset) and `table` (NAS-Bench-201 lookups). A new evaluator is
one module with a `@register_evaluator` subclass of `Evaluator`, imported here or named as a plug-in
(common/plugins.py). A name that is not registered is an error, never a fallback.

    evaluator = get_evaluator("table", space, dataset="cifar100")
    evaluator = get_evaluator("train", space, load_dataset("digits"), epochs=3)
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from raynas.common import ConfigError, prefixed_errors
from raynas.common.options import parse_options
from raynas.common.plugins import load_plugins
from raynas.search_spaces import SearchSpace, get_space
from raynas.workers.evaluation.base import (
    CANCELLED,
    FAILED,
    OK,
    Cancelled,
    EvalResult,
    Evaluator,
    Fidelity,
    NoOptions,
    Report,
    Scoring,
    resolve_arch,
)

_REGISTRY: dict[str, type[Evaluator]] = {}
#: The built-in evaluators' modules; `train` is imported only when asked for (it needs torch).
_BUILT_IN = {"table": "table", "train": "train"}


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make an evaluator available under `cls.name`."""
    if not cls.name:
        raise ConfigError("evaluator", f"{cls.__name__} needs a name to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def evaluator_names() -> list[str]:
    load_plugins()
    return sorted({*_BUILT_IN, *_REGISTRY})


def evaluator_class(name: str) -> type[Evaluator]:
    """The registered evaluator called `name`; a ConfigError listing the others if none is."""
    if name in _BUILT_IN and name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{_BUILT_IN[name]}")
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise ConfigError("evaluator", f"unknown evaluator {name!r}", evaluator_names())
    return _REGISTRY[name]


def evaluator_options(cls: type[Evaluator], options: Mapping[str, Any] | None) -> Any:
    """The spec's `evaluator_options` as `cls`'s typed options; errors name `evaluator_options.<option>`."""
    return parse_options(cls.Options, options, "evaluator_options", f"the {cls.name} evaluator")


def check_evaluator(cls: type[Evaluator], space: SearchSpace, dataset: Any, options: Any) -> None:
    """`cls.check`, its errors about an option naming `evaluator_options.<option>`."""
    with prefixed_errors("evaluator_options", [f.name for f in dataclasses.fields(cls.Options)]):
        cls.check(space, dataset, options)


def get_evaluator(name: str, space: SearchSpace | str, data: Any = None, **options: Any) -> Evaluator:
    """The evaluator `name` for `space` (a SearchSpace or its name) with its `options`, on `data`
    (a loaded dataset, for an evaluator that trains on one)."""
    cls = evaluator_class(name)
    if isinstance(space, str):
        space = get_space(space)
    parsed = evaluator_options(cls, options)
    if cls.needs_data and data is None:
        raise ConfigError("dataset", f"the {name} evaluator trains on a dataset: pass one (load_dataset(...))")
    check_evaluator(cls, space, data, parsed)
    return cls.create(space, data, parsed)


__all__ = ["CANCELLED", "FAILED", "OK", "Cancelled", "EvalResult", "Evaluator", "Fidelity", "NoOptions", "Report",
           "Scoring", "check_evaluator", "evaluator_class", "evaluator_names", "evaluator_options", "get_evaluator",
           "register_evaluator", "resolve_arch"]
