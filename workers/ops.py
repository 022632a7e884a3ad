"""Operation registries: the blocks that architectures name, as factories.

The same name means different blocks in different benchmarks (DARTS' and
NAS-Bench-201's `skip_connect` and pools differ once channels change; conv
biases follow `affine` in NB201 only), so each benchmark has its own
namespace rather than one dictionary that would have to pick a meaning:

- `DARTS_OPS[name](C, stride, affine)`: every op a DARTS/NASNet-port cell
  genotype may name (search_spaces.cell.CELL_OPS); ops keep the width C.
- `NB201_OPS[name](C_in, C_out, stride, affine, track_running_stats)`:
  NAS-Bench-201's five ops.
- `AUTODEEPLAB_OPS[name](C, stride, affine)`: Auto-DeepLab's eight, under the DARTS
  names; its atrous convs are dense (the paper's and TensorFlow's hnasnet), not DARTS'
  depthwise-separable `dil_conv`.
- `RNN_ACTIVATIONS[name](tensor)`: the recurrent cell's activations.

Structures follow the reference implementations (quark0/darts
cnn/operations.py, AutoDL-Projects xautodl/models/cell_operations.py) so that
parameter counts and FLOPs match the published figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raynas.common import ConfigError


class ReLUConvBN(nn.Sequential):
    """ReLU, conv, BN. Cells put the ReLU first so that every op sees the
    pre-activation sum of its node."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, affine: bool = True, track_running_stats: bool = True,
                 bias: bool = False):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class DepthwiseSeparable(nn.Sequential):
    """ReLU, depthwise k x k conv (optionally dilated), pointwise 1x1 conv, BN:
    DARTS' `dil_conv` as is, and each half of its `sep_conv`."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, affine: bool = True):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two depthwise-separable stages, the first carrying the stride (DARTS'
    `sep_conv`, after NASNet, which applies its separable convs twice)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, affine: bool = True):
        padding = kernel_size // 2
        super().__init__(
            DepthwiseSeparable(C_in, C_in, kernel_size, stride, padding, affine=affine),
            DepthwiseSeparable(C_in, C_out, kernel_size, 1, padding, affine=affine),
        )


class FactorizedConv(nn.Sequential):
    """ReLU, 1 x k conv, k x 1 conv, BN: NASNet's `1xk then kx1` op; the
    stride is split between the two convs so each subsamples one axis."""

    def __init__(self, C: int, kernel_size: int, stride: int, affine: bool = True):
        pad = kernel_size // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C, C, (1, kernel_size), stride=(1, stride), padding=(0, pad), bias=False),
            nn.Conv2d(C, C, (kernel_size, 1), stride=(stride, 1), padding=(pad, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution (or, at stride 1, only change the width) with 1x1
    convs instead of a lossy strided identity.

    At stride 2, two 1x1 convs see the even and the odd pixel grids and their
    outputs are concatenated, so no input pixel is skipped. The odd grid reads
    a zero-padded input, which gives the same result as DARTS' `x[:, :, 1:, 1:]`
    on even sizes and keeps the two halves the same size on odd ones.
    """

    def __init__(self, C_in: int, C_out: int, stride: int = 2, affine: bool = True,
                 track_running_stats: bool = True, bias: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError("stride", f"FactorizedReduce supports stride 1 or 2, got {stride}", (1, 2))
        self.stride = stride
        if stride == 2:
            self.relu = nn.ReLU()
            self.convs = nn.ModuleList(
                nn.Conv2d(C_in, c, 1, stride=2, bias=bias) for c in (C_out // 2, C_out - C_out // 2)
            )
        else:
            # NAS-Bench-201's width-only change: a plain 1x1 conv, no ReLU.
            self.conv = nn.Conv2d(C_in, C_out, 1, bias=bias)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        x = self.relu(x)
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.convs[0](x), self.convs[1](shifted)], dim=1))


class Zero(nn.Module):
    """The `none` op: zeros shaped like the op's output, so a cell can sum it
    with its other inputs. It has no parameters and contributes no gradient."""

    def __init__(self, C_out: int, stride: int):
        super().__init__()
        self.C_out = C_out
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)


def max_pool(kernel_size: int, stride: int) -> nn.Module:
    return nn.MaxPool2d(kernel_size, stride=stride, padding=kernel_size // 2)


def avg_pool(kernel_size: int, stride: int) -> nn.Module:
    # Border windows average only real pixels, so zero padding does not darken the edges.
    return nn.AvgPool2d(kernel_size, stride=stride, padding=kernel_size // 2, count_include_pad=False)


OpFactory = Callable[..., nn.Module]

# DARTS PRIMITIVES and the NASNet paper's ops under the DARTS port's names. Cells keep
# the width; reduction cells pass stride 2 to the ops reading the cell inputs.
DARTS_OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(C, stride),
    "skip_connect": lambda C, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
    ),
    "avg_pool_3x3": lambda C, stride, affine: avg_pool(3, stride),
    "max_pool_3x3": lambda C, stride, affine: max_pool(3, stride),
    "max_pool_5x5": lambda C, stride, affine: max_pool(5, stride),
    "max_pool_7x7": lambda C, stride, affine: max_pool(7, stride),
    "conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine),
    "conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine),
    "conv_3x1_1x3": lambda C, stride, affine: FactorizedConv(C, 3, stride, affine),
    "conv_7x1_1x7": lambda C, stride, affine: FactorizedConv(C, 7, stride, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, affine),
    "dil_conv_3x3": lambda C, stride, affine: DepthwiseSeparable(C, C, 3, stride, 2, dilation=2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DepthwiseSeparable(C, C, 5, stride, 4, dilation=2, affine=affine),
}

#: Auto-DeepLab (Liu et al., CVPR 2019, sec. 3.1): "3x3 and 5x5 atrous conv with rate 2" are full
#: k x k convs (hnasnet's `atrous_kxk`: ReLU, conv at rate 2, BN), k^2 C^2 weights against the
#: depthwise-separable k^2 C + C^2 of DARTS' `dil_conv`; the other six are DARTS'.
AUTODEEPLAB_OPS: dict[str, OpFactory] = {
    **{name: DARTS_OPS[name] for name in ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3",
                                          "skip_connect", "none")},
    "dil_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 2, dilation=2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: ReLUConvBN(C, C, 5, stride, 4, dilation=2, affine=affine),
}


def _nb201_pool(C_in: int, C_out: int, stride: int, affine: bool, track_running_stats: bool) -> nn.Module:
    pool = avg_pool(3, stride)
    if C_in == C_out:
        return pool
    # Pools cannot change the width, so NB201 first projects with a 1x1 ReLU-conv-BN.
    return nn.Sequential(
        ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine, track_running_stats=track_running_stats,
                   bias=not affine),
        pool,
    )


def _nb201_conv(kernel_size: int) -> OpFactory:
    # bias = not affine: without BN's shift, NB201 lets the conv carry the bias.
    return lambda C_in, C_out, stride, affine, track_running_stats: ReLUConvBN(
        C_in, C_out, kernel_size, stride, kernel_size // 2, affine=affine,
        track_running_stats=track_running_stats, bias=not affine,
    )


NB201_OPS: dict[str, OpFactory] = {
    "none": lambda C_in, C_out, stride, affine, track_running_stats: Zero(C_out, stride),
    "skip_connect": lambda C_in, C_out, stride, affine, track_running_stats: (
        nn.Identity() if stride == 1 and C_in == C_out
        else FactorizedReduce(C_in, C_out, stride, affine, track_running_stats, bias=not affine)
    ),
    "nor_conv_1x1": _nb201_conv(1),
    "nor_conv_3x3": _nb201_conv(3),
    "avg_pool_3x3": _nb201_pool,
}

RNN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}
