"""Zoph & Le's CNN (NAS with RL, 2017) for a MacroArch.

Layer i is a filter_height x filter_width convolution with num_filters
outputs ('same' padding, stride 1), BN and ReLU. Its input is the channel
concatenation of the layers in its `skips`, or the image when it has none.
Zoph & Le zero-pad inputs of different sizes to a common one; here every layer
keeps the image size, so no padding is needed. The outputs no later layer
reads are concatenated, averaged over space and classified by a linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.search_spaces.types import MacroArch
from raynas.workers.nets.base import NetConfig, register


class MacroNetwork(nn.Module):
    def __init__(self, arch: MacroArch, in_channels: int, num_classes: int):
        super().__init__()
        widths = [layer.num_filters for layer in arch.layers]
        self.sources = tuple(layer.skips for layer in arch.layers)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(sum(widths[j] for j in layer.skips) if layer.skips else in_channels,
                          layer.num_filters, (layer.filter_height, layer.filter_width),
                          padding="same", bias=False),
                nn.BatchNorm2d(layer.num_filters),
                nn.ReLU(),
            )
            for layer in arch.layers
        )
        read = {j for skips in self.sources for j in skips}
        self.outputs = tuple(i for i in range(len(widths)) if i not in read)
        self.classifier = nn.Linear(sum(widths[i] for i in self.outputs), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for layer, skips in zip(self.layers, self.sources):
            outs.append(layer(torch.cat([outs[j] for j in skips], dim=1) if skips else x))
        features = torch.cat([outs[i] for i in self.outputs], dim=1)
        return self.classifier(features.mean(dim=(2, 3)))


@register("macro", MacroArch)
def build(arch: MacroArch, config: NetConfig) -> nn.Module:
    # Width and depth are part of a macro architecture, and it has no cells to drop or tap.
    config.refuse("macro", "channels", "layers", "auxiliary", "drop_path")
    return MacroNetwork(arch, config.in_channels, config.num_classes)
