"""The strategy interface: propose architectures, observe their results.

Strategies are plain Python: they own a seeded RNG, never touch Ray or the
filesystem, and checkpoint through `state_dict`. The same contract suite
(tests/unit/test_strategy_contract.py) runs against every registered strategy.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import Any, Callable, Hashable

import numpy as np

from search_spaces import ConfigError, SearchSpace
from workers.evaluator import EvalResult

_REGISTRY: dict[str, Callable[..., "Strategy"]] = {}


class Strategy(ABC):
    """Proposes architectures and learns from their results.

    `propose` may be called again before earlier proposals are observed
    (asynchronous dispatch); `observe` receives every proposed architecture
    exactly once, in any order, failed results included.
    """

    name: str = ""

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def propose(self, n: int = 1) -> list[Hashable]:
        """Return `n` architectures to evaluate next."""

    @abstractmethod
    def observe(self, arch: Hashable, result: EvalResult) -> None:
        """Learn from one finished evaluation of an architecture this strategy proposed."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this strategy is (JSON/pickle-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def register(cls):
    """Class decorator: make a strategy available to `get_strategy` under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import controller.strategies as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def strategy_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **options) -> Strategy:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError("strategy", f"unknown strategy {name!r}", sorted(_REGISTRY))
    try:
        return _REGISTRY[name](space, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError("strategy_options", f"bad options for strategy {name!r}: {exc}") from None
