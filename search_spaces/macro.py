"""Zoph & Le's CNN space (NAS with RL, 2017): a stack of convolutions, one
filter size and width per layer, and anchor-point skip connections.

Layer i reads the concatenation of the earlier layers its anchor point picks
(`skips`); a layer that picks none reads the image, as in the paper. The paper
grows the depth during the search (6 layers, +2 every 1,600 samples); that
schedule belongs to the strategy, which asks for `with_depth(n)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import register
from raynas.search_spaces.base import Categorical, SearchSpace, Subset
from raynas.search_spaces.types import MacroArch, MacroLayer

FILTER_HEIGHTS = (1, 3, 5, 7)
FILTER_WIDTHS = (1, 3, 5, 7)
NUM_FILTERS = (24, 36, 48, 64)
#: The deepest space that may be built: the decisions grow with the square of the depth
#: (each layer's skips range over all earlier layers), so a request cannot be allowed to
#: name any depth. Zoph & Le's deepest CIFAR network had 39 layers.
MAX_LAYERS = 64

_LAYER = re.compile(r"^(\d+)x(\d+)-(\d+)(?:<(\d+(?:,\d+)*))?$")


@register
class MacroSpace(SearchSpace):
    """`num_layers` conv layers; any depth up to `max_layers` parses and validates."""

    name = "macro"
    summary = "Zoph & Le's CNN macro space: filter sizes, counts and skip connections per layer"
    capabilities = frozenset({"depth"})

    def __init__(self, num_layers: int = 6, max_layers: int = 24):
        if type(max_layers) is not int or not 1 <= max_layers <= MAX_LAYERS:
            raise ConfigError("max_layers", f"got {max_layers!r}", f"an integer in 1..{MAX_LAYERS}")
        if type(num_layers) is not int or not 1 <= num_layers <= max_layers:
            raise ConfigError("num_layers", f"got {num_layers!r}", f"an integer in 1..{max_layers}")
        self.num_layers = num_layers
        self.max_layers = max_layers
        decisions = []
        for i in range(num_layers):
            decisions += [
                Categorical(f"layer{i}.filter_height", FILTER_HEIGHTS, group="filter_height"),
                Categorical(f"layer{i}.filter_width", FILTER_WIDTHS, group="filter_width"),
                Categorical(f"layer{i}.num_filters", NUM_FILTERS, group="num_filters"),
            ]
            # Every layer has its connections step, the first one with nothing to choose: a
            # controller takes each layer's anchor there, once the layer's choices are made.
            decisions.append(Subset(f"layer{i}.skips", tuple(range(i)), group="skip"))
        self._decisions = tuple(decisions)

    def with_depth(self, num_layers: int) -> MacroSpace:
        """The same space with `num_layers` layers (the paper's growing depth)."""
        return MacroSpace(num_layers, self.max_layers)

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> MacroArch:
        self.check_values(values)
        layers, pos = [], 0
        for _ in range(self.num_layers):
            height, width, filters, skips = values[pos: pos + 4]
            pos += 4
            layers.append(MacroLayer(height, width, filters, skips))
        return MacroArch(tuple(layers))

    def to_values(self, arch: MacroArch) -> tuple:
        depth = len(self.validate(arch).layers)
        if depth != self.num_layers:
            raise InvalidArchitecture(
                "arch", f"depth {depth} differs from this macro space's num_layers={self.num_layers}; "
                f"use space.with_depth({depth})"
            )
        return tuple(_values(arch))

    def validate(self, arch: MacroArch) -> MacroArch:
        values = _values(arch)
        if not 1 <= len(arch.layers) <= self.max_layers:
            raise InvalidArchitecture("arch", f"depth {len(arch.layers)} is out of range", f"1..{self.max_layers}")
        # A space of the arch's own depth has exactly the checks this arch needs.
        self.with_depth(len(arch.layers)).check_values(values)
        return arch

    def parse(self, text: str) -> MacroArch:
        layers = []
        for i, part in enumerate(text.split("|")):
            m = _LAYER.match(part.strip())
            if not m:
                raise InvalidArchitecture(
                    f"arch.layer{i}", f"cannot read {part.strip()!r}",
                    "HxW-F or HxW-F<j,k (e.g. 3x5-36 | 1x1-24<0 | 5x5-48<0,1)",
                )
            skips = tuple(int(j) for j in m.group(4).split(",")) if m.group(4) else ()
            layers.append(MacroLayer(int(m.group(1)), int(m.group(2)), int(m.group(3)), skips))
        return self.validate(MacroArch(tuple(layers)))

    def draw(self, arch: MacroArch) -> str:
        self.validate(arch)
        lines = []
        for i, layer in enumerate(arch.layers):
            if layer.skips:
                source = ("layer " if len(layer.skips) == 1 else "layers ") + ", ".join(map(str, layer.skips))
            else:
                source = "image"
            lines.append(
                f"layer {i}: conv {layer.filter_height}x{layer.filter_width}, "
                f"{layer.num_filters} filters <- {source}"
            )
        return "\n".join(lines)


def _values(arch: MacroArch) -> list:
    """The decision values of `arch` at its own depth (layer 0's skips are always empty)."""
    if not (
        isinstance(arch, MacroArch) and isinstance(arch.layers, tuple)
        and all(isinstance(layer, MacroLayer) for layer in arch.layers)
    ):
        raise InvalidArchitecture("arch", f"expected a MacroArch of MacroLayers, got {arch!r}")
    values = []
    for i, layer in enumerate(arch.layers):
        if i == 0 and layer.skips:
            raise InvalidArchitecture("arch.layer0.skips", "the first layer has no earlier layer to read")
        values += [layer.filter_height, layer.filter_width, layer.num_filters, layer.skips]
    return values
