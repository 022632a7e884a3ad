"""The bilevel search: network weights on one half of the training data, alphas on the
other (DARTS), first order or with the unrolled second-order step, and NoisyDARTS.

Settings follow the papers (Liu et al., DARTS, ICLR 2019, sec. A.1; Chu et al., NoisyDARTS):
DARTS' CIFAR search (50 epochs, batch 64, SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4,
clip 5; alphas Adam 3e-4, betas (0.5, 0.999), wd 1e-3; xi = the weights' learning rate; eps = 0.01 / ||grad||), and
NoisyDARTS' own search settings (batch 128, lr 0.05, `none` removed, lambda 0.2).
On nb201 the weights follow AutoDL-Projects' DARTS-on-NB201 recipe instead (wd 5e-4,
Nesterov momentum). NoisyDARTS' NB201 settings are not known to us, so noisy-darts
uses its DARTS-space batch and learning rate there too, on top of the NB201 recipe.

Where the papers' code and text differ we follow the code: the weights' cosine ends at
lr_min = 0.001 (DARTS' text: 0) and alphas start at 1e-3 * N(0, 1) (text: zeros). Batches
of both halves get the dataset's augmentation (random crop and flip on cifar10), as the
DARTS code applies its training transform to both.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from raynas.common import ConfigError, check_int, check_number
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.cell import PRIMITIVES
from raynas.workers.data import ImageDataset
from raynas.workers.oneshot.derive import derive, edge_entropy, mean_entropy_fraction, skip_count
from raynas.workers.oneshot.supernet import Supernet, build_supernet
from raynas.workers.training import pick_device

ALGORITHMS = ("darts", "darts2", "noisy-darts")
SPACES = ("darts", "nb201")
DEVICES = ("auto", "cpu", "cuda")

#: Where NoisyDARTS' published search settings differ from DARTS'.
NOISY_DEFAULTS = {"batch_size": 128, "lr": 0.05, "noise_lambda": 0.2}
DARTS_DEFAULTS = {"batch_size": 64, "lr": 0.025, "noise_lambda": 0.0}
#: How each space's supernet weights are trained: DARTS' CIFAR search, AutoDL-Projects' NB201 config.
SPACE_DEFAULTS = {"darts": {"layers": 8, "weight_decay": 3e-4, "nesterov": False},
                  "nb201": {"layers": 5, "weight_decay": 5e-4, "nesterov": True}}


@dataclass(frozen=True)
class OneShotConfig:
    """One one-shot search. Fields left None take the published default of the algorithm
    and space (`resolved`)."""

    algorithm: str = "darts"
    epochs: int = 50
    batch_size: int | None = None
    lr: float | None = None
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float | None = None
    #: Nesterov momentum for the weights. The second-order virtual step is DARTS' heavy-ball
    #: formula either way, as in AutoDL-Projects' DARTS-V2 on NB201.
    nesterov: bool | None = None
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    #: Share of the training split that trains the weights; the rest trains the alphas.
    train_portion: float = 0.5
    #: Supernet width and depth (cells for darts, cells per stage for nb201).
    channels: int = 16
    layers: int | None = None
    #: NoisyDARTS' lambda: noise std = lambda * std(skip output). None: 0.2 for noisy-darts, else 0.
    noise_lambda: float | None = None
    max_batches_per_epoch: int | None = None
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("algorithm", f"unknown one-shot algorithm {self.algorithm!r}", ALGORITHMS)
        for name in ("epochs", "channels"):
            check_int(name, getattr(self, name))
        for name in ("batch_size", "layers", "max_batches_per_epoch", "num_threads"):
            check_int(name, getattr(self, name), optional=True)
        check_number("lr", self.lr, 0, low_open=True, optional=True)
        check_number("lr_min", self.lr_min, 0)
        check_number("momentum", self.momentum, 0, 1, high_open=True)
        check_number("weight_decay", self.weight_decay, 0, optional=True)
        if self.nesterov not in (None, True, False):
            raise ConfigError("nesterov", f"must be true, false or None, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", "needs momentum > 0")
        check_number("grad_clip", self.grad_clip, 0)
        check_number("arch_lr", self.arch_lr, 0, low_open=True)
        check_number("arch_weight_decay", self.arch_weight_decay, 0)
        check_number("train_portion", self.train_portion, 0, 1, low_open=True, high_open=True)
        check_number("noise_lambda", self.noise_lambda, 0, optional=True)
        betas = tuple(self.arch_betas) if isinstance(self.arch_betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError("arch_betas", f"must be two numbers in [0, 1), got {self.arch_betas!r}")
        object.__setattr__(self, "arch_betas", betas)
        if self.device not in DEVICES:
            raise ConfigError("device", f"unknown device {self.device!r}", DEVICES)

    def resolved(self, space: str) -> OneShotConfig:
        """This config with every None field set for `space` (darts or nb201)."""
        if space not in SPACES:
            raise ConfigError("space", f"no supernet for {space!r}", SPACES)
        defaults = {**SPACE_DEFAULTS[space], **(NOISY_DEFAULTS if self.algorithm == "noisy-darts" else DARTS_DEFAULTS)}
        defaults["nesterov"] = defaults["nesterov"] and self.momentum > 0  # torch's SGD refuses it otherwise
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    @property
    def second_order(self) -> bool:
        return self.algorithm == "darts2"


def primitives_for(space: str, algorithm: str) -> tuple[str, ...] | None:
    """The supernet's ops where they are not the space's: NoisyDARTS' code comments `none` out
    of the DARTS list. On nb201 every algorithm keeps the five NB201 ops."""
    if space == "darts" and algorithm == "noisy-darts":
        return tuple(p for p in PRIMITIVES if p != "none")
    return None


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    logits = model(x) if params is None else functional_call(model, params, (x,))
    return F.cross_entropy(logits, y)


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients, zeros for inputs the loss does not use (a supernet too shallow for a
    normal cell never reads the normal alphas)."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def finite_difference_hvp(model: Supernet, vector: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          r: float = 0.01) -> list[torch.Tensor]:
    """d/d(alpha) of (grad_w L(w, alpha) . v) by central differences, DARTS eq. 8:
    [grad_alpha L(w + eps v) - grad_alpha L(w - eps v)] / (2 eps), eps = r / ||v||.

    `vector` follows `model.named_network_parameters()`. The shifted weights are passed to a
    functional call, so the model's own weights are never modified (quark0/darts shifts them
    in place and back, which leaves rounding residue in w)."""
    named = model.named_network_parameters()
    weights = [p.detach() for _, p in named]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vector)))
    eps = r / max(norm.item(), 1e-12)
    alphas = model.arch_parameters()
    grads = []
    for sign in (1.0, -1.0):
        # One fused multiply-add over all tensors per shift (torch.optim's multi-tensor path).
        shifted = dict(zip((n for n, _ in named), torch._foreach_add(weights, vector, alpha=sign * eps)))
        grads.append(_grad(_loss(model, x, y, shifted), alphas))
    return [(gp - gm) / (2 * eps) for gp, gm in zip(*grads)]


class Architect:
    """Updates the alphas on validation batches (Adam), first order or by DARTS' unrolled step."""

    def __init__(self, model: Supernet, config: OneShotConfig):
        self.model = model
        self.second_order = config.second_order
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=config.arch_lr, betas=config.arch_betas,
                                          weight_decay=config.arch_weight_decay)

    def step(self, x_train, y_train, x_val, y_val, lr: float, w_optimizer: torch.optim.SGD) -> None:
        for alpha, grad in zip(self.model.arch_parameters(),
                               self.gradient(x_train, y_train, x_val, y_val, lr, w_optimizer)):
            alpha.grad = grad
        self.optimizer.step()

    def gradient(self, x_train, y_train, x_val, y_val, lr: float, w_optimizer: torch.optim.SGD
                 ) -> list[torch.Tensor]:
        """The alphas' gradient: of L_val(w, alpha) (first order), or DARTS eq. 7 (second order)."""
        if self.second_order:
            return self._unrolled(x_train, y_train, x_val, y_val, lr, w_optimizer)
        return _grad(_loss(self.model, x_val, y_val), self.model.arch_parameters())

    def _unrolled(self, x_train, y_train, x_val, y_val, xi: float, w_optimizer: torch.optim.SGD
                  ) -> list[torch.Tensor]:
        """grad_alpha L_val(w', alpha) - xi * HVP, with w' = w - xi * (grad_w L_train + weight
        decay * w + momentum * momentum buffer): the step `w_optimizer` would take, momentum
        and weight decay read from it. xi is the weights' current learning rate."""
        model = self.model
        named = model.named_network_parameters()
        weights = [p.detach() for _, p in named]
        step = list(torch.autograd.grad(_loss(model, x_train, y_train), [p for _, p in named]))
        group = w_optimizer.param_groups[0]
        if group["weight_decay"]:
            torch._foreach_add_(step, weights, alpha=group["weight_decay"])
        moving = [(i, w_optimizer.state[p]["momentum_buffer"]) for i, (_, p) in enumerate(named)
                  if w_optimizer.state.get(p, {}).get("momentum_buffer") is not None]
        if moving and group["momentum"]:
            torch._foreach_add_([step[i] for i, _ in moving], [b for _, b in moving], alpha=group["momentum"])
        virtual = [w.requires_grad_() for w in torch._foreach_add(weights, step, alpha=-xi)]
        alphas = model.arch_parameters()
        # Cloned BN statistics: the virtual step must not leave a trace in the real model.
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        val_loss = _loss(model, x_val, y_val, {**dict(zip((n for n, _ in named), virtual)), **buffers})
        grads = _grad(val_loss, alphas + virtual)
        d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
        hvp = finite_difference_hvp(model, d_w, x_train, y_train)
        return [da - xi * h for da, h in zip(d_alpha, hvp)]


def _evaluate(model: Supernet, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size])
            loss += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[start:start + batch_size]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def _endless(data: ImageDataset, batch_size: int,
             generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches, reshuffled whenever the split runs out: the alphas' half may hold one
    sample fewer than the weights' half, and it must not run dry before it."""
    while True:
        yield from data.train_batches(batch_size, generator)


def search_epochs(space: SearchSpace, dataset: ImageDataset, config: OneShotConfig, seed: int) -> Iterator[dict]:
    """Run the search; yield one JSON-ready report per epoch. The last report's genotype is the answer.

    Each step updates the alphas on a batch of the second half of the training split, then
    the weights on a batch of the first half (DARTS' order). `val_loss` and `val_acc` are the
    supernet's, in eval mode, on that second half: DARTS' search-time validation.

    The search draws from torch's global RNG (initialisation, NoisyDARTS' noise) seeded with
    `seed`, and that state is its own: it is swapped out at every yield, so neither does the
    caller's RNG move nor can the caller's work between two epochs change the search.
    """
    if space.name not in SPACES:
        raise ConfigError("space", f"no supernet for {space.name!r}", SPACES)
    if not isinstance(dataset, ImageDataset):
        raise ConfigError("dataset", f"one-shot search needs an image dataset, not {dataset.name!r}")
    cfg = config.resolved(space.name)
    device = pick_device(cfg.device)
    epochs = _search(space, dataset, cfg, seed, device)
    own = None
    while True:
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            if own is not None:
                _set_rng(own, device)
            try:
                report = next(epochs)
            except StopIteration:
                return
            own = _get_rng(device)
        yield report


def _get_rng(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _search(space: SearchSpace, dataset: ImageDataset, cfg: OneShotConfig, seed: int, device: torch.device
            ) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        data = dataset.to(device)
        # DARTS' split: the first train_portion of the (already shuffled) training split trains
        # the weights, the rest the alphas.
        n_w = int(len(data.y_train) * cfg.train_portion)
        if not 0 < n_w < len(data.y_train):
            raise ConfigError("train_portion", f"leaves an empty half of {len(data.y_train)} training samples")
        w_half = dataclasses.replace(data, x_train=data.x_train[:n_w], y_train=data.y_train[:n_w])
        a_half = dataclasses.replace(data, x_train=data.x_train[n_w:], y_train=data.y_train[n_w:])
        model = build_supernet(space.name, cfg.channels, cfg.layers, data.in_channels, data.num_classes,
                               noise_lambda=cfg.noise_lambda,
                               primitives=primitives_for(space.name, cfg.algorithm)).to(device).channels_last()
        w_optimizer = torch.optim.SGD(model.network_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        architect = Architect(model, cfg)
        model.train()
        for epoch in range(cfg.epochs):
            # Cosine from lr to lr_min over the epochs, per epoch as in DARTS.
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for group in w_optimizer.param_groups:
                group["lr"] = lr
            start, losses, correct, seen = time.perf_counter(), [], 0, 0
            a_batches = _endless(a_half, cfg.batch_size, generator)
            for x, y in w_half.train_batches(cfg.batch_size, generator, cfg.max_batches_per_epoch):
                x_a, y_a = next(a_batches)
                architect.step(x, y, x_a, y_a, lr, w_optimizer)
                w_optimizer.zero_grad(set_to_none=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward(inputs=model.network_parameters())
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.network_parameters(), cfg.grad_clip)
                w_optimizer.step()
                losses.append(loss.detach())
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
            wall = time.perf_counter() - start
            val_loss, val_acc = _evaluate(model, a_half.x_train, a_half.y_train, 2 * cfg.batch_size)
            weights = model.arch_weights()
            arch = derive(space.name, weights, model.primitives)
            yield {
                "epoch": epoch, "algorithm": cfg.algorithm, "lr": lr,
                "train_loss": float(torch.stack(losses).mean()), "train_acc": float(correct) / max(seen, 1),
                "val_loss": val_loss, "val_acc": val_acc,
                "genotype": str(arch), "skip_count": skip_count(arch),
                "alpha_entropy": edge_entropy(weights), "alpha_entropy_fraction": mean_entropy_fraction(weights),
                "alphas": [w.detach().cpu().tolist() for w in weights],
                "wall_time_s": wall, "images_per_s": seen / wall if wall else 0.0,
            }
