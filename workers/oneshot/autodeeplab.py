"""Auto-DeepLab's hierarchical search (Liu et al., CVPR 2019): the supernet over the L x 4
trellis, the first-order bilevel search on two halves of the training data, and decoding (the
cell by DARTS' rule, the path by Viterbi over beta).

The supernet: the stem to stride 4 (workers/nets/autodeeplab.py), then at every layer l and
every level s it reaches, the node

    h(l, s) = sum over the moves into it of beta(l, s' -> s) * Cell(h(l-1, s'), h(l-2, s); alpha)

with one mixed cell per incoming transition (its own weights; one alpha shared by all cells, as
the paper's cell is one). Each cell is a mixed cell of B = 5 blocks, each block summing MixedOps
of the two cell inputs and the earlier blocks (20 edges over the 8 ops), its output the 5 blocks
concatenated. beta is normalised per node over its outgoing moves (the paper's eq. 7: beta(s ->
s/2) + beta(s -> s) + beta(s -> 2s) = 1, by a softmax over the moves that stay on the trellis),
so that it is a transition probability and the decoded path the most probable one. h(l-2, s)
is the node of layer l-2 at level s, or at the coarsest level that layer reaches when it does
not reach s; before layer 2 it is the stem's output, before layer 1 the stem's second conv.
After layer L every node gets its own ASPP head; their logits are upsampled to the image and
summed.

The search (paper sec. 5.1, REFERENCES): 40 epochs, batch 2, the whole training set halved
(trainA for the weights, trainB for alpha and beta); weights SGD momentum 0.9, cosine 0.025 ->
0.001, weight decay 3e-4; alpha and beta initialised 1e-3 * N(0, 1), Adam lr 3e-3, weight decay
1e-3, stepped from epoch 20 (half the epochs) on, first order: each step moves alpha and beta
on a trainB batch with the current weights, then the weights on a trainA batch. F = 8, L = 12.
Not in REFERENCES and so ours: gradient clipping at 5 (DARTS'), Adam's betas (torch's default),
the cosine stepped per epoch. Reports carry the supernet's validation loss and mean IoU on
trainB, the decoded cell and path, the entropy of beta and of alpha, every epoch; the search
checkpoints after every epoch and resumes exactly (workers/oneshot/search.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raynas.common import ConfigError, check_int, check_number
from raynas.common.options import option
from raynas.search_spaces.autodeeplab import ADL_OPS, BLOCKS, LEVELS, MOVES, reachable, transition_mask, viterbi
from raynas.search_spaces.types import AutoDeepLabArch
from raynas.workers.datasets import SEGMENTATION
from raynas.workers.datasets.images import ImageData
from raynas.workers.nets.autodeeplab import ASPP, STEM_WIDTHS, Resample, Resize, Stem, width
from raynas.workers.oneshot.darts import Bilevel
from raynas.workers.oneshot.derive import derive_cell, mean_entropy_fraction
from raynas.workers.oneshot.feeds import ImageFeed
from raynas.workers.oneshot.registry import OneShotSpace, register_supernet
from raynas.workers.oneshot.search import SupernetConfig
from raynas.workers.oneshot.supernet import ALPHA_INIT_SCALE, SKIP, MixedOp, Supernet, search_op
from raynas.workers.ops import AUTODEEPLAB_OPS

#: Auto-DeepLab's search (paper sec. 5.1): what SupernetConfig's None fields become.
ADL_DEFAULTS = {"epochs": 40, "batch_size": 2, "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4, "nesterov": False,
                "lr_schedule": "epoch", "grad_clip": 5.0, "channels": 8}
EDGES = sum(2 + b for b in range(BLOCKS))


@dataclass(frozen=True)
class AutoDeepLabConfig(SupernetConfig):
    """One Auto-DeepLab search. `channels` is the filter multiplier F, `layers` the trellis's
    depth L (None: the space's layers)."""

    arch_lr: float = option(3e-3, "alpha's and beta's Adam learning rate")
    arch_weight_decay: float = option(1e-3, "alpha's and beta's weight decay")
    warmup_epochs: int | None = option(None, "epochs that train the weights alone before alpha and beta move "
                                             "(default: half the epochs, the paper's 20 of 40)", most=1000)

    algorithm: ClassVar[str] = "autodeeplab"
    recipe: ClassVar[str] = "autodeeplab"

    def __post_init__(self):
        super().__post_init__()
        check_number("arch_lr", self.arch_lr, 0, low_open=True)
        check_number("arch_weight_decay", self.arch_weight_decay, 0)
        check_int("warmup_epochs", self.warmup_epochs, 0, optional=True)
        if None not in (self.epochs, self.warmup_epochs) and self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", f"{self.warmup_epochs} weight-only epochs leave alpha and beta none "
                              f"of the {self.epochs}", f"fewer than epochs ({self.epochs})")

    def search_class(self) -> type[AutoDeepLabSearch]:
        return AutoDeepLabSearch

    def resolved(self, space: str) -> AutoDeepLabConfig:
        config = super().resolved(space)
        if config.warmup_epochs is None:
            config = dataclasses.replace(config, warmup_epochs=config.epochs // 2)
        return config


class SearchCell(nn.Module):
    """The mixed cell on one transition of the trellis: from level `source` of layer l-1 to
    level `target` of layer l."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, source: int, target: int):
        super().__init__()
        self.preprocess0 = Resize(C_prev_prev, C, affine=False)
        self.preprocess1 = Resample(C_prev, C, source, target, affine=False)
        self.edges = nn.ModuleList(MixedOp(ADL_OPS, [search_op(op, C, 1, AUTODEEPLAB_OPS) for op in ADL_OPS])
                                   for _ in range(EDGES))

    def forward(self, h_prev_prev: torch.Tensor, h_prev: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        s1 = self.preprocess1(h_prev)
        states = [self.preprocess0(h_prev_prev, s1.shape[-2:]), s1]
        e = 0
        for _ in range(BLOCKS):
            block = None
            for h in list(states):
                block = self.edges[e](h, weights[e], block)
                e += 1
            states.append(block)
        return torch.cat(states[2:], dim=1)


class AutoDeepLabSupernet(Supernet):
    primitives = ADL_OPS

    def __init__(self, filters: int = 8, layers: int = 12, in_channels: int = 3, num_classes: int = 19):
        super().__init__()
        self.layers = layers
        self.stem = Stem(in_channels)
        self.alphas = nn.ParameterList([
            nn.Parameter(ALPHA_INIT_SCALE * torch.randn(EDGES, len(ADL_OPS))),
            nn.Parameter(ALPHA_INIT_SCALE * torch.randn(layers, LEVELS, len(MOVES))),
        ])
        self.register_buffer("mask", torch.from_numpy(transition_mask(layers)), persistent=False)
        self.cells = nn.ModuleDict()
        #: Widths of the nodes of layers l-2 and l-1 by level ("layer -2" is the stem's second conv).
        before = {0: STEM_WIDTHS[1]}
        previous = {0: STEM_WIDTHS[2]}
        for layer in range(layers):
            current = {}
            for source, move in self.transitions(layer):
                target = source + move
                C = width(filters, target)
                C_prev_prev = before[min(target, max(before))]
                self.cells[self._key(layer, source, target)] = SearchCell(C_prev_prev, previous[source], C, source,
                                                                          target)
                current[target] = BLOCKS * C
            before, previous = previous, current
        self.heads = nn.ModuleDict({str(level): ASPP(C, BLOCKS * filters, level, num_classes)
                                    for level, C in previous.items()})

    @staticmethod
    def _key(layer: int, source: int, target: int) -> str:
        return f"{layer}_{source}_{target}"

    def transitions(self, layer: int) -> list[tuple[int, int]]:
        """(source level, move) of every transition into `layer`."""
        sources = range(1) if layer == 0 else reachable(layer - 1)
        return [(s, m) for s in sources for m in MOVES if 0 <= s + m < LEVELS]

    def transition_weights(self) -> torch.Tensor:
        """beta as probabilities [layers, levels, moves]: a softmax over each node's moves that stay
        on the trellis, zero elsewhere (and for levels a layer does not reach)."""
        logits = self.alphas[1].masked_fill(~self.mask, float("-inf"))
        return torch.nan_to_num(F.softmax(logits, dim=-1), nan=0.0)

    def arch_weights(self) -> list[torch.Tensor]:
        """[softmax of alpha per edge, beta's transition probabilities]."""
        return [F.softmax(self.alphas[0], dim=-1), self.transition_weights()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.arch_weights()
        half, stem = self.stem(x)
        before, previous = {0: half}, {0: stem}
        for layer in range(self.layers):
            current: dict[int, torch.Tensor] = {}
            for source, move in self.transitions(layer):
                target = source + move
                h_prev_prev = before[min(target, max(before))]
                out = self.cells[self._key(layer, source, target)](h_prev_prev, previous[source], alpha)
                weighted = beta[layer, source, MOVES.index(move)] * out
                current[target] = weighted if target not in current else current[target] + weighted
            before, previous = previous, current
        size = x.shape[-2:]
        return sum(F.interpolate(self.heads[str(level)](h), size=size, mode="bilinear", align_corners=False)
                   for level, h in previous.items())


def decode(model: AutoDeepLabSupernet) -> AutoDeepLabArch:
    """The cell by DARTS' rule over alpha, the path by Viterbi over beta."""
    alpha, beta = model.arch_weights()
    with np.errstate(divide="ignore"):
        log_beta = np.log(beta.detach().cpu().double().numpy())
    return AutoDeepLabArch(derive_cell(alpha, ADL_OPS, BLOCKS), viterbi(log_beta))


def beta_entropy(model: AutoDeepLabSupernet) -> float:
    """Mean entropy of the nodes' move distributions as a fraction of its maximum (log of the
    node's number of moves): 1 while beta is uniform, 0 once every node has picked one move."""
    beta = model.transition_weights().detach().cpu()
    fractions = []
    for layer, source in {(layer, source) for layer, source, _ in np.argwhere(model.mask.cpu().numpy())}:
        p = beta[layer, source][model.mask[layer, source].cpu()]
        if len(p) > 1:
            fractions.append(float(-(p * p.clamp_min(1e-12).log()).sum()) / math.log(len(p)))
    return sum(fractions) / len(fractions)


def arch_step(model: AutoDeepLabSupernet, optimizer: torch.optim.Optimizer, data: ImageData | ImageFeed,
              x: torch.Tensor, y: torch.Tensor) -> float:
    """The first-order step of alpha and beta on a batch of trainB; returns the batch's loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = data.loss(model(x), y)
    loss.backward(inputs=model.arch_parameters())
    optimizer.step()
    return loss.item()


class AutoDeepLabSearch(Bilevel):
    """The bilevel epoch (darts.py) with Auto-DeepLab's architecture step: alpha and beta by
    Adam, first order, on the dataset's per-pixel loss."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.a_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=self.cfg.arch_lr,
                                            weight_decay=self.cfg.arch_weight_decay)

    def step_architecture(self, x: Any, y: torch.Tensor, x_arch: Any, y_arch: torch.Tensor, lr: float) -> None:
        arch_step(self.model, self.a_optimizer, self.feed, x_arch, y_arch)


def _monitors(model: AutoDeepLabSupernet, arch: AutoDeepLabArch) -> dict[str, Any]:
    return {"path": list(arch.path), "cell": [list(p) for p in arch.cell], "skip_count": _skips(arch),
            "beta_entropy_fraction": beta_entropy(model),
            "alpha_entropy_fraction": mean_entropy_fraction(model.arch_weights()[:1]),
            "beta": model.transition_weights().detach().cpu().tolist()}


def _skips(arch: AutoDeepLabArch) -> int:
    return sum(op == SKIP for op, _ in arch.cell)


register_supernet(OneShotSpace(
    name="autodeeplab", task=SEGMENTATION,
    build=lambda space, cfg, data: AutoDeepLabSupernet(cfg.channels, cfg.layers or space.layers, data.in_channels,
                                                       data.num_classes),
    feed=ImageFeed, defaults={"autodeeplab": ADL_DEFAULTS}, derive=decode, monitors=_monitors, skips=_skips))


__all__ = ["ADL_DEFAULTS", "AutoDeepLabConfig", "AutoDeepLabSearch", "AutoDeepLabSupernet", "arch_step",
           "beta_entropy", "decode"]
