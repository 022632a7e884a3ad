"""Search strategies: the interface, one registry, and every algorithm (random search,
regularized evolution, Zoph & Le's RL controller with its policy and REINFORCE, the
one-shot DARTS family). Adding a strategy is adding a module here (or anywhere that is
imported) with a `@register`ed `Strategy` subclass."""

from __future__ import annotations

import importlib
import pkgutil

from raynas.common import ConfigError
from raynas.common.plugins import load_plugins
from raynas.controller.strategies.base import Needs, NoOptions, Proposal, SchemeSettings, SharedPolicy, Strategy
from raynas.search_spaces import SearchSpace

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available under `cls.name`."""
    if not cls.name:
        raise ConfigError("name", f"{cls.__name__} needs a name to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    load_plugins()


def strategy_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The registered strategy called `name`; a ConfigError listing the others if none is."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError("strategy", f"unknown strategy {name!r}", sorted(_REGISTRY))
    return _REGISTRY[name]


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **options) -> Strategy:
    """A fresh strategy; `options` are its `strategy_options`, validated."""
    cls = strategy_class(name)
    return cls(space, seed=seed, options=cls.parse_options(space, options))


__all__ = ["NoOptions", "Needs", "Proposal", "SchemeSettings", "SharedPolicy", "Strategy", "get_strategy", "register",
           "strategy_class", "strategy_names"]
