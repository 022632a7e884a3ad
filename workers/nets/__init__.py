"""Networks built from architectures, one module per kind of network.

A module registers a builder for each space whose architectures it turns into
networks:

    @register("nb201", NB201Arch)
    def build(arch: NB201Arch, config: NetConfig) -> nn.Module: ...

This package imports all its modules, so adding a space's network is adding a
file here; `build_model` dispatches by space name.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from raynas.common import ConfigError, InvalidArchitecture
from raynas.workers.nets.base import BUILDERS, LANGUAGE_SPACES, SEGMENTATION_SPACES, NetConfig, register, space_task

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

def space_names() -> list[str]:
    """The spaces `build_model` can build networks for."""
    return sorted(BUILDERS)


def build_model(space_name: str, arch: object, config: NetConfig | None = None) -> nn.Module:
    """The network of `arch`, an architecture of the space `space_name`, freshly initialised
    (`config` None: NetConfig's defaults)."""
    config = config or NetConfig()
    if space_name not in BUILDERS:
        raise ConfigError("space", f"no network builder for space {space_name!r}", space_names())
    arch_type, builder = BUILDERS[space_name]
    if not isinstance(arch, arch_type):
        raise InvalidArchitecture(
            "arch", f"the {space_name} builder takes a {arch_type.__name__}, got {type(arch).__name__}"
        )
    return builder(arch, config)


__all__ = ["BUILDERS", "LANGUAGE_SPACES", "SEGMENTATION_SPACES", "NetConfig", "build_model", "register", "space_names",
           "space_task"]
