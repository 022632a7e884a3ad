"""Neural Architecture Optimization (Luo et al., NeurIPS 2018) in plain PyTorch: the
encoder, performance predictor and decoder, their joint training, and the gradient steps in
the continuous embedding that turn good architectures into new ones.

Both the `nao` strategy (controller/strategies/nao.py) and the NAO-WS search on a worker
(workers/oneshot/nao_ws.py) drive one `NAOController`; it lives here because workers may
not import the controller.

The model follows renqianluo/NAO_pytorch@418ff71 (NAO_V1, NAO_V2):
- tokens: the space's own token sequence (`SearchSpace.encode`), shifted by one so that 0 is
  the decoder's start symbol. Cell spaces give (input, op) per choice, normal cell first,
  as NAO's sequences do; the encoder reads one (input, op) pair per step there (NAO's
  `source_length` = 2 x `encoder_length`), one token per step elsewhere;
- encoder: embedding, LSTM, each output L2-normalised; the architecture's embedding is the
  normalised mean of the outputs;
- predictor: an MLP (none in V2: one linear layer) on the embedding, then a sigmoid; it is
  trained on rewards min-max scaled to [0, 1] over the pool;
- decoder: an LSTM started from (embedding, embedding), attention over the encoder's
  outputs, trained with teacher forcing; loss = lambda x MSE + (1 - lambda) x NLL, lambda 0.8;
- new architectures: the predictor's gradient with respect to the encoder's outputs, a step
  of size s along it (normalised again, the embedding taken as their mean), decoded
  greedily; s = 1, 2, ... until enough new architectures came out (NAO_pytorch: up to 50;
  `step_increment` makes the steps finer).

Where we differ, and why:
- the decoder picks each token among those the space allows at that position
  (`SearchSpace.token_choices`) in training as well as decoding, so every decoded sequence
  is an architecture of the space; NAO_pytorch constrains only while decoding;
- one Adam serves every retraining (NAO_pytorch builds a new one each iteration), so that
  the optimizer is part of the checkpointed state like the weights it moves;
- the whole pool is trained on: NAO_pytorch holds 10 % out to print the pairwise accuracy,
  which the strategy measures instead on each round's new results before training on them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raynas.common import ConfigError, check_choice, check_int, check_number
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.cell import CellSpace

#: The decoder's start symbol; the space's tokens are shifted up by one.
START = 0

#: NAO_pytorch's settings (../shared/REFERENCES.md, NAO rows): V1, V2 and TF NAO-WS. The Adam weight
#: decay is NAO_V1/train_search.py's `controller_l2_reg` and TF NAO-WS's `controller_weight_decay`
#: (1e-4), NAO_V2's 0.
PRESETS: dict[str, dict[str, Any]] = {
    "v1": {"seed_archs": 600, "new_archs": 300, "hidden_size": 96, "embedding_size": 48, "mlp_layers": 3,
           "mlp_hidden_size": 200, "weight_decay": 1e-4},
    "v2": {"seed_archs": 1000, "new_archs": 300, "hidden_size": 64, "embedding_size": 32, "mlp_layers": 0,
           "mlp_hidden_size": 200, "weight_decay": 0.0},
    "ws": {"seed_archs": 1000, "new_archs": 500, "hidden_size": 96, "embedding_size": 48, "mlp_layers": 3,
           "mlp_hidden_size": 100, "weight_decay": 1e-4},
}
#: NAO_pytorch follows its seed architectures with 2-3 iterations of `new_archs` each; a budget
#: smaller than the seeds and this many rounds gets the preset's phases scaled down to fit it.
PLANNED_ROUNDS = 2


@dataclass(frozen=True)
class NAOConfig:
    """NAO's settings. Fields left None take the preset's value (`resolved`): NAO_pytorch's
    V1 (the paper's predictor, an MLP), V2 (no MLP) or the TF NAO-WS search."""

    preset: str = option("v1", "NAO_pytorch's settings: v1 (the paper's MLP predictor), v2 (no MLP) or ws (the "
                               "NAO-WS search); the fields below override it", choices=tuple(PRESETS))
    seed_archs: int | None = option(None, "random architectures evaluated before the first training (default: the "
                                          "preset's)", most=100_000)
    new_archs: int | None = option(None, "architectures each round of embedding steps proposes (default: the "
                                         "preset's)", most=100_000)
    top_k: int = option(100, "the best architectures of the pool that the steps start from", most=100_000)
    max_step_size: int = option(50, "step sizes step_increment x (1, 2, ... max_step_size) are tried in turn until "
                                    "new_archs new architectures are found (NAO_pytorch: up to 50)", most=100_000)
    step_increment: float = option(1.0, "the step size's increment (smaller visits more points between a parent "
                                        "and where the gradient leads)")
    hidden_size: int | None = option(None, "encoder and decoder LSTM width (default: the preset's)", most=4096)
    embedding_size: int | None = option(None, "token embedding width (default: the preset's)", most=4096)
    encoder_layers: int = option(1, "layers of the encoder LSTM", most=16)
    decoder_layers: int = option(1, "layers of the decoder LSTM", most=16)
    mlp_layers: int | None = option(None, "the predictor's hidden layers, 0 for one linear layer on the embedding "
                                          "(default: the preset's)", most=64)
    mlp_hidden_size: int | None = option(None, "width of the predictor's hidden layers (default: the preset's)",
                                         most=4096)
    mlp_dropout: float = option(0.1, "dropout of the predictor's hidden layers")
    trade_off: float = option(0.8, "lambda: weight of the prediction loss; 1 - lambda weighs the reconstruction")
    epochs: int = option(1000, "epochs over the pool that train the three networks at every iteration", most=1000)
    batch_size: int = option(100, "their batch size", most=4096)
    lr: float = option(1e-3, "their Adam learning rate")
    weight_decay: float | None = option(None, "their Adam weight decay (default: the preset's: 1e-4 v1 and ws, 0 "
                                              "v2)")
    grad_bound: float = option(5.0, "their largest gradient norm")
    expand: int = option(10, "copies of each architecture in the training data, all but one with a node's two inputs "
                             "swapped in each cell (the paper's augmentation; cell spaces only; 1 turns it off)",
                         most=1000)
    num_threads: int | None = option(1, "torch intra-op threads for NAO's own work (its tiny tensors gain nothing "
                                        "from more)", most=256)

    def __post_init__(self):
        check_choice("preset", self.preset, PRESETS)
        for name in ("seed_archs", "new_archs", "hidden_size", "embedding_size", "mlp_hidden_size",
                     "num_threads"):
            check_int(name, getattr(self, name), optional=True)
        check_int("mlp_layers", self.mlp_layers, 0, optional=True)
        for name in ("top_k", "max_step_size", "encoder_layers", "decoder_layers", "epochs", "batch_size",
                     "expand"):
            check_int(name, getattr(self, name))
        check_number("mlp_dropout", self.mlp_dropout, 0, 1, high_open=True)
        check_number("trade_off", self.trade_off, 0, 1)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0, optional=True)
        check_number("grad_bound", self.grad_bound, 0)
        check_number("step_increment", self.step_increment, 0, low_open=True)

    def resolved(self, budget: int | None = None) -> NAOConfig:
        """The preset's values for the fields left None; with the search's `budget` of evaluations,
        the preset's seed phase and round size scaled down (in proportion) where the budget cannot
        hold the seeds and PLANNED_ROUNDS rounds: NAO_pytorch's 600 seeds would leave a budget of
        600 or less a random search. Seeds that leave no evaluation to NAO are a ConfigError."""
        config = dataclasses.replace(self, **{k: v for k, v in PRESETS[self.preset].items()
                                              if getattr(self, k) is None})
        if budget is None:
            return config
        planned = config.seed_archs + PLANNED_ROUNDS * config.new_archs
        if budget < planned:
            scaled = {k: max(1, getattr(config, k) * budget // planned) for k in ("seed_archs", "new_archs")
                      if getattr(self, k) is None}
            config = dataclasses.replace(config, **scaled)
        if config.seed_archs >= budget:
            raise ConfigError("strategy_options.seed_archs", f"{config.seed_archs} random architectures take the "
                              f"whole budget of {budget} evaluations: NAO would never propose one",
                              f"fewer than {budget}")
        return config


# -- architectures as NAO's sequences ------------------------------------------------------------

class Codec:
    """A space's architectures as NAO token sequences, the tokens allowed at each position,
    and the symmetry of cell spaces (a node sums its two inputs, so swapping them changes
    nothing)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        choices = space.token_choices()
        self.length = len(choices)
        self.vocab_size = space.vocab_size() + 1
        allowed = torch.zeros(self.length, self.vocab_size, dtype=torch.bool)
        for position, tokens in enumerate(choices):
            allowed[position, [t + 1 for t in tokens]] = True
        self.allowed = allowed
        # Cell spaces: per node (input, op, input, op), normal cell then reduction cell.
        self.cell_nodes = 2 * space.steps if isinstance(space, CellSpace) else 0
        self.group = 2 if self.cell_nodes else 1

    def encode(self, arch: Hashable) -> tuple[int, ...]:
        return tuple(t + 1 for t in self.space.encode(arch))

    def decode(self, tokens: Sequence[int]) -> Hashable:
        return self.space.decode([int(t) - 1 for t in tokens])

    @property
    def symmetric(self) -> bool:
        return self.cell_nodes > 0

    def swap_inputs(self, tokens: Sequence[int], nodes: Sequence[int]) -> tuple[int, ...]:
        """`tokens` with the two (input, op) pairs of each node in `nodes` (0 .. cell_nodes - 1,
        counted over both cells) exchanged."""
        out = list(tokens)
        for node in nodes:
            at = 4 * node
            out[at:at + 4] = out[at + 2:at + 4] + out[at:at + 2]
        return tuple(out)

    def augment(self, tokens: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
        """NAO's augmentation: one random node of each cell with its inputs swapped."""
        per_cell = self.cell_nodes // 2
        return self.swap_inputs(tokens, [cell * per_cell + int(rng.integers(per_cell)) for cell in (0, 1)])


# -- the networks ----------------------------------------------------------------------------------

class NAOModel(nn.Module):
    """Encoder, predictor and decoder. The decoder's hidden state starts from the
    architecture's embedding, so both LSTMs share `hidden_size`."""

    def __init__(self, codec: Codec, config: NAOConfig):
        super().__init__()
        cfg = config.resolved()
        hidden = cfg.hidden_size
        self.group = codec.group
        self.length = codec.length
        self.decoder_layers = cfg.decoder_layers
        self.embedding = nn.Embedding(codec.vocab_size, cfg.embedding_size)
        self.encoder = nn.LSTM(codec.group * cfg.embedding_size, hidden, cfg.encoder_layers, batch_first=True)
        layers: list[nn.Module] = []
        width = hidden
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(width, cfg.mlp_hidden_size), nn.ReLU(), nn.Dropout(cfg.mlp_dropout)]
            width = cfg.mlp_hidden_size
        self.predictor = nn.Sequential(*layers, nn.Linear(width, 1))
        self.decoder_embedding = nn.Embedding(codec.vocab_size, hidden)
        self.decoder = nn.LSTM(hidden, hidden, cfg.decoder_layers, batch_first=True)
        # Luong's "general" attention as NAO_pytorch's decoder has it: score = (W_in h) . o, then
        # tanh(W_out [context; h]); neither projection has a bias.
        self.attention_in = nn.Linear(hidden, hidden, bias=False)
        self.attention = nn.Linear(2 * hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, codec.vocab_size)
        # Not a buffer: it follows from the space, not from training, so it stays out of the state.
        self.mask = torch.where(codec.allowed, 0.0, -math.inf)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step outputs [B, L / group, H] and the embedding [B, H], each unit length."""
        x = self.embedding(tokens).reshape(tokens.shape[0], self.length // self.group, -1)
        outputs = F.normalize(self.encoder(x)[0], dim=-1)
        return outputs, F.normalize(outputs.mean(1), dim=-1)

    def predict(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.predictor(embedding)).squeeze(-1)

    def attend(self, h: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """The decoder's states [B, T, H] after attending to the encoder's outputs [B, L, H]."""
        weights = torch.bmm(self.attention_in(h), outputs.transpose(1, 2)).softmax(-1)
        return torch.tanh(self.attention(torch.cat([torch.bmm(weights, outputs), h], -1)))

    def _decode(self, inputs: torch.Tensor, state, outputs: torch.Tensor):
        h, state = self.decoder(self.decoder_embedding(inputs), state)
        return self.out(self.attend(h, outputs)), state

    def _start(self, embedding: torch.Tensor):
        h = embedding.unsqueeze(0).repeat(self.decoder_layers, 1, 1).contiguous()
        return h, h

    def reconstruction_log_probs(self, outputs: torch.Tensor, embedding: torch.Tensor,
                                 tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: log p(token t | tokens < t) over the allowed tokens, [B, L, V]. The
        attention reads only the current step's state, so all steps run in one LSTM call."""
        inputs = torch.cat([torch.full_like(tokens[:, :1], START), tokens[:, :-1]], 1)
        logits, _ = self._decode(inputs, self._start(embedding), outputs)
        return F.log_softmax(logits + self.mask, -1)

    def greedy(self, outputs: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The most likely allowed token at each step, fed back in: [B, L]."""
        token = torch.full((outputs.shape[0], 1), START, dtype=torch.long)
        state, tokens = self._start(embedding), []
        for position in range(self.length):
            logits, state = self._decode(token, state, outputs)
            token = (logits[:, -1] + self.mask[position]).argmax(-1, keepdim=True)
            tokens.append(token)
        return torch.cat(tokens, 1)


# -- the controller ---------------------------------------------------------------------------

def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's rank correlation over the pairs ordered in both (ties left out); None below two such pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), 1)
    sign = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    sign = sign[sign != 0]
    return float(sign.mean()) if len(sign) >= 2 else None


class NAOController:
    """The model, its Adam and its own RNGs. `fit` trains on (architecture, reward) pairs,
    `predict` scores architectures in reward units, `propose` steps from good ones.

    Everything random (initialisation, dropout, shuffles, augmentation) draws from the
    controller's own generators, swapped in and out around each call, so the caller's global
    torch RNG never moves and the controller resumes exactly from `state_dict`.
    """

    def __init__(self, space: SearchSpace, config: NAOConfig, seed: int, budget: int | None = None):
        self.config = cfg = config.resolved(budget)
        self.codec = Codec(space)
        self.rng = np.random.default_rng(seed)
        self._torch_state = None
        with self._own_rng(seed):
            self.model = NAOModel(self.codec, cfg)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        #: Rewards map to [0, 1] by the last fit's (min, max); None before any fit.
        self.scale: tuple[float, float] | None = None

    @contextlib.contextmanager
    def _own_rng(self, seed: int | None = None) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]), torch_threads(self.config.num_threads):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self._torch_state)
            yield
            self._torch_state = torch.get_rng_state()

    @property
    def fitted(self) -> bool:
        return self.scale is not None

    def _tokens(self, archs: Sequence[Hashable]) -> torch.Tensor:
        return torch.tensor([self.codec.encode(a) for a in archs], dtype=torch.long).reshape(len(archs), -1)

    def fit(self, archs: Sequence[Hashable], rewards: Sequence[float]) -> dict[str, float]:
        """Train the three networks jointly on the pool for `epochs`; returns the last epoch's losses."""
        cfg = self.config
        lo, hi = float(min(rewards)), float(max(rewards))
        self.scale = (lo, hi)
        targets = [(r - lo) / (hi - lo) if hi > lo else 0.5 for r in rewards]
        sequences = [self.codec.encode(a) for a in archs]
        data = list(zip(sequences, targets))
        if self.codec.symmetric:
            data += [(self.codec.augment(s, self.rng), t)
                     for _ in range(cfg.expand - 1) for s, t in zip(sequences, targets)]
        tokens = torch.tensor([s for s, _ in data], dtype=torch.long)
        values = torch.tensor([t for _, t in data], dtype=torch.float32)
        self.model.train()
        mse = nll = torch.zeros(())
        with self._own_rng(), torch.enable_grad():
            for _ in range(cfg.epochs):
                for batch in torch.randperm(len(data)).split(cfg.batch_size):
                    x, y = tokens[batch], values[batch]
                    outputs, embedding = self.model.encode(x)
                    mse = F.mse_loss(self.model.predict(embedding), y)
                    log_probs = self.model.reconstruction_log_probs(outputs, embedding, x)
                    nll = F.nll_loss(log_probs.flatten(0, 1), x.flatten())
                    loss = cfg.trade_off * mse + (1 - cfg.trade_off) * nll
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_bound:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_bound)
                    self.optimizer.step()
        self.model.eval()
        return {"mse": float(mse.detach()), "nll": float(nll.detach())}

    def predict(self, archs: Sequence[Hashable]) -> list[float]:
        """Predicted rewards, in the units of the pool the model was last fitted on."""
        if not self.fitted:
            raise ConfigError("nao", "the predictor has not been trained yet")
        lo, hi = self.scale
        self.model.eval()
        with self._own_rng(), torch.no_grad():
            scores = self.model.predict(self.model.encode(self._tokens(archs))[1])
        return [lo + float(s) * (hi - lo) for s in scores]

    def reconstruct(self, archs: Sequence[Hashable]) -> list[Hashable]:
        """Each architecture encoded, then decoded greedily from its own embedding."""
        self.model.eval()
        with self._own_rng(), torch.no_grad():
            tokens = self.model.greedy(*self.model.encode(self._tokens(archs)))
        return [self.codec.decode(t.tolist()) for t in tokens]

    def step(self, archs: Sequence[Hashable], step_size: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted score (in [0, 1]) of each architecture's embedding, and of that embedding
        moved by `step_size` along the predictor's gradient."""
        self.model.eval()
        with self._own_rng(), torch.enable_grad():
            outputs, embedding = self.model.encode(self._tokens(archs))
            grad = self._gradient(outputs)
            with torch.no_grad():
                return self.model.predict(embedding), self.model.predict(_moved(outputs, grad, step_size)[1])

    def _gradient(self, outputs: torch.Tensor) -> torch.Tensor:
        """d predicted score / d encoder outputs (through their normalised mean)."""
        with torch.enable_grad():
            embedding = F.normalize(outputs.mean(1), dim=-1)
            return torch.autograd.grad(self.model.predict(embedding).sum(), outputs)[0].detach()

    def propose(self, parents: Sequence[Hashable], count: int, known: set[tuple[int, ...]]
                ) -> tuple[list[Hashable], float]:
        """Up to `count` architectures, none of whose sequences is in `known`, decoded from the
        parents' embeddings moved by step sizes `step_increment` x (1, 2, ... `max_step_size`); and
        the last step size used. Parents first, in their order, at each step size."""
        if not parents or count <= 0:
            return [], 0.0
        self.model.eval()
        found: dict[tuple[int, ...], None] = {}
        size = 0.0
        sizes = [k * self.config.step_increment for k in range(1, self.config.max_step_size + 1)]
        with self._own_rng(), torch.enable_grad():
            outputs, _ = self.model.encode(self._tokens(parents))
            grad = self._gradient(outputs)
            outputs = outputs.detach()
            with torch.no_grad():
                # Step sizes are decoded in batches of 1, 2, 4, ... of them: the decoder's per-step
                # overhead dominates at these sizes, and a search that finds its count at the first
                # step sizes decodes little more than it reads.
                start, width = 0, 1
                while start < len(sizes) and len(found) < count:
                    chunk = sizes[start:start + width]
                    moved = [_moved(outputs, grad, s) for s in chunk]
                    decoded = self.model.greedy(torch.cat([m[0] for m in moved]),
                                                torch.cat([m[1] for m in moved])).tolist()
                    for at in range(len(chunk)):
                        size = chunk[at]
                        for seq in decoded[at * len(parents):(at + 1) * len(parents)]:
                            key = tuple(seq)
                            if key not in known and key not in found:
                                found[key] = None
                        if len(found) >= count:
                            break
                    start, width = start + width, 2 * width
        return [self.codec.decode(seq) for seq in list(found)[:count]], size

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "torch_rng": self._torch_state.clone(),
                "rng": self.rng.bit_generator.state, "scale": None if self.scale is None else list(self.scale)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._torch_state = state["torch_rng"].clone()
        self.rng.bit_generator.state = state["rng"]
        self.scale = None if state["scale"] is None else (float(state["scale"][0]), float(state["scale"][1]))


def _moved(outputs: torch.Tensor, grad: torch.Tensor, step_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder outputs moved along `grad` and normalised again, and their embedding (NAO's `infer`)."""
    moved = F.normalize(outputs + step_size * grad, dim=-1)
    return moved, F.normalize(moved.mean(1), dim=-1)
