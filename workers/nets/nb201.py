"""NAS-Bench-201's network (AutoDL-Projects' TinyNetwork) around one cell.

stem conv3x3 + BN -> N cells at C -> residual reduction to 2C -> N cells ->
residual reduction to 4C -> N cells -> BN, ReLU -> global average pool -> linear.
With C=16, N=5 and 10 classes the parameter counts equal the benchmark's.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.search_spaces.nb201 import EDGES, NB201Arch
from raynas.workers.nets.base import NetConfig, register
from raynas.workers.ops import NB201_OPS, ReLUConvBN

DEFAULT_CHANNELS = 16
DEFAULT_CELLS_PER_STAGE = 5


class NB201Cell(nn.Module):
    """Node 0 is the input; node i sums op_{j->i}(node j) over j < i; node 3 is the output."""

    def __init__(self, arch: NB201Arch, C: int):
        super().__init__()
        self.edges = EDGES
        self.ops = nn.ModuleList(NB201_OPS[op](C, C, 1, True, True) for op in arch.ops)
        self.num_nodes = 1 + max(target for target, _ in EDGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for node in range(1, self.num_nodes):
            nodes.append(sum(op(nodes[source]) for (target, source), op in zip(self.edges, self.ops)
                             if target == node))
        return nodes[-1]


class ResNetReduction(nn.Module):
    """NB201's stride-2 ResNet basic block between stages: two ReLU-conv-BN 3x3
    on the main path, average pool + 1x1 conv on the shortcut, no final ReLU."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        # ceil_mode keeps the shortcut the size of the strided conv on odd inputs;
        # on even inputs it is the reference's plain 2x2 average.
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2, ceil_mode=True),
            nn.Conv2d(C_in, C_out, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    def __init__(self, arch: NB201Arch, C: int, N: int, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        blocks: list[nn.Module] = []
        width = C
        for stage in range(3):
            if stage:
                blocks.append(ResNetReduction(width, 2 * width))
                width *= 2
            blocks += [NB201Cell(arch, width) for _ in range(N)]
        self.cells = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.cells(self.stem(x))))


@register("nb201", NB201Arch)
def build(arch: NB201Arch, config: NetConfig) -> nn.Module:
    config.refuse("nb201", "auxiliary", "drop_path")
    return NB201Network(
        arch,
        C=config.channels or DEFAULT_CHANNELS,
        N=config.layers or DEFAULT_CELLS_PER_STAGE,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
    )
