"""Plug-ins from outside the project: modules that register strategies, evaluators, datasets or
search spaces when imported.

Two ways to name them, read by every registry before it answers:
- an installed package's entry points in the group `raynas.plugins` (each entry a module), and
- the environment variable `RAYNAS_PLUGINS`: module names separated by commas.

On a Ray cluster every process that builds a search's parts must see the same plug-ins: install
the package on every node (entry points), or pass the variable in the job's runtime environment;
an embedded Ray started by `nas search` inherits this process's environment.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points

from raynas.common.errors import ConfigError

GROUP = "raynas.plugins"
ENV = "RAYNAS_PLUGINS"

_loaded: set[str] = set()


def load_plugins() -> None:
    """Import every plug-in module not imported yet (cheap after the first call)."""
    names = [*_entry_point_modules(), *(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError("plugins", f"cannot import the plug-in module {name!r}: {exc}",
                              f"an importable module (named by {ENV} or a {GROUP} entry point)") from None
        _loaded.add(name)


@functools.cache
def _entry_point_modules() -> tuple[str, ...]:
    # Scanning the installed packages' metadata costs milliseconds: once per process.
    return tuple(e.value for e in entry_points(group=GROUP))
