"""Zoph & Le's tree cell (search_spaces/nasrnn.py) as a module, in the shared language model
(embedding, tied decoder, the same dropouts as the DARTS cell: variational masks on x_t and
h_{t-1}, one per sequence).

The leaves' projections are two matrices, as in TensorFlow's NASCell: W [input, base*H] for
x_t and U [H, base*H] for h_{t-1}, no biases; the published cell at hidden size H therefore has
8 H (input + H) weights. For speed on CPU the cell does as little per time step as it can:
W x_t for the whole window is one matrix product before the loop, and the leaves are stored
grouped by their (combination, activation), so each group is one combination and one
activation over a contiguous slice instead of one pair per leaf.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.search_spaces.nasrnn import children
from raynas.search_spaces.types import TreeCell
from raynas.workers.nets.base import NetConfig, register
from raynas.workers.nets.rnn import dropout_mask, language_model
from raynas.workers.ops import RNN_ACTIVATIONS


def _combine(how: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b if how == "add" else a * b


class TreeCellModule(nn.Module):
    def __init__(self, arch: TreeCell, input_size: int, hidden_size: int, dropout_x: float, dropout_h: float):
        super().__init__()
        self.arch, self.hidden_size = arch, hidden_size
        self.dropout_x, self.dropout_h = dropout_x, dropout_h
        base = arch.base
        self.x_proj = nn.Linear(input_size, base * hidden_size, bias=False)
        self.h_proj = nn.Linear(hidden_size, base * hidden_size, bias=False)
        # The projections' outputs hold the leaves in `order`, so that leaves with equal
        # (combination, activation) are adjacent: one run each.
        order = sorted(range(base), key=lambda i: arch.nodes[i])
        self._slot = {leaf: s for s, leaf in enumerate(order)}
        self._runs: list[tuple[str, str, int]] = []  # (combination, activation, leaves)
        for leaf in order:
            if self._runs and self._runs[-1][:2] == arch.nodes[leaf]:
                self._runs[-1] = (*arch.nodes[leaf], self._runs[-1][2] + 1)
            else:
                self._runs.append((*arch.nodes[leaf], 1))

    def leaf_columns(self, leaf: int) -> slice:
        """Where leaf `leaf`'s H outputs sit in the projections' base*H outputs."""
        s = self._slot[leaf]
        return slice(s * self.hidden_size, (s + 1) * self.hidden_size)

    def init_hidden(self, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, c): the output state and the memory."""
        return zeros, zeros.clone()

    def forward(self, inputs: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """inputs [T, B, input_size], (h, c) [B, H] each -> (h_t for every t [T, B, H], (h_T, c_T))."""
        h, c = hidden
        if self.training and self.dropout_x:
            inputs = inputs * dropout_mask(inputs, inputs.shape[1:], self.dropout_x)
        h_mask = dropout_mask(h, h.shape, self.dropout_h) if self.training and self.dropout_h else None
        outputs = []
        # unbind and split, not indexing: their backward passes concatenate the gradients,
        # where each index's would write into a zero tensor as large as the whole input.
        for x in self.x_proj(inputs).unbind(0):
            h, c = self._step(x, self.h_proj(h if h_mask is None else h * h_mask), c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)

    def _step(self, x: torch.Tensor, u: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arch, H = self.arch, self.hidden_size
        sizes = [n * H for _, _, n in self._runs]
        pres, outs = [], []
        for (comb, act, _), xr, ur in zip(self._runs, x.split(sizes, dim=-1), u.split(sizes, dim=-1)):
            pre = _combine(comb, xr, ur)
            pres += pre.split(H, dim=-1)
            outs += RNN_ACTIVATIONS[act](pre).split(H, dim=-1)
        values = [outs[self._slot[i]] for i in range(arch.base)]
        memory = pres[self._slot[arch.memory_from]] if arch.memory_from < arch.base else None
        for node in range(len(arch.nodes)):
            if node >= arch.base:
                comb, act = arch.nodes[node]
                left, right = children(node, arch.base)
                pre = _combine(comb, values[left], values[right])
                if node == arch.memory_from:
                    memory = pre
                values.append(RNN_ACTIVATIONS[act](pre))
            if node == arch.inject_at:
                comb, act = arch.inject
                values[node] = RNN_ACTIVATIONS[act](_combine(comb, values[node], c_prev))
        return values[-1], memory


@register("nasrnn", TreeCell)
def build(arch: TreeCell, config: NetConfig) -> nn.Module:
    return language_model("nasrnn", config,
                          lambda size: TreeCellModule(arch, size, size, config.dropout_x, config.dropout_h))
