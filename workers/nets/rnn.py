"""DARTS' recurrent-cell language model (quark0/darts rnn/model.py) for an RNNGenotype.

embedding -> the cell unrolled over time -> linear decoder sharing the
embedding's weights. Every node of the cell is a highway step: from its input
state s it projects a gate c and a candidate, and moves s towards the
candidate by c: s + sigmoid(c) * (f(candidate) - s). Node 0 reads
[x_t, h_{t-1}] with f = tanh; node i reads its genotype predecessor with its
genotype activation; h_t is the mean of the `concat` nodes.

`model(tokens [T, B], hidden [B, H]) -> (logits [T, B, vocab], hidden [B, H])`;
the logits are unnormalised. `RNNLanguageModel` and `language_model` serve every recurrent
cell (nasrnn.py builds Zoph & Le's tree cell into the same model), in one layer (DARTS) or a
stack of them (`layers`: Zoph & Le's PTB children had two). With embed = hidden = 850 and a 10k
vocabulary DARTS_V2 has 22.96M parameters, the paper's 23M PTB model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raynas.common import ConfigError
from raynas.search_spaces.types import RNNGenotype
from raynas.workers.nets.base import NetConfig, register
from raynas.workers.ops import RNN_ACTIVATIONS

#: DARTS initialises every weight uniformly in +-0.04 (rnn/model.py INITRANGE).
INIT_RANGE = 0.04


def dropout_mask(x: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A 0 / (1/(1-p)) mask of `shape`, broadcast by the caller so that one draw
    covers a whole sequence: dropping the same units at every step is what lets
    dropout regularise a recurrence without drowning its memory in noise."""
    return x.new_empty(shape).bernoulli_(1 - p) / (1 - p)


def _highway(state: torch.Tensor, projected: torch.Tensor,
             activation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    gate, candidate = projected.chunk(2, dim=-1)
    return state + gate.sigmoid() * (activation(candidate) - state)


class RecurrentCell(nn.Module):
    def __init__(self, genotype: RNNGenotype, input_size: int, hidden_size: int,
                 dropout_x: float, dropout_h: float):
        super().__init__()
        self.recurrent = genotype.recurrent
        self.concat = genotype.concat
        self.dropout_x = dropout_x
        self.dropout_h = dropout_h
        # Linear modules rather than raw matrices so that FLOP hooks see the cell's work.
        self.init_proj = nn.Linear(input_size + hidden_size, 2 * hidden_size, bias=False)
        self.step_projs = nn.ModuleList(
            nn.Linear(hidden_size, 2 * hidden_size, bias=False) for _ in genotype.recurrent
        )

    def init_hidden(self, zeros: torch.Tensor) -> torch.Tensor:
        return zeros

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [T, B, input_size], hidden [B, H] -> (h_t for every t [T, B, H], h_T [B, H])."""
        x_mask = h_mask = None
        if self.training and self.dropout_x:
            x_mask = dropout_mask(inputs, inputs.shape[1:], self.dropout_x)
        if self.training and self.dropout_h:
            h_mask = dropout_mask(hidden, hidden.shape, self.dropout_h)
        outputs = []
        # unbind, not indexing: its backward stacks the steps' gradients, where each index's
        # would write into a zero tensor as large as the whole window.
        for x in inputs.unbind(0):
            hidden = self._step(x, hidden, x_mask, h_mask)
            outputs.append(hidden)
        return torch.stack(outputs), hidden

    def _step(self, x: torch.Tensor, h: torch.Tensor,
              x_mask: torch.Tensor | None, h_mask: torch.Tensor | None) -> torch.Tensor:
        def drop(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            return t if mask is None else t * mask

        # Dropout only on what the projections read; the highway carries the state itself intact.
        states = [_highway(h, self.init_proj(torch.cat([drop(x, x_mask), drop(h, h_mask)], dim=-1)), torch.tanh)]
        for (activation, source), proj in zip(self.recurrent, self.step_projs):
            s = states[source]
            states.append(_highway(s, proj(drop(s, h_mask)), RNN_ACTIVATIONS[activation]))
        return torch.stack([states[i] for i in self.concat]).mean(dim=0)


class RNNLanguageModel(nn.Module):
    """The language model around a stack of recurrent cells (one in DARTS): each `cell(inputs
    [T, B, size], hidden) -> (outputs [T, B, size], hidden)` with `cell.init_hidden(like [B,
    size])`, its zero state (a tensor, or a tuple of them for cells with a memory). The model's
    hidden state is the first cell's state alone, or with several layers the tuple of every
    layer's tensors in order, flat (so that an exported model takes plain tensors). Between
    layers the outputs get the same locked dropout as the last layer's (Zaremba et al.'s dropout
    on every non-recurrent connection). A training forward leaves the last layer's outputs before
    that dropout in `raw_output`, for the temporal activation penalty (AWD-LSTM's TAR)."""

    def __init__(self, cells: list[nn.Module], vocab_size: int, size: int, dropout: float, dropout_i: float,
                 dropout_e: float):
        super().__init__()
        self.hidden_size = size
        self.dropout, self.dropout_i, self.dropout_e = dropout, dropout_i, dropout_e
        self.embedding = nn.Embedding(vocab_size, size)
        self.cells = nn.ModuleList(cells)
        self.decoder = nn.Linear(size, vocab_size)
        self.decoder.weight = self.embedding.weight
        for p in self.parameters():
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)
        self.raw_output: torch.Tensor | None = None
        #: How many tensors each layer's state is made of (1, or 2 for a cell with a memory).
        self._widths = [len(_tensors(cell.init_hidden(torch.zeros(1, size)))) for cell in self.cells]

    def init_hidden(self, batch_size: int):
        zeros = self.embedding.weight.new_zeros(batch_size, self.hidden_size)
        return self._join([cell.init_hidden(zeros) for cell in self.cells])

    def _join(self, states: list):
        """Per-layer states as the model's hidden state."""
        return states[0] if len(states) == 1 else tuple(t for state in states for t in _tensors(state))

    def _split(self, hidden) -> list:
        """The model's hidden state as one state per layer."""
        if len(self.cells) == 1:
            return [hidden]
        states, at = [], 0
        for width in self._widths:
            states.append(hidden[at] if width == 1 else tuple(hidden[at:at + width]))
            at += width
        return states

    def forward(self, tokens: torch.Tensor, hidden):
        weight = self.embedding.weight
        if self.training and self.dropout_e:
            # Drop whole words: a dropped word's embedding is zero wherever it occurs.
            weight = weight * dropout_mask(weight, (weight.shape[0], 1), self.dropout_e)
        x = nn.functional.embedding(tokens, weight)
        if self.training and self.dropout_i:
            x = x * dropout_mask(x, (1, *x.shape[1:]), self.dropout_i)
        states = []
        for layer, (cell, state) in enumerate(zip(self.cells, self._split(hidden))):
            if layer and self.training and self.dropout:
                x = x * dropout_mask(x, (1, *x.shape[1:]), self.dropout)
            x, state = cell(x, state)
            states.append(state)
        if self.training:
            self.raw_output = x
        if self.training and self.dropout:
            x = x * dropout_mask(x, (1, *x.shape[1:]), self.dropout)
        return self.decoder(x), self._join(states)


def _tensors(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def language_model(space: str, config: NetConfig, make_cell: Callable[[int], nn.Module]) -> RNNLanguageModel:
    """The language model of `config` around `config.layers` (default 1) cells `make_cell(size)`,
    for the builder of `space`."""
    config.refuse(space, "auxiliary", "drop_path")
    if config.embed_size != config.hidden_size:
        raise ConfigError("embed_size", f"must equal hidden_size ({config.hidden_size}): "
                          "the decoder shares the embedding's weights")
    # `channels`, the trainer's width override, sets both sizes at once.
    size = config.channels or config.hidden_size
    return RNNLanguageModel([make_cell(size) for _ in range(config.layers or 1)], vocab_size=config.vocab_size,
                            size=size, dropout=config.dropout, dropout_i=config.dropout_i, dropout_e=config.dropout_e)


@register("rnn", RNNGenotype)
def build(arch: RNNGenotype, config: NetConfig) -> nn.Module:
    return language_model("rnn", config,
                          lambda size: RecurrentCell(arch, size, size, config.dropout_x, config.dropout_h))
