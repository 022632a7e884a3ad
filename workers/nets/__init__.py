"""Networks built from architectures, one module per kind of network.

A module registers a builder for each space whose architectures it turns into
networks:

    @register("nb201", NB201Arch)
    def build(arch: NB201Arch, config: NetConfig) -> nn.Module: ...

This package imports all its modules, so adding a space's network is adding a
file here; `workers.build.build_model` dispatches by space name.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable

from torch import nn

if TYPE_CHECKING:
    from ..build import NetConfig

Builder = Callable[[object, "NetConfig"], nn.Module]

#: space name -> (architecture type the builder takes, builder)
BUILDERS: dict[str, tuple[type, Builder]] = {}


def register(space: str, arch_type: type) -> Callable[[Builder], Builder]:
    """Decorator: `builder(arch, config)` builds networks for `space`'s architectures."""

    def add(builder: Builder) -> Builder:
        if space in BUILDERS:
            raise RuntimeError(f"two network builders registered for space {space!r}")
        BUILDERS[space] = (arch_type, builder)
        return builder

    return add


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
