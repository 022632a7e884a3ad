"""Auto-DeepLab's segmentation network for a decoded architecture (cell + path), and the
parts its supernet shares (workers/oneshot/autodeeplab.py): the stem, the resampling of a
cell's inputs, the ASPP head.

- Stem (tensorflow/models deeplab `hnasnet`): conv 3x3 stride 2 (64), conv 3x3 (64),
  conv 3x3 stride 2 (128), each with BN and ReLU: the image at output stride 4.
- Layer l runs the cell at level path[l] (width F * 2^level per block, 5 blocks concatenated).
  Its input h_{l-1} is moved to the layer's level: a strided 3x3 ReLU-conv-BN one level down,
  bilinear upsampling and a 1x1 ReLU-conv-BN one level up, a 1x1 ReLU-conv-BN in place; h_{l-2}
  is resized bilinearly to that size and projected by a 1x1 ReLU-conv-BN (as hnasnet's cell
  base does). Before layer 0, h_{l-1} is the stem's output and h_{l-2} its second conv's.
- Head: ASPP at the last layer's level (a 1x1 branch, a 3x3 branch of rate 96/stride, image
  pooling; each B * F wide), a 1x1 projection, a 1x1 classifier, upsampled bilinearly to the
  input. The published models add DeepLabv3+'s decoder (low-level features from stride 4),
  which this network leaves out; `nas inspect` reports its parameters beside the published ones.

Logits are [N, num_classes, H, W] for input [N, C, H, W]; H and W should be multiples of 32 so
that every level has an exact size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.search_spaces.autodeeplab import BLOCKS, STRIDES
from raynas.search_spaces.types import AutoDeepLabArch
from raynas.workers.nets.base import NetConfig, register
from raynas.workers.ops import AUTODEEPLAB_OPS, ReLUConvBN

#: The filter multiplier F of the paper's search (sec. 5.1); the published networks use 20/32/48.
DEFAULT_FILTERS = 8
STEM_WIDTHS = (64, 64, 128)
#: ASPP's atrous rate at output stride s is ASPP_RATE_BASE / s (24 at stride 4 .. 3 at stride 32),
#: so that every level's branch sees the same context in the image.
ASPP_RATE_BASE = 96


def width(filters: int, level: int) -> int:
    """Channels per block at `level`: F at stride 4, doubling with each level (paper sec. 5.1)."""
    return filters * 2 ** level


class Stem(nn.Module):
    """The image to stride 4; returns (stride-2 features, stride-4 features): h_{-2} and h_{-1}."""

    def __init__(self, in_channels: int, affine: bool = True):
        super().__init__()
        a, b, c = STEM_WIDTHS

        def conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(c_out, affine=affine), nn.ReLU())

        self.first, self.second, self.third = conv(in_channels, a, 2), conv(a, b, 1), conv(b, c, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.second(self.first(x))
        return half, self.third(half)


class Resample(nn.Module):
    """h_{l-1} from level `source` to level `target` (one level apart at most), at C_out channels."""

    def __init__(self, C_in: int, C_out: int, source: int, target: int, affine: bool = True):
        super().__init__()
        self.up = target < source
        if target > source:
            self.op = ReLUConvBN(C_in, C_out, 3, 2, 1, affine=affine)
        else:
            self.op = ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.op(x)


class Resize(nn.Module):
    """h_{l-2} resized bilinearly to a given size, then a 1x1 ReLU-conv-BN to C_out channels."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        self.op = ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.op(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling at one level, ending in per-class logits at that level."""

    def __init__(self, C_in: int, C: int, level: int, num_classes: int, affine: bool = True):
        super().__init__()
        rate = ASPP_RATE_BASE // STRIDES[level]

        def branch(kernel_size: int, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(C_in, C, kernel_size, padding=dilation * (kernel_size // 2),
                                           dilation=dilation, bias=False),
                                 nn.BatchNorm2d(C, affine=affine), nn.ReLU())

        self.branches = nn.ModuleList([branch(1), branch(3, rate)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(C_in, C, 1, bias=False), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(3 * C, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine), nn.ReLU())
        self.classifier = nn.Conv2d(C, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.classifier(self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1)))


class Cell(nn.Module):
    """A discrete Auto-DeepLab cell at one level: five blocks of two ops, concatenated."""

    def __init__(self, cell: tuple[tuple[str, int], ...], C_prev_prev: int, C_prev: int, C: int, source: int,
                 target: int):
        super().__init__()
        self.preprocess0 = Resize(C_prev_prev, C)
        self.preprocess1 = Resample(C_prev, C, source, target)
        self.inputs = tuple(j for _, j in cell)
        self.ops = nn.ModuleList(AUTODEEPLAB_OPS[op](C, 1, True) for op, _ in cell)

    def forward(self, h_prev_prev: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        s1 = self.preprocess1(h_prev)
        states = [self.preprocess0(h_prev_prev, s1.shape[-2:]), s1]
        for b in range(BLOCKS):
            (i, j), (op_i, op_j) = self.inputs[2 * b:2 * b + 2], self.ops[2 * b:2 * b + 2]
            states.append(op_i(states[i]) + op_j(states[j]))
        return torch.cat(states[2:], dim=1)


class AutoDeepLabNet(nn.Module):
    def __init__(self, arch: AutoDeepLabArch, filters: int = DEFAULT_FILTERS, in_channels: int = 3,
                 num_classes: int = 19):
        super().__init__()
        self.stem = Stem(in_channels)
        widths = [STEM_WIDTHS[1], STEM_WIDTHS[2]]
        levels = [0, *arch.path]
        self.cells = nn.ModuleList()
        for layer, level in enumerate(arch.path):
            C = width(filters, level)
            self.cells.append(Cell(arch.cell, widths[-2], widths[-1], C, levels[layer], level))
            widths.append(BLOCKS * C)
        self.head = ASPP(widths[-1], BLOCKS * filters, arch.path[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_prev_prev, h_prev = self.stem(x)
        for cell in self.cells:
            h_prev_prev, h_prev = h_prev, cell(h_prev_prev, h_prev)
        return F.interpolate(self.head(h_prev), size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("autodeeplab", AutoDeepLabArch)
def build(arch: AutoDeepLabArch, config: NetConfig) -> nn.Module:
    # The path fixes the depth; the trainer's drop-path ramp and an auxiliary head are DARTS' only.
    config.refuse("autodeeplab", "layers", "auxiliary", "drop_path")
    return AutoDeepLabNet(arch, filters=config.channels or DEFAULT_FILTERS, in_channels=config.in_channels,
                          num_classes=config.num_classes)
