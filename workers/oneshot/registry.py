"""The spaces that have a supernet, each registered once with what the one-shot searches need of
it: how its supernet is built and how its data reaches it, the published settings of each search
on it, how an architecture is read from the supernet's weights or run through it alone, and the
monitors its reports carry.

The searches (search.py's loop, the algorithms) read only this, so a new space's supernet is
one more `register_supernet` call: in a module of this package, or in a plug-in module
(common/plugins.py), beside the plug-in's search space.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raynas.common import ConfigError
from raynas.common.plugins import load_plugins

if TYPE_CHECKING:
    import torch

    from raynas.search_spaces import SearchSpace
    from raynas.workers.oneshot.supernet import Supernet

_REGISTRY: dict[str, OneShotSpace] = {}


def _accepts(config: Any) -> None:
    """No setting this supernet cannot honour."""


@dataclass(frozen=True)
class OneShotSpace:
    """One space's supernet as the one-shot searches use it."""

    #: The space's name.
    name: str
    #: The task its data must have (workers/datasets' TASKS).
    task: str
    #: (space, resolved config, data) -> the supernet on the CPU; `data` gives the sizes the data
    #: decides: `in_channels` and `num_classes` of images, `vocab_size` of text.
    build: Callable[[SearchSpace, Any, Any], Supernet]
    #: (data, resolved config, supernet, torch.Generator, device) -> how batches reach the supernet
    #: (feeds.py's `Feed`).
    feed: Callable[..., Any]
    #: A search's `recipe` -> the published settings its config's None fields take on this space.
    #: A search without an entry has no supernet here.
    defaults: Mapping[str, Mapping[str, Any]]
    #: The supernet -> the architecture its weights stand for (DARTS' rule, Viterbi, ...).
    derive: Callable[[Supernet], Hashable]
    #: (supernet, its derived architecture) -> the collapse monitors of an epoch's report.
    monitors: Callable[[Supernet, Hashable], dict[str, Any]]
    #: (space, torch.Generator) -> a uniformly random architecture; None where no search samples.
    sample: Callable[[SearchSpace, torch.Generator], Hashable] | None = None
    #: (architecture, the supernet's primitives) -> the path that runs it alone in the supernet.
    path: Callable[[Hashable, Sequence[str]], Any] | None = None
    #: Architecture -> its skip-connections; None where the space's architectures have none.
    skips: Callable[[Hashable], int] | None = None
    #: Resolved config -> a ConfigError naming a setting this supernet cannot honour.
    check: Callable[[Any], None] = field(default=_accepts)


def register_supernet(entry: OneShotSpace) -> OneShotSpace:
    _REGISTRY[entry.name] = entry
    return entry


def _load() -> None:
    """Import the modules that register supernets: this package's when first asked (they import
    the searches, which import this module), and the plug-ins."""
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    load_plugins()


def supernet_spaces(recipe: str | None = None) -> tuple[str, ...]:
    """The spaces with a supernet (that the search `recipe` has published settings for)."""
    _load()
    return tuple(sorted(name for name, entry in _REGISTRY.items() if recipe is None or recipe in entry.defaults))


def supernet_for(space: str) -> OneShotSpace:
    """The registration of `space`'s supernet; a ConfigError naming the spaces that have one."""
    _load()
    if space not in _REGISTRY:
        raise ConfigError("space", f"no supernet for {space!r}", supernet_spaces())
    return _REGISTRY[space]
