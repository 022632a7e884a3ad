"""The bilevel search: network weights on one half of the training data, alphas on the
other (DARTS), first order or with the unrolled second-order step, and NoisyDARTS; and
what every one-shot search shares (the data split, the weights' schedule, checkpoints,
its own RNG), which random search with weight sharing (rsws.py) reuses.

Settings follow the papers (Liu et al., DARTS, ICLR 2019, sec. A.1; Chu et al., NoisyDARTS):
DARTS' CIFAR search (50 epochs, batch 64, SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4,
clip 5; alphas Adam 3e-4, betas (0.5, 0.999), wd 1e-3; xi = the weights' learning rate; eps = 0.01 / ||grad||), and
NoisyDARTS' own search settings (batch 128, lr 0.05, `none` removed, lambda 0.2, drop-path 0.3
on the skip branch). On nb201 the weights follow AutoDL-Projects' NB201 config instead (wd 5e-4,
Nesterov momentum, the cosine stepped every iteration). NoisyDARTS' NB201 settings are not known
to us, so noisy-darts uses its DARTS-space batch and learning rate there too, on top of the NB201
recipe.

Data as the papers use it: the whole official training set (our loader's train and validation
splits together) is halved, the first `train_portion` trains the weights and the rest the alphas
(CIFAR-10: 25k/25k), and batches of both halves get the dataset's augmentation (random crop with
padding 4 and horizontal flip on cifar10), as the DARTS code applies its training transform to both.

Where the papers' code and text differ we follow the code: the weights' cosine ends at
lr_min = 0.001 (DARTS' text: 0) and alphas start at 1e-3 * N(0, 1) (text: zeros).

The collapse monitors can act (all off by default, as in the papers): `warmup_epochs` train the
weights with frozen alphas first (NoisyDARTS' --frozen-epochs), `early_stop_skips` stops the
search once the derived normal cell holds that many skip-connections (DARTS+: 2), and
`keep_best` answers the genotype of the epoch with the best supernet validation accuracy
instead of the last one.

A search given a checkpoint file saves its whole state there after every epoch (weights,
alphas, both optimizers, the schedule's position, every RNG, the epoch reports) and, started
again with the same file, seed and settings, replays the reports it holds and continues as if
it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from raynas.common import ConfigError, check_int, check_number
from raynas.common.files import atomic_save
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.cell import PRIMITIVES
from raynas.workers.datasets import Data, require_task
from raynas.workers.datasets.images import ImageData
from raynas.workers.nets import space_task
from raynas.workers.oneshot.derive import derive, edge_entropy, mean_entropy_fraction, skip_count
from raynas.workers.oneshot.supernet import Path, Supernet, build_supernet
from raynas.workers.training import pick_device

SPACES = ("darts", "nb201", "rnn")
DEVICES = ("auto", "cpu", "cuda")
#: The weights' cosine steps once per epoch (DARTS) or every iteration (AutoDL-Projects on NB201);
#: DARTS' recurrent search keeps its learning rate constant.
SCHEDULES = ("epoch", "step", "constant")
#: DARTS' search network reduces at cells layers//3 and 2*layers//3; below 3 cells no normal cell is left.
MIN_DARTS_LAYERS = 3

#: DARTS' CIFAR search batch and learning rate, kept on NB201 by AutoDL-Projects.
DARTS_DEFAULTS = {"batch_size": 64, "lr": 0.025}
#: How each space's supernet weights are trained: DARTS' CIFAR search, AutoDL-Projects' NB201 config.
SPACE_DEFAULTS = {"darts": {"epochs": 50, "channels": 16, "layers": 8, "weight_decay": 3e-4, "momentum": 0.9,
                            "nesterov": False, "lr_schedule": "epoch", "grad_clip": 5.0},
                  "nb201": {"epochs": 50, "channels": 16, "layers": 5, "weight_decay": 5e-4, "momentum": 0.9,
                            "nesterov": True, "lr_schedule": "step", "grad_clip": 5.0}}
#: DARTS' PTB search (Liu et al., ICLR 2019): embedding and hidden 300, plain SGD at a constant lr 20,
#: batch 256, BPTT 35, wd 5e-7, alphas Adam 3e-3 with betas (0.9, 0.999); clip 0.25 and 50 epochs are
#: the DARTS code's (rnn/train_search.py) [U: not in the paper's text].
SPACE_DEFAULTS["rnn"] = {"epochs": 50, "channels": 300, "batch_size": 256, "lr": 20.0, "weight_decay": 5e-7,
                         "momentum": 0.0, "nesterov": False, "lr_schedule": "constant", "grad_clip": 0.25,
                         "arch_lr": 3e-3, "arch_betas": (0.9, 0.999)}
#: The alphas' Adam on the image spaces (DARTS' CIFAR search, kept on NB201 by AutoDL-Projects).
ARCH_DEFAULTS = {"arch_lr": 3e-4, "arch_betas": (0.5, 0.999)}


@dataclass(frozen=True)
class SupernetConfig:
    """What every one-shot search sets: the supernet's size and how its weights train. Fields
    left None take the published default of the search and space (`resolved`)."""

    epochs: int | None = option(None, "search epochs (default: the paper's for the space)", most=1000)
    batch_size: int | None = option(None, "batch size (default: the paper's)", most=4096)
    lr: float | None = option(None, "the weights' learning rate (default: the paper's)")
    lr_min: float = option(0.001, "where the weights' cosine ends")
    momentum: float | None = option(None, "SGD momentum of the weights (default: 0.9 on image spaces, 0 on rnn)")
    weight_decay: float | None = option(None, "the weights' weight decay (default: the paper's)")
    nesterov: bool | None = option(None, "Nesterov momentum for the weights (default: the space's recipe; the "
                                         "second-order virtual step is DARTS' heavy-ball formula either way)")
    lr_schedule: str | None = option(None, "when the weights' cosine moves: epoch, step, or constant (default: the "
                                           "space's recipe)")
    grad_clip: float | None = option(None, "largest gradient norm of the weights (default: the paper's)")
    train_portion: float = option(0.5, "share of the whole training set that trains the weights; the rest trains "
                                       "the architecture (or scores sampled architectures)")
    channels: int | None = option(None, "supernet width: initial channels (default: the paper's)", most=1024)
    layers: int | None = option(None, "supernet depth: cells (darts), cells per stage (nb201)", most=64)
    max_batches_per_epoch: int | None = option(None, "cut every epoch to this many batches", most=1_000_000)
    device: str = option("auto", "auto, cpu or cuda", choices=DEVICES)
    num_threads: int | None = option(None, "torch intra-op threads (default: the search's CPU share)", most=256)

    #: The search's name in reports and results.
    algorithm: ClassVar[str] = ""
    #: The spaces this search has supernets and published settings for.
    spaces: ClassVar[tuple[str, ...]] = SPACES

    def __post_init__(self):
        check_int("epochs", self.epochs, optional=True)
        for name in ("batch_size", "channels", "layers", "max_batches_per_epoch", "num_threads"):
            check_int(name, getattr(self, name), optional=True)
        check_number("lr", self.lr, 0, low_open=True, optional=True)
        check_number("lr_min", self.lr_min, 0)
        check_number("momentum", self.momentum, 0, 1, high_open=True, optional=True)
        check_number("weight_decay", self.weight_decay, 0, optional=True)
        if self.nesterov not in (None, True, False):
            raise ConfigError("nesterov", f"must be true, false or None, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", "needs momentum > 0")
        if self.lr_schedule is not None and self.lr_schedule not in SCHEDULES:
            raise ConfigError("lr_schedule", f"unknown schedule {self.lr_schedule!r}", SCHEDULES)
        check_number("grad_clip", self.grad_clip, 0, optional=True)
        check_number("train_portion", self.train_portion, 0, 1, low_open=True, high_open=True)
        if self.device not in DEVICES:
            raise ConfigError("device", f"unknown device {self.device!r}", DEVICES)

    def defaults(self, space: str) -> dict[str, Any]:
        """The published settings of this search on `space`, for the fields left None."""
        return dict(SPACE_DEFAULTS[space])

    def resolved(self, space: str) -> SupernetConfig:
        """This config with every None field set for `space` (one of `spaces`)."""
        if space not in self.spaces:
            raise ConfigError("space", f"no supernet for {space!r}", self.spaces)
        defaults = self.defaults(space)
        momentum = defaults["momentum"] if self.momentum is None else self.momentum
        defaults["nesterov"] = defaults["nesterov"] and momentum > 0  # torch's SGD refuses it otherwise
        config = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        if space == "darts" and config.layers < MIN_DARTS_LAYERS:
            raise ConfigError("layers", f"a darts supernet of {config.layers} cells has no normal cell (reductions "
                              f"sit at cells layers//3 and 2*layers//3), so its normal alphas never learn",
                              f"at least {MIN_DARTS_LAYERS}")
        return config

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written with to be continued by this search: every
        setting but where it runs."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "num_threads")}
        return {"algorithm": self.algorithm, **settings}


def retuned(base: type, name: str, default: Any) -> Any:
    """`base`'s option `name` with another default (a search's published setting); its help and
    its bound stay `base`'s."""
    return dataclasses.field(default=default, metadata=base.__dataclass_fields__[name].metadata)


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, got {value!r}")


@dataclass(frozen=True)
class OneShotConfig(SupernetConfig):
    """DARTS' bilevel search, and the settings that vary it: the unrolled second-order step
    (`Darts2Config` sets it) and NoisyDARTS' noise, drop-path and op list (`NoisyDartsConfig`
    sets them, with its batch and learning rate)."""

    arch_lr: float | None = option(None, "the alphas' Adam learning rate (default: 3e-4 on image spaces, 3e-3 on "
                                         "rnn)")
    arch_betas: tuple[float, float] | None = option(None, "the alphas' Adam betas (default: (0.5, 0.999) on image "
                                                          "spaces, (0.9, 0.999) on rnn)")
    arch_weight_decay: float = option(1e-3, "the alphas' weight decay")
    second_order: bool = option(False, "step the alphas by DARTS' unrolled second-order gradient (a virtual weight "
                                       "step and a finite-difference Hessian-vector product), not at the current "
                                       "weights")
    noise_lambda: float = option(0.0, "NoisyDARTS' lambda: Gaussian noise of std lambda x std(skip output) on the skip "
                                      "connection while training (0: none)")
    skip_drop_path: float = option(0.0, "drop-path probability of the skip branch, in training and evaluation "
                                        "(NoisyDARTS' search code)")
    drop_none: bool = option(False, "leave `none` out of the darts supernet's ops (NoisyDARTS' list); nb201 keeps it, "
                                    "an edge's choice there")
    warmup_epochs: int = option(0, "epochs that train the weights with frozen alphas first (NoisyDARTS' frozen "
                                   "epochs)", most=1000)
    early_stop_skips: int | None = option(None, "stop once the derived normal cell holds this many skip-connections "
                                                "(DARTS+: 2)", most=1000)
    keep_best: bool = option(False, "answer the genotype of the epoch with the best supernet validation accuracy, "
                                    "not the last")

    algorithm: ClassVar[str] = "darts"

    def __post_init__(self):
        super().__post_init__()
        check_number("arch_lr", self.arch_lr, 0, low_open=True, optional=True)
        check_number("arch_weight_decay", self.arch_weight_decay, 0)
        check_number("noise_lambda", self.noise_lambda, 0)
        check_number("skip_drop_path", self.skip_drop_path, 0, 1, high_open=True)
        for name in ("second_order", "drop_none", "keep_best"):
            check_flag(name, getattr(self, name))
        check_int("warmup_epochs", self.warmup_epochs, 0)
        check_int("early_stop_skips", self.early_stop_skips, optional=True)
        if self.arch_betas is not None:
            betas = tuple(self.arch_betas) if isinstance(self.arch_betas, (list, tuple)) else ()
            if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
                raise ConfigError("arch_betas", f"must be two numbers in [0, 1), got {self.arch_betas!r}")
            object.__setattr__(self, "arch_betas", betas)
        if self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", f"{self.warmup_epochs} frozen epochs leave the alphas none of "
                              f"the {self.epochs}", f"fewer than epochs ({self.epochs})")

    def defaults(self, space: str) -> dict[str, Any]:
        if space == "rnn":
            for name, why in (("noise_lambda", "noises"), ("skip_drop_path", "drops")):
                if getattr(self, name):
                    raise ConfigError(name, f"{why} the skip connection, which the rnn space has not", (0,))
            if self.drop_none:
                raise ConfigError("drop_none", "the rnn supernet mixes its activations with `none`", (False,))
            if self.early_stop_skips is not None:
                raise ConfigError("early_stop_skips", "counts skip-connections, which the rnn space has not",
                                  (None,))
            return super().defaults(space)
        return {**super().defaults(space), **ARCH_DEFAULTS, **DARTS_DEFAULTS}


@dataclass(frozen=True)
class Darts2Config(OneShotConfig):
    """darts2: DARTS with its unrolled second-order step."""

    second_order: bool = retuned(OneShotConfig, "second_order", True)

    algorithm: ClassVar[str] = "darts2"


@dataclass(frozen=True)
class NoisyDartsConfig(OneShotConfig):
    """noisy-darts: DARTS with NoisyDARTS' published search settings (batch 128, lr 0.05, `none`
    removed, lambda 0.2, drop-path 0.3 on the skip branch). Its NB201 settings are not known to
    us, so the same batch and learning rate apply there, on top of the NB201 recipe."""

    batch_size: int | None = retuned(OneShotConfig, "batch_size", 128)
    lr: float | None = retuned(OneShotConfig, "lr", 0.05)
    noise_lambda: float = retuned(OneShotConfig, "noise_lambda", 0.2)
    skip_drop_path: float = retuned(OneShotConfig, "skip_drop_path", 0.3)
    drop_none: bool = retuned(OneShotConfig, "drop_none", True)

    algorithm: ClassVar[str] = "noisy-darts"


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    logits = model(x) if params is None else functional_call(model, params, (x,))
    return F.cross_entropy(logits, y)


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients, zeros for inputs the loss does not use."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def finite_difference_hvp(model: Supernet, vector: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          r: float = 0.01) -> list[torch.Tensor]:
    """d/d(alpha) of (grad_w L(w, alpha) . v) by central differences, DARTS eq. 8:
    [grad_alpha L(w + eps v) - grad_alpha L(w - eps v)] / (2 eps), eps = r / ||v||.

    `vector` follows `model.named_network_parameters()`. The shifted weights are passed to a
    functional call, so the model's own weights are never modified (quark0/darts shifts them
    in place and back, which leaves rounding residue in w). Both passes draw the same random
    numbers (NoisyDARTS' noise, the skip branch's drop-path): with independent draws the
    difference of the two gradients is dominated by the difference of the noise, divided by
    2 eps, and the product is noise."""
    named = model.named_network_parameters()
    weights = [p.detach() for _, p in named]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vector)))
    eps = r / max(norm.item(), 1e-12)
    alphas = model.arch_parameters()
    device = weights[0].device
    randomness = get_rng(device)
    grads = []
    for sign in (1.0, -1.0):
        set_rng(randomness, device)
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


# -- what every one-shot search shares ----------------------------------------------------------


def evaluate(model: Supernet, data: ImageData, batch_size: int, path: Path | None = None, split: str = "train"
             ) -> tuple[float, float]:
    """Mean loss and accuracy of the supernet (or of one path through it) in eval mode, on `split`
    of `data` (one-shot searches score on the architecture half's `train` split)."""
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in data.eval_batches(split, batch_size):
            logits = model(x, path)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    model.train()
    return loss / seen, correct / seen


def endless(data: ImageData, batch_size: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches, reshuffled whenever the split runs out: the alphas' half may hold one
    sample fewer than the weights' half, and it must not run dry before it."""
    while True:
        yield from data.train_batches(batch_size, generator)


def steps_per_epoch(data: ImageData, cfg: SupernetConfig) -> int:
    return data.steps(cfg.batch_size, cfg.max_batches_per_epoch)


def cosine_lr(cfg: SupernetConfig, epoch: int, step: int, steps: int) -> float:
    """The weights' learning rate at `step` of `epoch`: cosine from lr to lr_min over the epochs,
    moved once per epoch or every step (`lr_schedule`)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = epoch + (step / steps if cfg.lr_schedule == "step" else 0.0)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress / cfg.epochs))


def weight_optimizer(model: Supernet, cfg: SupernetConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.network_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def weight_step(model: Supernet, optimizer: torch.optim.SGD, cfg: SupernetConfig, lr: float, x: torch.Tensor,
                y: torch.Tensor, path: Path | None = None,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of the weights (of the whole supernet, or of one path); returns the
    batch's loss (`loss_fn`: the dataset's, per pixel for segmentation) and its number of
    correct predictions, on the device (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    logits = model(x) if path is None else model(x, path)
    loss = loss_fn(logits, y)
    loss.backward(inputs=model.network_parameters())
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.network_parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


def get_rng(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda" and state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def load_checkpoint(checkpoint: str | None, cfg: SupernetConfig, seed: int, device: torch.device,
                    parts: dict[str, Any]) -> dict[str, Any]:
    """Restore what a search saved in `checkpoint` (`save_checkpoint` with the same `parts`) into
    `parts` and the global RNG; returns the other entries it saved (e.g. `history`), {} when there
    is no checkpoint yet. A file written by another search (settings or seed) is refused rather
    than continued."""
    if not checkpoint or not os.path.exists(checkpoint):
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("identity") != cfg.identity() or state.get("seed") != seed:
        raise ConfigError("checkpoint", f"{checkpoint} holds another search (its settings or seed differ); "
                          "remove it to start this one afresh")
    for name, part in parts.items():
        if isinstance(part, torch.Generator):
            part.set_state(state[name])
        else:
            part.load_state_dict(state[name])
    set_rng(state["rng"], device)
    return state


def save_checkpoint(checkpoint: str | None, cfg: SupernetConfig, seed: int, device: torch.device,
                    parts: dict[str, Any], **extra: Any) -> None:
    """Everything to continue the search exactly: the state of each of `parts` (modules,
    optimizers, torch Generators, anything with `state_dict`), `extra`, and the search's RNG (the
    global one is the search's own while it runs). Not fsynced: a lost file costs a re-run, never
    a wrong result."""
    if checkpoint:
        state = {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
                 for name, part in parts.items()}
        atomic_save({"identity": cfg.identity(), "seed": seed, "rng": get_rng(device), **state, **extra}, checkpoint,
                    durable=False)


def own_rng(run: Callable[[], Iterator[dict]], device: torch.device) -> Iterator[dict]:
    """Run the search generator `run()` on an RNG of its own: torch's global RNG (which the
    search seeds and draws from: initialisation, noise, drop-path) is swapped in for each step
    of the generator and out at every yield, so neither does the caller's RNG move nor can the
    caller's work between two reports change the search."""
    epochs = run()
    own = None
    while True:
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            if own is not None:
                set_rng(own, device)
            try:
                report = next(epochs)
            except StopIteration:
                return
            own = get_rng(device)
        yield report


def check_search(space: SearchSpace, dataset: Data) -> None:
    if space.name not in SPACES:
        raise ConfigError("space", f"no supernet for {space.name!r}", SPACES)
    require_task(dataset, space_task(space.name), f"one-shot searches on the {space.name} space")


# -- the DARTS family -----------------------------------------------------------------------------


def search_epochs(space: SearchSpace, dataset: ImageData, config: OneShotConfig, seed: int,
                  checkpoint: str | None = None) -> Iterator[dict]:
    """Run the search; yield one JSON-ready report per epoch (`epoch` counts from 1). The last
    report names the answer: `candidates`, a list of one genotype.

    Each step updates the alphas on a batch of the architecture half, then the weights on a
    batch of the weights' half (DARTS' order). `val_loss` and `val_acc` are the supernet's, in
    eval mode, on the architecture half: DARTS' search-time validation.

    With `checkpoint`, the state after each epoch is saved there, and a search started on a
    file that holds one first replays the reports saved with it, then continues.
    """
    check_search(space, dataset)
    cfg = config.resolved(space.name)
    device = pick_device(cfg.device)
    return own_rng(lambda: _darts(space, dataset, cfg, seed, device, checkpoint), device)


def _selected(history: list[dict], cfg: OneShotConfig) -> str:
    if cfg.keep_best:
        return max(history, key=lambda r: r["val_acc"])["genotype"]  # the first of equals: the earliest
    return history[-1]["genotype"]


def _darts(space: SearchSpace, dataset: ImageData, cfg: OneShotConfig, seed: int, device: torch.device,
           checkpoint: str | None) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        w_half, a_half = dataset.to(device).halves(cfg.train_portion)
        model = build_supernet(space.name, cfg.channels, cfg.layers, w_half.in_channels, w_half.num_classes,
                               noise_lambda=cfg.noise_lambda, skip_drop_path=cfg.skip_drop_path,
                               primitives=tuple(p for p in PRIMITIVES if p != "none") if cfg.drop_none else None
                               ).to(device).channels_last()
        w_optimizer = weight_optimizer(model, cfg)
        architect = Architect(model, cfg)
        parts = {"model": model, "w_optimizer": w_optimizer, "a_optimizer": architect.optimizer, "generator": generator}
        history: list[dict] = load_checkpoint(checkpoint, cfg, seed, device, parts).get("history", [])
        yield from history
        if history and "candidates" in history[-1]:
            return
        model.train()
        steps = steps_per_epoch(w_half, cfg)
        for epoch in range(len(history), cfg.epochs):
            lr = cosine_lr(cfg, epoch, 0, steps)
            start, losses, correct, seen = time.perf_counter(), [], 0, 0
            a_batches = endless(a_half, cfg.batch_size, generator)
            for step, (x, y) in enumerate(w_half.train_batches(cfg.batch_size, generator, steps)):
                step_lr = cosine_lr(cfg, epoch, step, steps)
                if epoch >= cfg.warmup_epochs:
                    x_a, y_a = next(a_batches)
                    architect.step(x, y, x_a, y_a, step_lr, w_optimizer)
                loss, right = weight_step(model, w_optimizer, cfg, step_lr, x, y)
                losses.append(loss)
                correct += right
                seen += len(y)
            wall = time.perf_counter() - start
            val_loss, val_acc = evaluate(model, a_half, 2 * cfg.batch_size)
            weights = model.arch_weights()
            arch = derive(space.name, weights, model.primitives)
            report = {
                "epoch": epoch + 1, "algorithm": cfg.algorithm, "lr": lr, "alphas_frozen": epoch < cfg.warmup_epochs,
                "train_loss": float(torch.stack(losses).mean()), "train_acc": float(correct) / max(seen, 1),
                "val_loss": val_loss, "val_acc": val_acc,
                "genotype": str(arch), "skip_count": skip_count(arch),
                "alpha_entropy": edge_entropy(weights), "alpha_entropy_fraction": mean_entropy_fraction(weights),
                "alphas": [w.detach().cpu().tolist() for w in weights],
                "wall_time_s": wall, "images_per_s": seen / wall if wall else 0.0,
            }
            history.append(report)
            collapsed = (cfg.early_stop_skips is not None and epoch >= cfg.warmup_epochs
                         and report["skip_count"] >= cfg.early_stop_skips)
            if collapsed:
                report["stopped_early"] = (f"{report['skip_count']} skip-connections in the derived cell "
                                           f"(early_stop_skips={cfg.early_stop_skips})")
            if collapsed or epoch + 1 == cfg.epochs:
                report["candidates"] = [_selected(history, cfg)]
            save_checkpoint(checkpoint, cfg, seed, device, parts, history=history)
            yield report
            if collapsed:
                return
