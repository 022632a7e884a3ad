"""Search spaces: the vocabulary of architectures (pure Python + numpy).

Each module in this package that defines a `SearchSpace` subclass decorated
with `register` becomes available by name; adding a space is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from raynas.common import ConfigError
from raynas.common.plugins import load_plugins
from raynas.search_spaces.base import Categorical, Decision, SearchSpace, Subset

_REGISTRY: dict[str, Callable[..., SearchSpace]] = {}


def register(cls):
    """Class decorator: make a space available to `get_space` under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in {"base", "types"}:
            importlib.import_module(f"{__name__}.{info.name}")
    load_plugins()


def space_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def space_class(name: str) -> type[SearchSpace]:
    """The registered space called `name`, not built; a ConfigError listing the others if none is."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError("space", f"unknown search space {name!r}", sorted(_REGISTRY))
    return _REGISTRY[name]


def get_space(name: str, **options) -> SearchSpace:
    """The space called `name`, built with its options (e.g. `num_layers` for macro)."""
    cls = space_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError("space_options", f"bad options for space {name!r}: {exc}") from None


__all__ = ["Categorical", "Decision", "SearchSpace", "Subset", "get_space", "register", "space_class", "space_names"]
