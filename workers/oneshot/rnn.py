"""One-shot search on the recurrent `rnn` space (DARTS' PTB search, Liu et al., ICLR 2019; Li &
Talwalkar's random search with weight sharing).

DARTS' supernet is its recurrent search cell in the language model every rnn child trains in
(workers/nets/rnn.py): node 0 is the highway step over [x_t, h_{t-1}]; node i (1..steps) sums,
over every earlier node j and every activation, w_{ij,op} * highway(s_j, W_i s_j, op), with w
the softmax of node i's alphas over (none, tanh, relu, sigmoid, identity): the mixed activation
per node. As in the DARTS code, W_i is shared by all of node i's predecessors and each node's
state goes through an affine-free batch norm (their search cell has one; the child has none),
and h_t is the mean of nodes 1..steps. Derivation keeps, per node, the one predecessor whose
strongest non-`none` activation weighs most, with that activation (the paper's k = 1).

Li & Talwalkar share the weights of DARTS' evaluation cell instead (their wrapper builds
`RNNModel` and sets each batch's genotype): the same supernet without the batch norms, run one
sampled path at a time, at the evaluation's size (proxyless: 850 wide, wd 8e-7, word dropout
0.1); every sampled cell is scored on the whole validation stream (in 256 x 4 columns).

Data as both searches' code reads it: the PTB training stream trains the weights, one pass per
epoch from a zero state (truncated BPTT, the state carried across windows), in windows of 35
tokens, or of 17 one time in 20, each weight step (and DARTS' architect step) at the learning
rate scaled by the window's length / 35; the weights' loss adds AWD-LSTM's temporal activation
penalty (beta 1e-3). DARTS' alphas read the validation stream at the training window's position
(modulo its length), 35 tokens, their own hidden state carried across steps and reset with each
pass. The dropouts are the search code's (0.75 on outputs and x_t, 0.25 on h_{t-1}, 0.2 on
embeddings; word dropout 0.1 in Li & Talwalkar's proxyless setting) [U: not in the papers' text].

Batches reach the supernet as one `Window` (tokens, hidden state, stream name) so that the
one-shot machinery (the searches' epochs, the Architect, its unrolled step and finite
differences, `weight_step`) runs unchanged: `model(window)` returns the logits flattened to
[T*B, vocab], and the state it ends in is kept per stream in `model.last_hidden`.

Registered here as the `rnn` space's supernet (registry.py), with the settings of DARTS' and of
Li & Talwalkar's PTB searches; `TextFeed` serves the streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from raynas.common import ConfigError
from raynas.search_spaces.rnn import ACTIVATIONS
from raynas.search_spaces.types import RNNGenotype
from raynas.workers.datasets import LANGUAGE_MODEL
from raynas.workers.datasets.text import TextData
from raynas.workers.nets.rnn import INIT_RANGE, dropout_mask
from raynas.workers.oneshot.derive import alpha_monitors
from raynas.workers.oneshot.registry import OneShotSpace, register_supernet
from raynas.workers.oneshot.supernet import ALPHA_INIT_SCALE, Supernet
from raynas.workers.ops import RNN_ACTIVATIONS
from raynas.workers.training import BPTT_HALF_EVERY, temporal_activation_penalty

#: DARTS' rnn PRIMITIVES: the alphas' columns.
PRIMITIVES = ("none", *ACTIVATIONS)
#: The DARTS search code's dropouts: outputs, h_{t-1}, x_t, embeddings, words.
SEARCH_DROPOUTS = {"dropout": 0.75, "dropout_h": 0.25, "dropout_x": 0.75, "dropout_i": 0.2, "dropout_e": 0.0}
#: Li & Talwalkar's proxyless setting shares the evaluation network's: the same, with word dropout 0.1.
PROXYLESS_DROPOUTS = {**SEARCH_DROPOUTS, "dropout_e": 0.1}
#: Validation windows' batch size (DARTS evaluates with 10 columns).
EVAL_BATCH_SIZE = 10
#: Li & Talwalkar's wrapper scores sampled cells on the validation stream in 256 x 4 columns.
SCORE_COLUMNS = 1024
#: Both searches' windows: BPTT tokens, or int(BPTT / 2) one time in BPTT_HALF_EVERY.
BPTT = 35
#: AWD-LSTM's temporal activation penalty in both searches' weight steps (their `--beta`).
TAR = 1e-3


class Window(NamedTuple):
    tokens: torch.Tensor
    hidden: torch.Tensor
    stream: str
    #: The length drawn for the window, which sets its learning rate (the last one of a pass may be cut shorter).
    drawn: int = BPTT


#: One discrete rnn cell as the supernet runs it: per node, (predecessor, activation column).
RNNPath = list[tuple[int, int]]


def _gate(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A highway step's sigmoid gate and its candidate, from the node's projection."""
    gate, candidate = projected.chunk(2, dim=-1)
    return gate.sigmoid(), candidate


class RNNSupernet(Supernet):
    """DARTS' recurrent search cell in its language model; without `batch_norm`, run one path at
    a time, DARTS' evaluation cell (Li & Talwalkar's shared weights). A training forward leaves
    its outputs before the output dropout in `raw_output` (for TAR)."""

    def __init__(self, vocab_size: int, size: int, steps: int = 8, dropouts: dict[str, float] | None = None,
                 batch_norm: bool = True):
        super().__init__()
        self.primitives = PRIMITIVES
        self.steps, self.size = steps, size
        self.dropouts = dict(SEARCH_DROPOUTS if dropouts is None else dropouts)
        self.embedding = nn.Embedding(vocab_size, size)
        self.init_proj = nn.Linear(2 * size, 2 * size, bias=False)
        self.step_projs = nn.ModuleList(nn.Linear(size, 2 * size, bias=False) for _ in range(steps))
        self.decoder = nn.Linear(size, vocab_size)
        self.decoder.weight = self.embedding.weight
        self.norm = nn.BatchNorm1d(size, affine=False) if batch_norm else nn.Identity()
        for p in self.parameters():
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)
        # Node i (1-based) reads nodes 0..i-1: rows offset(i) .. offset(i) + i - 1.
        self.alphas = nn.ParameterList([nn.Parameter(ALPHA_INIT_SCALE * torch.randn(steps * (steps + 1) // 2,
                                                                                     len(PRIMITIVES)))])
        self.last_hidden: dict[str, torch.Tensor] = {}
        self.raw_output: torch.Tensor | None = None

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.embedding.weight.new_zeros(batch_size, self.size)

    def forward(self, window: Window, path: RNNPath | None = None) -> torch.Tensor:
        tokens, hidden, stream = window.tokens, window.hidden, window.stream
        d = self.dropouts if self.training else dict.fromkeys(self.dropouts, 0.0)
        weight = self.embedding.weight
        if d["dropout_e"]:
            weight = weight * dropout_mask(weight, (weight.shape[0], 1), d["dropout_e"])
        x = F.embedding(tokens, weight)
        if d["dropout_i"]:
            x = x * dropout_mask(x, (1, *x.shape[1:]), d["dropout_i"])
        x_mask = dropout_mask(x, x.shape[1:], d["dropout_x"]) if d["dropout_x"] else None
        h_mask = dropout_mask(hidden, hidden.shape, d["dropout_h"]) if d["dropout_h"] else None
        weights = None if path is not None else F.softmax(self.alphas[0], dim=-1)
        outputs = []
        for x_t in x.unbind(0):
            hidden = self._step(x_t if x_mask is None else x_t * x_mask, hidden, h_mask, weights, path)
            outputs.append(hidden)
        self.last_hidden[stream] = hidden.detach()
        out = torch.stack(outputs)
        if self.training:
            self.raw_output = out
        if d["dropout"]:
            out = out * dropout_mask(out, (1, *out.shape[1:]), d["dropout"])
        return self.decoder(out).reshape(-1, self.decoder.out_features)

    def _step(self, x: torch.Tensor, h: torch.Tensor, h_mask: torch.Tensor | None, weights: torch.Tensor | None,
              path: RNNPath | None) -> torch.Tensor:
        gate, candidate = _gate(self.init_proj(torch.cat([x, h if h_mask is None else h * h_mask], -1)))
        states = [self.norm(h + gate * (candidate.tanh() - h))]
        offset = 0
        for i, proj in enumerate(self.step_projs, start=1):
            if path is not None:
                source, column = path[i - 1]
                s = states[source]
                gate, candidate = _gate(proj(s if h_mask is None else s * h_mask))
                node = s + gate * (RNN_ACTIVATIONS[PRIMITIVES[column]](candidate) - s)
            else:
                s = torch.stack(states)  # [i, B, H]: every predecessor at once
                gate, candidate = _gate(proj(s if h_mask is None else s * h_mask[None]))
                w = weights[offset:offset + i, 1:, None, None]  # [i, ops without none, 1, 1]
                # sum_op w_op * (s + g * (act_op(c) - s)) = W s + g * (sum_op w_op act_op(c) - W s), W = sum_op w_op
                mixed = sum(w[:, k] * RNN_ACTIVATIONS[name](candidate) for k, name in enumerate(ACTIVATIONS))
                total = w.sum(dim=1) * s
                node = (total + gate * (mixed - total)).sum(dim=0)
            states.append(self.norm(node))
            offset += i
        return torch.stack(states[1:]).mean(dim=0)


def derive_rnn(weights: list[torch.Tensor], steps: int) -> RNNGenotype:
    """Per node, the predecessor whose strongest non-`none` activation weighs most, with it."""
    (w,) = weights
    w = w.detach().cpu()
    recurrent, offset = [], 0
    for i in range(1, steps + 1):
        rows = w[offset:offset + i, 1:]
        best = max((rows[j].max().item(), -j) for j in range(i))
        j = -best[1]
        recurrent.append((ACTIVATIONS[int(rows[j].argmax())], j))
        offset += i
    return RNNGenotype(tuple(recurrent), tuple(range(1, steps + 1)))


def rnn_path(arch: RNNGenotype, primitives: Sequence[str] = PRIMITIVES) -> RNNPath:
    return [(source, primitives.index(act)) for act, source in arch.recurrent]


def sample_cell(steps: int, generator: torch.Generator) -> RNNGenotype:
    """Uniform over the rnn space: each node a predecessor and one of the four activations."""
    recurrent = tuple((ACTIVATIONS[int(torch.randint(len(ACTIVATIONS), (1,), generator=generator))],
                       int(torch.randint(i, (1,), generator=generator))) for i in range(1, steps + 1))
    return RNNGenotype(recurrent, tuple(range(1, steps + 1)))


class Stream:
    """A batchified stream read window by window, its hidden state carried from one window to
    the next (`carry`) and reset with each pass (`restart`)."""

    def __init__(self, model: RNNSupernet, stream: torch.Tensor, name: str):
        self.model, self.data, self.name = model, stream, name
        self.at = 0
        self.hidden = model.init_hidden(stream.shape[1])

    @property
    def ended(self) -> bool:
        """Whether the pass is over (the references' `while i < len - 1 - 1`)."""
        return self.at >= len(self.data) - 2

    def restart(self) -> None:
        self.at, self.hidden = 0, self.model.init_hidden(self.data.shape[1])

    def window(self, at: int, drawn: int) -> tuple[Window, torch.Tensor]:
        """The `drawn`-token window at `at` (cut at the stream's end) with the carried state, and its targets."""
        n = min(drawn, len(self.data) - 1 - at)
        return Window(self.data[at:at + n], self.hidden, self.name, drawn), self.data[at + 1:at + 1 + n].reshape(-1)

    def carry(self) -> None:
        """Take the state the supernet ended this stream's last window in."""
        self.hidden = self.model.last_hidden[self.name]

    def state_dict(self) -> dict:
        return {"at": self.at, "hidden": self.hidden}

    def load_state_dict(self, state: dict) -> None:
        self.at, self.hidden = state["at"], state["hidden"].to(self.hidden.device)


@torch.no_grad()
def perplexity(model: RNNSupernet, stream: torch.Tensor, bptt: int, path: RNNPath | None = None,
               windows: int | None = None) -> float:
    """The supernet's (or one path's) perplexity in eval mode over `stream` (its first `windows`)."""
    model.eval()
    hidden, total, count = model.init_hidden(stream.shape[1]), 0.0, 0
    for k, at in enumerate(range(0, len(stream) - 1, bptt)):
        if windows is not None and k == windows:
            break
        n = min(bptt, len(stream) - 1 - at)
        logits = model(Window(stream[at:at + n], hidden, "eval"), path)
        hidden = model.last_hidden["eval"]
        total += F.cross_entropy(logits, stream[at + 1:at + 1 + n].reshape(-1), reduction="sum").item()
        count += n * stream.shape[1]
    model.train()
    loss = total / count
    return math.exp(loss) if loss < 700 else math.inf


class TextFeed:
    """PTB as DARTS' and Li & Talwalkar's searches read it (the module's docstring): one pass over
    the training stream per epoch in jittered windows (capped by `max_batches_per_epoch`, then the
    pass goes on in the next epoch), the alphas' windows of the validation stream at the training
    position, the supernet's validation figures in 10 columns, sampled cells' scores in
    SCORE_COLUMNS. Both streams' positions and states are the search's state."""

    unit = "tokens"
    metric = "ppl"
    sign = 1

    def __init__(self, data: TextData, cfg: Any, model: RNNSupernet, generator: torch.Generator,
                 device: torch.device):
        self.model, self.generator = model, generator
        self.train = Stream(model, data.batchify("train", cfg.batch_size, device), "train")
        self.search = Stream(model, data.batchify("val", cfg.batch_size, device), "val")
        self.valid = data.batchify("val", EVAL_BATCH_SIZE, device)
        # A corpus too small for 1024 columns of two steps is scored in as many as it holds.
        self.scoring = data.batchify("val", min(SCORE_COLUMNS, len(data.val) // 2), device)
        windows = -(-(len(self.train.data) - 1) // BPTT)
        self.steps = min(windows, cfg.max_batches_per_epoch) if cfg.max_batches_per_epoch else windows
        self.cap = cfg.max_batches_per_epoch
        self.parts = {"train": self.train, "search": self.search}
        self._position = 0

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The weights' loss: cross-entropy and TAR on the outputs of the forward that made `logits`."""
        return F.cross_entropy(logits, y) + temporal_activation_penalty(self.model.raw_output, TAR)

    def count(self, y: torch.Tensor) -> int:
        return y.numel()

    def lr_scale(self, x: Window) -> float:
        return x.drawn / BPTT

    def batches(self) -> Iterator[tuple[Window, torch.Tensor]]:
        train, served = self.train, 0
        while self.cap is None or served < self.cap:
            if train.ended:
                if self.cap is None and served:
                    return
                train.restart()
                self.search.restart()
            half = float(torch.rand((), generator=self.generator)) * BPTT_HALF_EVERY < 1
            drawn = int(BPTT / 2) if half else BPTT
            self._position = train.at
            window = train.window(train.at, drawn)
            train.at += drawn
            yield window
            train.carry()
            served += 1

    def arch_batch(self, step: Callable[[Window, torch.Tensor], None]) -> None:
        step(*self.search.window(self._position % (len(self.search.data) - 1), BPTT))
        self.search.carry()

    def training(self, correct: torch.Tensor | int, seen: int) -> dict[str, float]:
        return {}

    def assess(self, model: RNNSupernet) -> dict[str, float]:
        ppl = perplexity(model, self.valid, BPTT, windows=self.cap)
        return {"val_ppl": ppl, "val_loss": math.log(ppl) if math.isfinite(ppl) else math.inf}

    def rescore(self, model: RNNSupernet, path: RNNPath) -> float:
        return perplexity(model, self.scoring, BPTT, path)

    def scorer(self, batches: int) -> Callable[[RNNSupernet, RNNPath], float]:
        return lambda model, path: perplexity(model, self.scoring, BPTT, path, batches)


def _check(config: Any) -> None:
    """What the image searches offer but the recurrent cell has no use for."""
    if config.train_portion != 0.5:
        raise ConfigError("train_portion", "the rnn search trains on PTB's training stream and its alphas (or "
                          "ranking) read the validation stream; there is no split to set", (0.5,))
    if config.drop_none:
        raise ConfigError("drop_none", "the rnn supernet's alphas weigh `none` against its activations", (False,))


def _build(space: Any, cfg: Any, data: TextData) -> RNNSupernet:
    """DARTS' search cell for DARTS; for random search with weight sharing the evaluation cell,
    with the word dropout of the proxyless setting its shared weights train in."""
    if cfg.recipe == "rsws":
        return RNNSupernet(data.vocab_size, cfg.channels, space.steps, PROXYLESS_DROPOUTS, batch_norm=False)
    return RNNSupernet(data.vocab_size, cfg.channels, space.steps)


register_supernet(OneShotSpace(
    name="rnn", task=LANGUAGE_MODEL,
    build=_build,
    feed=TextFeed,
    defaults={
        # DARTS' PTB search (Liu et al., ICLR 2019): embedding and hidden 300, plain SGD at a constant lr 20,
        # batch 256, BPTT 35, wd 5e-7, alphas Adam 3e-3 with betas (0.9, 0.999); clip 0.25 and 50 epochs are
        # the DARTS code's (rnn/train_search.py) [U: not in the paper's text], as is its recurrent
        # architect, which clips its virtual step (`unrolled_clip`).
        "darts": {"epochs": 50, "channels": 300, "batch_size": 256, "lr": 20.0, "weight_decay": 5e-7,
                  "momentum": 0.0, "nesterov": False, "lr_schedule": "constant", "grad_clip": 0.25, "arch_lr": 3e-3,
                  "arch_betas": (0.9, 0.999), "unrolled_clip": True},
        # Li & Talwalkar's PTB search, proxyless (randomNAS_release's DartsWrapper, config "eval": the
        # evaluation network, 850 wide, wd 8e-7, word dropout 0.1), 50 epochs, batch 64, clip 0.1, SGD 20
        # constant; 2000 architectures (two blocks of 1000) each scored on the whole validation stream,
        # each block's best a winner, none re-scored.
        "rsws": {"epochs": 50, "channels": 850, "batch_size": 64, "lr": 20.0, "weight_decay": 8e-7,
                 "momentum": 0.0, "nesterov": False, "lr_schedule": "constant", "grad_clip": 0.1, "archs": 2000,
                 "score_batches": 0, "rescore_top": 0},
    },
    derive=lambda model: derive_rnn(model.arch_weights(), model.steps),
    monitors=lambda model, arch: alpha_monitors(model.arch_weights()),
    sample=lambda space, generator: sample_cell(space.steps, generator), path=rnn_path, check=_check))
