"""One-shot search on the recurrent `rnn` space (DARTS' PTB search, Liu et al., ICLR 2019; Li &
Talwalkar's random search with weight sharing on the same supernet).

The supernet is DARTS' recurrent search cell in the language model every rnn child trains in
(workers/nets/rnn.py): node 0 is the highway step over [x_t, h_{t-1}]; node i (1..steps) sums,
over every earlier node j and every activation, w_{ij,op} * highway(s_j, W_i s_j, op), with w
the softmax of node i's alphas over (none, tanh, relu, sigmoid, identity): the mixed activation
per node. As in the DARTS code, W_i is shared by all of node i's predecessors and each node's
state goes through an affine-free batch norm (their search cell has one; the child has none),
and h_t is the mean of nodes 1..steps. Derivation keeps, per node, the one predecessor whose
strongest non-`none` activation weighs most, with that activation (the paper's k = 1).

Data as DARTS' recurrent search uses it: the PTB training stream trains the weights and the
validation stream the alphas, each in parallel columns read window after window with its own
hidden state carried across windows (truncated BPTT; the DARTS code also jitters the window
length, we keep it at `bptt`). The dropouts are the DARTS search code's (0.75 on outputs and
x_t, 0.25 on h_{t-1}, 0.2 on embeddings) [U: not in the paper's text].

Batches reach the supernet as one `Window` (tokens, hidden state, stream name) so that the
one-shot machinery (the Architect, its unrolled step and finite differences, `weight_step`)
runs unchanged: `model(window)` returns the logits flattened to [T*B, vocab], and the state it
ends in is kept per stream in `model.last_hidden`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from raynas.common import ConfigError
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.rnn import ACTIVATIONS
from raynas.search_spaces.types import RNNGenotype
from raynas.workers.datasets.text import TextData
from raynas.workers.nets.rnn import INIT_RANGE, dropout_mask
from raynas.workers.oneshot.derive import edge_entropy, mean_entropy_fraction
from raynas.workers.oneshot.search import (
    Architect,
    OneShotConfig,
    check_search,
    cosine_lr,
    load_checkpoint,
    own_rng,
    save_checkpoint,
    weight_optimizer,
    weight_step,
)
from raynas.workers.oneshot.supernet import ALPHA_INIT_SCALE, Supernet
from raynas.workers.ops import RNN_ACTIVATIONS
from raynas.workers.training import pick_device

#: DARTS' rnn PRIMITIVES: the alphas' columns.
PRIMITIVES = ("none", *ACTIVATIONS)
#: The DARTS search code's dropouts: outputs, h_{t-1}, x_t, embeddings.
SEARCH_DROPOUTS = {"dropout": 0.75, "dropout_h": 0.25, "dropout_x": 0.75, "dropout_i": 0.2}
#: Validation windows' batch size (DARTS evaluates with 10 columns).
EVAL_BATCH_SIZE = 10


class Window(NamedTuple):
    tokens: torch.Tensor
    hidden: torch.Tensor
    stream: str


#: One discrete rnn cell as the supernet runs it: per node, (predecessor, activation column).
RNNPath = list[tuple[int, int]]


def _gate(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A highway step's sigmoid gate and its candidate, from the node's projection."""
    gate, candidate = projected.chunk(2, dim=-1)
    return gate.sigmoid(), candidate


class RNNSupernet(Supernet):
    def __init__(self, vocab_size: int, size: int, steps: int = 8, dropouts: dict[str, float] | None = None):
        super().__init__()
        self.primitives = PRIMITIVES
        self.steps, self.size = steps, size
        self.dropouts = dict(SEARCH_DROPOUTS if dropouts is None else dropouts)
        self.embedding = nn.Embedding(vocab_size, size)
        self.init_proj = nn.Linear(2 * size, 2 * size, bias=False)
        self.step_projs = nn.ModuleList(nn.Linear(size, 2 * size, bias=False) for _ in range(steps))
        self.decoder = nn.Linear(size, vocab_size)
        self.decoder.weight = self.embedding.weight
        self.norm = nn.BatchNorm1d(size, affine=False)
        for p in self.parameters():
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)
        # Node i (1-based) reads nodes 0..i-1: rows offset(i) .. offset(i) + i - 1.
        self.alphas = nn.ParameterList([nn.Parameter(ALPHA_INIT_SCALE * torch.randn(steps * (steps + 1) // 2,
                                                                                     len(PRIMITIVES)))])
        self.last_hidden: dict[str, torch.Tensor] = {}

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.embedding.weight.new_zeros(batch_size, self.size)

    def forward(self, window: Window, path: RNNPath | None = None) -> torch.Tensor:
        tokens, hidden, stream = window
        d = self.dropouts if self.training else dict.fromkeys(self.dropouts, 0.0)
        x = F.embedding(tokens, self.embedding.weight)
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


def rnn_path(arch: RNNGenotype) -> RNNPath:
    return [(source, PRIMITIVES.index(act)) for act, source in arch.recurrent]


def sample_cell(steps: int, generator: torch.Generator) -> RNNGenotype:
    """Uniform over the rnn space: each node a predecessor and one of the four activations."""
    recurrent = tuple((ACTIVATIONS[int(torch.randint(len(ACTIVATIONS), (1,), generator=generator))],
                       int(torch.randint(i, (1,), generator=generator))) for i in range(1, steps + 1))
    return RNNGenotype(recurrent, tuple(range(1, steps + 1)))


class Stream:
    """A batchified stream read window after window, its hidden state carried across windows and
    reset when the stream wraps around (a new pass starts from a zero state)."""

    def __init__(self, model: RNNSupernet, stream: torch.Tensor, name: str, bptt: int):
        self.model, self.data, self.name, self.bptt = model, stream, name, bptt
        self.at = 0
        self.hidden = model.init_hidden(stream.shape[1])

    def next(self) -> tuple[Window, torch.Tensor]:
        if self.at >= len(self.data) - 1:
            self.at, self.hidden = 0, self.model.init_hidden(self.data.shape[1])
        n = min(self.bptt, len(self.data) - 1 - self.at)
        window = Window(self.data[self.at:self.at + n], self.hidden, self.name)
        targets = self.data[self.at + 1:self.at + 1 + n].reshape(-1)
        self.at += n
        return window, targets

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


def rnn_search_epochs(space: SearchSpace, dataset: TextData, config: OneShotConfig, seed: int,
                      checkpoint: str | None = None, bptt: int = 35) -> Iterator[dict]:
    """DARTS on the rnn space: like `search_epochs` (one report per epoch, the last naming the
    `candidates`; checkpoint after every epoch and exact resume), with `val_ppl` for `val_acc`."""
    check_search(space, dataset)
    cfg = config.resolved(space.name)
    check_rnn_options(cfg)
    device = pick_device(cfg.device)
    return own_rng(lambda: _darts_rnn(space, dataset, cfg, seed, device, checkpoint, bptt), device)


def _darts_rnn(space: SearchSpace, dataset: TextData, cfg: OneShotConfig, seed: int, device: torch.device,
               checkpoint: str | None, bptt: int) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        model = RNNSupernet(dataset.vocab_size, cfg.channels, space.steps).to(device)
        w_optimizer = weight_optimizer(model, cfg)
        architect = Architect(model, cfg)
        train = Stream(model, dataset.batchify("train", cfg.batch_size, device), "train", bptt)
        search = Stream(model, dataset.batchify("val", cfg.batch_size, device), "val", bptt)
        valid = dataset.batchify("val", EVAL_BATCH_SIZE, device)
        parts = {"model": model, "w_optimizer": w_optimizer, "a_optimizer": architect.optimizer, "train": train,
                 "search": search}
        history: list[dict] = load_checkpoint(checkpoint, cfg, seed, device, parts).get("history", [])
        yield from history
        if history and "candidates" in history[-1]:
            return
        model.train()
        steps = steps_per_epoch(train.data, bptt, cfg.max_batches_per_epoch)
        for epoch in range(len(history), cfg.epochs):
            start, losses, tokens = time.perf_counter(), [], 0
            for step in range(steps):
                lr = cosine_lr(cfg, epoch, step, steps)
                window, targets = train.next()
                if epoch >= cfg.warmup_epochs:
                    val_window, val_targets = search.next()
                    architect.step(window, targets, val_window, val_targets, lr, w_optimizer)
                    search.carry()
                loss, _ = weight_step(model, w_optimizer, cfg, lr, window, targets)
                train.carry()
                losses.append(loss)
                tokens += targets.numel()
            wall = time.perf_counter() - start
            weights = model.arch_weights()
            arch = derive_rnn(weights, space.steps)
            val_ppl = perplexity(model, valid, bptt, windows=cfg.max_batches_per_epoch)
            report = {
                "epoch": epoch + 1, "algorithm": cfg.algorithm, "lr": cosine_lr(cfg, epoch, 0, steps),
                "alphas_frozen": epoch < cfg.warmup_epochs,
                "train_loss": float(torch.stack(losses).mean()), "val_ppl": val_ppl,
                "val_loss": math.log(val_ppl) if math.isfinite(val_ppl) else math.inf,
                "genotype": str(arch), "alpha_entropy": edge_entropy(weights),
                "alpha_entropy_fraction": mean_entropy_fraction(weights),
                "alphas": [w.detach().cpu().tolist() for w in weights],
                "wall_time_s": wall, "tokens_per_s": tokens / wall if wall else 0.0,
            }
            history.append(report)
            if epoch + 1 == cfg.epochs:
                best = min(history, key=lambda r: r["val_ppl"]) if cfg.keep_best else history[-1]
                report["candidates"] = [best["genotype"]]
            save_checkpoint(checkpoint, cfg, seed, device, parts, history=history)
            yield report


def steps_per_epoch(stream: torch.Tensor, bptt: int, cap: int | None) -> int:
    windows = -(-(len(stream) - 1) // bptt)
    return min(windows, cap) if cap else windows


def rnn_rsws_epochs(space: SearchSpace, dataset: TextData, config, seed: int,
                    checkpoint: str | None = None, bptt: int = 35) -> Iterator[dict]:
    """Random search with weight sharing on the rnn supernet (Li & Talwalkar's PTB search), in
    rsws.py's stages and reports, architectures ranked by validation perplexity."""
    check_search(space, dataset)
    cfg = config.resolved(space.name)
    check_rnn_options(cfg)
    device = pick_device(cfg.device)
    return own_rng(lambda: _rsws_rnn(space, dataset, cfg, seed, device, checkpoint, bptt), device)


def _rsws_rnn(space: SearchSpace, dataset: TextData, cfg, seed: int, device: torch.device,
              checkpoint: str | None, bptt: int) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = RNNSupernet(dataset.vocab_size, cfg.channels, space.steps).to(device)
        optimizer = weight_optimizer(model, cfg)
        train = Stream(model, dataset.batchify("train", cfg.batch_size, device), "train", bptt)
        valid = dataset.batchify("val", EVAL_BATCH_SIZE, device)
        parts = {"model": model, "optimizer": optimizer, "generator": generator, "train": train}
        state = load_checkpoint(checkpoint, cfg, seed, device, parts)
        history: list[dict] = state.get("history", [])
        winners: list[dict] = state.get("winners", [])
        yield from history
        if history and "candidates" in history[-1]:
            return

        def save() -> None:
            save_checkpoint(checkpoint, cfg, seed, device, parts, history=history, winners=winners)

        model.train()
        steps = steps_per_epoch(train.data, bptt, cfg.max_batches_per_epoch)
        for epoch in range(sum(r["stage"] == "train" for r in history), cfg.epochs):
            start, losses, tokens = time.perf_counter(), [], 0
            for step in range(steps):
                window, targets = train.next()
                path = rnn_path(sample_cell(space.steps, generator))
                loss, _ = weight_step(model, optimizer, cfg, cosine_lr(cfg, epoch, step, steps), window, targets, path)
                train.carry()
                losses.append(loss)
                tokens += targets.numel()
            wall = time.perf_counter() - start
            history.append({"stage": "train", "epoch": epoch + 1, "algorithm": cfg.algorithm,
                            "lr": cosine_lr(cfg, epoch, 0, steps), "train_loss": float(torch.stack(losses).mean()),
                            "wall_time_s": wall, "tokens_per_s": tokens / wall if wall else 0.0})
            save()
            yield history[-1]

        blocks = -(-cfg.archs // cfg.block)
        for b in range(len(winners), blocks):
            start = time.perf_counter()
            size = min(cfg.block, cfg.archs - b * cfg.block)
            archs = [sample_cell(space.steps, generator) for _ in range(size)]
            scored = sorted(((perplexity(model, valid, bptt, rnn_path(a), cfg.score_batches), i, a)
                             for i, a in enumerate(archs)), key=lambda t: (t[0], t[1]))[:cfg.rescore_top]
            rescored = [(perplexity(model, valid, bptt, rnn_path(a)), i, a, score) for score, i, a in scored]
            ppl, _, arch, score = min(rescored, key=lambda t: (t[0], t[1]))
            winners.append({"genotype": str(arch), "val_ppl": ppl, "minibatch_ppl": score})
            best = min(winners, key=lambda w: w["val_ppl"])
            report = {"stage": "rank", "epoch": b + 1, "algorithm": cfg.algorithm, "scored": b * cfg.block + size,
                      "genotype": best["genotype"], "val_ppl": best["val_ppl"], "block_genotype": str(arch),
                      "block_val_ppl": ppl, "block_minibatch_ppl": score, "wall_time_s": time.perf_counter() - start}
            if b + 1 == blocks:
                ranked = sorted(enumerate(winners), key=lambda t: (t[1]["val_ppl"], t[0]))
                report["candidates"] = list(dict.fromkeys(w["genotype"] for _, w in ranked))[:cfg.candidates]
            history.append(report)
            save()
            yield report


def check_rnn_options(cfg) -> None:
    """What the image searches offer but the rnn search has no use for."""
    if cfg.train_portion != 0.5:
        raise ConfigError("train_portion", "the rnn search trains on PTB's training stream and its alphas (or "
                          "ranking) read the validation stream; there is no split to set", (0.5,))
