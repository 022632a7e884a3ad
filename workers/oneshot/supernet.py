"""Supernets for gradient-based search: every edge carries every candidate op, mixed
by the softmax of that edge's architecture weights (alphas).

The alphas live in their own `ParameterList` (`arch_parameters()`), and
`network_parameters()` excludes them, so the weight optimizer never sees them.

- `DartsSupernet` (DARTS' search model): stem 3C, `layers` cells with reductions at
  1/3 and 2/3, `steps` nodes per cell each summing MixedOps of all earlier states,
  the last `multiplier` nodes concatenated. Every BN is `affine=False` and pools get
  an extra affine-free BN, as in the DARTS code.
- `NB201Supernet` (NAS-Bench-201's DARTS model): NB201's network with a MixedOp on
  each of the cell's 6 edges, one alpha matrix shared by every cell.

NoisyDARTS: the skip op's output gets zero-mean Gaussian noise with standard
deviation noise_lambda * std(output), only in training mode (both the alphas' and the
weights' steps), before the alpha weighting; in reduction cells the skip is the
stride-2 FactorizedReduce, noised too, as in NoisyDARTS' MixedOp. The std carries no
gradient (NoisyDARTS draws it with torch.normal, which has none for std). NoisyDARTS'
released search code also drops the (noised) skip branch per example with probability
`skip_drop_path` (its search network's default 0.3), in training AND evaluation: its
drop_path has no training check. Theirs scales in place, which in evaluation (no noise, the
identity op) rescales the cell's input state itself; ours never writes its input.

Single path (random search with weight sharing, NAO-WS): `forward(x, path=...)` runs only the
ops a discrete architecture names on the edges it uses (derive.py's `darts_path` and
`nb201_path` build the path), so autograd keeps the activations of one child, not of the
supernet. The alphas are unused then.

Speed without changing the function: the supernet runs NHWC (`channels_last`), MixedOp
skips `none` and accumulates each node with fused multiply-adds, and the 1x1 and dilated
depthwise convs built by workers/ops.py run through `PointwiseConv` and
`DilatedDepthwiseConv` (tests check both against nn.Conv2d, values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import EDGES
from raynas.search_spaces.nb201 import NB201_OPS as NB201_OP_NAMES
from raynas.workers.nets.cell import drop_path
from raynas.workers.nets.nb201 import ResNetReduction
from raynas.workers.ops import DARTS_OPS, NB201_OPS, FactorizedReduce, OpFactory, ReLUConvBN

SKIP = "skip_connect"
#: DARTS' code initialises alphas as 1e-3 * N(0, 1) (the paper says zeros); we follow the code,
#: which breaks the ties a zero start would leave to the first op in derivation.
ALPHA_INIT_SCALE = 1e-3


#: One discrete architecture as the supernet runs it: per alpha matrix, per edge, the indices (in
#: the supernet's primitives) of the ops that edge runs: none where the edge is not used, two
#: where a node reads one input twice.
Path = list[list[tuple[int, ...]]]


class MixedOp(nn.Module):
    def __init__(self, names: tuple[str, ...], ops: list[nn.Module], noise_lambda: float = 0.0,
                 skip_drop_path: float = 0.0):
        super().__init__()
        self.names = names
        self.ops = nn.ModuleList(ops)
        self.noise_lambda = noise_lambda
        self.skip_drop_path = skip_drop_path
        # `none` adds w * 0: skipping it changes neither the output nor any gradient.
        self.active = tuple(i for i, n in enumerate(names) if n != "none")

    def _skip(self, out: torch.Tensor) -> torch.Tensor:
        """NoisyDARTS' treatment of the skip branch: noise in training, then drop-path always."""
        if self.noise_lambda and self.training:
            out = out + torch.randn_like(out) * (self.noise_lambda * out.detach().std())
        if self.skip_drop_path:
            out = drop_path(out, self.skip_drop_path)
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted sum of the ops' outputs, added to `total` if given: a node accumulates all
        its edges with one fused multiply-add per op instead of a product, a sum and a copy."""
        for i in self.active:
            out = self.single(x, i)
            total = weights[i] * out if total is None else torch.addcmul(total, weights[i], out)
        return total

    def single(self, x: torch.Tensor, index: int, total: torch.Tensor | None = None) -> torch.Tensor:
        """Op `index` alone (`none` gives its zeros), added to `total` if given: a single-path edge."""
        out = self.ops[index](x)
        if self.names[index] == SKIP:
            out = self._skip(out)
        return out if total is None else total + out


def search_op(name: str, C: int, stride: int, ops: dict[str, OpFactory] = DARTS_OPS) -> nn.Module:
    """A DARTS-family op (from `ops`, DARTS' by default) as supernets build it: BN without affine,
    pools followed by one."""
    op = ops[name](C, stride, False)
    if "pool" in name:
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


class DartsSearchCell(nn.Module):
    def __init__(self, primitives: tuple[str, ...], steps: int, multiplier: int, C_prev_prev: int, C_prev: int,
                 C: int, reduction: bool, reduction_prev: bool, noise_lambda: float, skip_drop_path: float):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(primitives, [search_op(p, C, 2 if reduction and j < 2 else 1) for p in primitives], noise_lambda,
                    skip_drop_path)
            for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None,
                path: list[tuple[int, ...]] | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = None
            for j, h in enumerate(states):
                node = _edge(self.edges[offset + j], h, weights, path, offset + j, node)
            offset += len(states)
            if node is None:
                raise ValueError(f"the path gives node {len(states)} of a cell no input")
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(steps: int) -> int:
    """Edges of a DARTS cell: node i reads the 2 cell inputs and the i earlier nodes."""
    return sum(2 + i for i in range(steps))


def _edge(edge: MixedOp, h: torch.Tensor, weights: torch.Tensor | None, path: list[tuple[int, ...]] | None,
          e: int, total: torch.Tensor | None) -> torch.Tensor | None:
    """Edge `e` added to `total`: mixed by `weights`, or only its path ops (unused edges add nothing)."""
    if path is None:
        return edge(h, weights[e], total)
    for op in path[e]:
        total = edge.single(h, op, total)
    return total


class Supernet(nn.Module):
    """What the search loop needs of a supernet. `forward(x)` mixes every op by the alphas;
    `forward(x, path)` runs one discrete architecture's ops only."""

    primitives: tuple[str, ...]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def named_network_parameters(self) -> list[tuple[str, nn.Parameter]]:
        arch = {id(a) for a in self.alphas}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in arch]

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_network_parameters()]

    def channels_last(self) -> Supernet:
        """NHWC weights (and inputs, see `_nhwc`): 1.2-1.4x faster convolutions on CPU (oneDNN) and
        on tensor-core GPUs, same results up to float rounding."""
        return self.to(memory_format=torch.channels_last)

    def arch_weights(self) -> list[torch.Tensor]:
        """Softmax over ops, per edge, for each alpha matrix."""
        return [F.softmax(a, dim=-1) for a in self.alphas]


class DartsSupernet(Supernet):
    def __init__(self, C: int = 16, layers: int = 8, steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                 in_channels: int = 3, num_classes: int = 10, primitives: tuple[str, ...] = PRIMITIVES,
                 noise_lambda: float = 0.0, skip_drop_path: float = 0.0):
        super().__init__()
        self.primitives = tuple(primitives)
        self.steps = steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        reductions = {layers // 3, 2 * layers // 3}
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            self.cells.append(DartsSearchCell(self.primitives, steps, multiplier, C_prev_prev, C_prev, C_curr,
                                              reduction, reduction_prev, noise_lambda, skip_drop_path))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        shape = (num_edges(steps), len(self.primitives))
        #: [normal, reduce]
        self.alphas = nn.ParameterList(nn.Parameter(ALPHA_INIT_SCALE * torch.randn(shape)) for _ in range(2))
        _fast_convs(self)

    def forward(self, x: torch.Tensor, path: Path | None = None) -> torch.Tensor:
        normal, reduce = self.arch_weights() if path is None else (None, None)
        s0 = s1 = self.stem(_nhwc(x, self.stem[0].weight))
        for cell in self.cells:
            k = int(cell.reduction)
            s0, s1 = s1, cell(s0, s1, reduce if k else normal, None if path is None else path[k])
        return self.classifier(self.pool(s1).flatten(1))


class NB201SearchCell(nn.Module):
    def __init__(self, C: int, noise_lambda: float, skip_drop_path: float):
        super().__init__()
        # affine=False, tracked BN statistics: AutoDL-Projects' DARTS-on-NB201 setting.
        self.edges = nn.ModuleList(
            MixedOp(NB201_OP_NAMES, [NB201_OPS[n](C, C, 1, False, True) for n in NB201_OP_NAMES], noise_lambda,
                    skip_drop_path)
            for _ in EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, path: list[tuple[int, ...]] | None = None
                ) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            total = None
            for e, ((target, source), edge) in enumerate(zip(EDGES, self.edges)):
                if target == node:
                    total = _edge(edge, nodes[source], weights, path, e, total)
            nodes.append(total)
        return nodes[-1]


class NB201Supernet(Supernet):
    def __init__(self, C: int = 16, N: int = 5, in_channels: int = 3, num_classes: int = 10,
                 noise_lambda: float = 0.0, skip_drop_path: float = 0.0):
        super().__init__()
        self.primitives = NB201_OP_NAMES
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        blocks: list[nn.Module] = []
        width = C
        for stage in range(3):
            if stage:
                blocks.append(ResNetReduction(width, 2 * width))
                width *= 2
            blocks += [NB201SearchCell(width, noise_lambda, skip_drop_path) for _ in range(N)]
        self.cells = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)
        self.alphas = nn.ParameterList([nn.Parameter(ALPHA_INIT_SCALE * torch.randn(len(EDGES), len(NB201_OP_NAMES)))])
        _fast_convs(self)

    def forward(self, x: torch.Tensor, path: Path | None = None) -> torch.Tensor:
        (weights,) = self.arch_weights() if path is None else (None,)
        x = self.stem(_nhwc(x, self.stem[0].weight))
        for block in self.cells:
            if isinstance(block, NB201SearchCell):
                x = block(x, weights, None if path is None else path[0])
            else:
                x = block(x)
        return self.classifier(self.head(x))


class PointwiseConv(nn.Conv2d):
    """A stride-1 1x1 conv run as a matmul over the channel axis, which is innermost in an NHWC
    tensor: about 2x faster than the 1x1 convolution kernels at supernet widths on CPU. Same
    weights and result (the convolution kernels' rounding aside). Only measured on CPU, so
    other devices keep the library's convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


class DilatedDepthwiseConv(nn.Conv2d):
    """A depthwise k x k conv with dilation 2 ('same' padding) as an undilated conv on the input's
    interleaved pixel grids, the way TensorFlow runs atrous convs (space_to_batch). Each output
    pixel reads only pixels of its own grid, so the sums are the same; dense kernels run 2-6x
    faster than dilated ones on CPU. At stride 2 only the even grid is read at all, which saves
    work on any device; the regrouping at stride 1 is only measured on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size[0] // 2
        if self.stride == (2, 2):
            return F.conv2d(x[:, :, ::2, ::2], self.weight, self.bias, 1, pad, 1, self.groups)
        b, c, h, w = x.shape
        if x.device.type != "cpu" or h % 2 or w % 2 or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        # NHWC (b, h/2, 2, w/2, 2, c) -> the 4 grids stacked on the batch axis, and back.
        grids = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
        grids = grids.reshape(4 * b, h // 2, w // 2, c).permute(0, 3, 1, 2)
        out = F.conv2d(grids, self.weight, self.bias, 1, pad, 1, self.groups)
        out = out.permute(0, 2, 3, 1).reshape(2, 2, b, h // 2, w // 2, c).permute(2, 3, 0, 4, 1, 5)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _fast_convs(model: nn.Module) -> None:
    """Give the convs of the shared op factories (workers/ops.py) the faster forward above where
    it computes the same function. Only the class changes: parameters, their names and
    initialisation stay those of the factories."""
    for conv in model.modules():
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
            continue
        k, groups = conv.kernel_size, conv.groups
        if k == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and groups == 1:
            conv.__class__ = PointwiseConv
        elif (conv.dilation == (2, 2) and k[0] == k[1] and k[0] % 2 and conv.padding == (k[0] - 1,) * 2
              and groups == conv.in_channels == conv.out_channels and conv.stride in ((1, 1), (2, 2))):
            conv.__class__ = DilatedDepthwiseConv


def _nhwc(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The input in the stem's memory format, so a channels_last supernet runs NHWC throughout."""
    if weight.is_contiguous(memory_format=torch.channels_last) and weight.dim() == 4 and weight.shape[-1] > 1:
        return x.contiguous(memory_format=torch.channels_last)
    return x
