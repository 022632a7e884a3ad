"""The CIFAR evaluation network of DARTS (quark0/darts NetworkCIFAR) for a cell
genotype of the darts or nasnet space.

stem conv3x3 (3C) + BN -> `layers` cells, the ones at layers//3 and
2*layers//3 reducing (stride 2, channels doubled) -> global average pool ->
linear. An auxiliary classifier reads the output of the second reduction cell
during training. Any step count and concat work, so the NASNet and AmoebaNet
ports (5 steps, concat [2..6], [4, 5, 6], ...) build as well as DARTS' cells.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raynas.common import ConfigError
from raynas.search_spaces.types import Genotype
from raynas.workers.nets.base import NetConfig, register
from raynas.workers.ops import DARTS_OPS, FactorizedReduce, ReLUConvBN

DEFAULT_CHANNELS = 36
DEFAULT_LAYERS = 20
STEM_MULTIPLIER = 3


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole examples of an op's output with probability p, scaling the
    kept ones by 1/(1-p) so the expected sum at the node is unchanged."""
    keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Cell(nn.Module):
    """Inputs c_{k-2}, c_{k-1} are first brought to C channels (and, after a
    reduction cell, c_{k-2} to the new resolution); node i sums two ops of
    earlier nodes; the output concatenates the `concat` nodes."""

    def __init__(self, pairs: tuple[tuple[str, int], ...], concat: tuple[int, ...],
                 C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        # In a reduction cell only the ops reading the cell inputs subsample.
        self.ops = nn.ModuleList(
            DARTS_OPS[op](C, 2 if reduction and source < 2 else 1, True) for op, source in pairs
        )
        self.sources = tuple(source for _, source in pairs)
        self.concat = concat
        self.out_channels = len(concat) * C

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(0, len(self.ops), 2):
            node = 0
            for op, source in zip(self.ops[i:i + 2], self.sources[i:i + 2]):
                h = op(states[source])
                # Dropping an identity would cut the cell's shortcut, so DARTS spares it.
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' AuxiliaryHeadCIFAR: ReLU, average pool to 2x2, 1x1 conv to 128, BN,
    ReLU, 2x2 conv to 768, BN, ReLU, linear.

    DARTS pools its 8x8 maps with a 5x5 window at stride 3; the window here keeps
    those proportions (5/8 of the map, stride 3/8) so that other input sizes also
    pool to 2x2, and equals DARTS' on 8x8 maps.
    """

    def __init__(self, C: int, size: int, num_classes: int):
        super().__init__()
        if size < 2:
            raise ConfigError("image_size", f"leaves {size}x{size} maps for the auxiliary head, "
                              "which needs at least 2x2")
        stride = math.ceil(3 * size / 8)
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(size - stride, stride=stride, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class NetworkCIFAR(nn.Module):
    def __init__(self, genotype: Genotype, C: int, layers: int, in_channels: int, num_classes: int,
                 image_size: int, auxiliary: bool, drop_path_prob: float):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        #: ScheduledDropPath (NASNet): cell i of n drops with drop_path_prob x (i + 1) / n, deeper cells more.
        self.drop_path_by_depth = False
        C_stem = STEM_MULTIPLIER * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        reductions = {layers // 3, 2 * layers // 3}
        self.auxiliary_at = 2 * layers // 3
        self.auxiliary_head: AuxiliaryHead | None = None
        C_prev_prev, C_prev, C_curr, size = C_stem, C_stem, C, image_size
        reduction_prev = False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
                # Every reducing op (3x3 stride-2 convs and pools, FactorizedReduce) gives ceil(size / 2).
                size = (size + 1) // 2
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (
                genotype.normal, genotype.normal_concat)
            cell = Cell(pairs, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, cell.out_channels, reduction
            if auxiliary and i == self.auxiliary_at:
                self.auxiliary_head = AuxiliaryHead(C_prev, size, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            p = self.drop_path_prob * (i + 1) / len(self.cells) if self.drop_path_by_depth else self.drop_path_prob
            s0, s1 = s1, cell(s0, s1, p)
            if i == self.auxiliary_at and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return logits if aux_logits is None else (logits, aux_logits)


def build(arch: Genotype, config: NetConfig) -> nn.Module:
    return NetworkCIFAR(
        arch,
        C=config.channels or DEFAULT_CHANNELS,
        layers=config.layers or DEFAULT_LAYERS,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        image_size=config.image_size,
        auxiliary=config.auxiliary,
        drop_path_prob=config.drop_path,
    )


register("darts", Genotype)(build)
register("nasnet", Genotype)(build)
