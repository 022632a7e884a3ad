"""What every one-shot search shares: its settings (`SupernetConfig`, defaults from the space's
registration, registry.py), the weights' schedule and step, and the one epoch loop that runs them
all (`search_epochs`). An algorithm (darts.py, rsws.py, autodeeplab.py, nao_ws.py) is a `Search`:
it builds its optimizers around the registered supernet and its data (feeds.py), names its
stages and does one epoch (or ranking block) of each when asked; the loop owns the rest.

The loop seeds the search, runs it on an RNG of its own, times each step (its own work, not the
evaluation after it) and adds the fields every report has (`epoch` counting from 1 within its
`stage`, `algorithm`, `wall_time_s`, the throughput); the last report names the `candidates`.

A search given a checkpoint file saves its whole state there after every epoch or ranking block
(weights, alphas, optimizers, the schedule's position, every RNG, the data's position, the
reports) and, started again with the same file, seed and settings, replays the reports it holds
and continues as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from raynas.common import ConfigError, check_int, check_number
from raynas.common.files import atomic_save
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.workers.datasets import Data, require_task
from raynas.workers.oneshot.feeds import Feed
from raynas.workers.oneshot.registry import OneShotSpace, supernet_for, supernet_spaces
from raynas.workers.oneshot.supernet import Path, Supernet
from raynas.workers.training import pick_device

DEVICES = ("auto", "cpu", "cuda")
#: The weights' cosine steps once per epoch (DARTS) or every iteration (AutoDL-Projects on NB201);
#: DARTS' recurrent search keeps its learning rate constant.
SCHEDULES = ("epoch", "step", "constant")


@dataclass(frozen=True)
class SupernetConfig:
    """What every one-shot search sets: the supernet's size and how its weights train. Fields
    left None take the published setting of the search on the space (`resolved`)."""

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

    #: The search's name in reports and results: its strategy's.
    algorithm: ClassVar[str] = ""
    #: Whose published settings the None fields take from a space's registration (a search
    #: that only changes another's defaults, noisy-darts, keeps that one's: darts).
    recipe: ClassVar[str] = ""
    #: How the supernet mixes its skip branch and which ops it has; fixed for the searches that
    #: do not offer them as options (`OneShotConfig` does).
    noise_lambda: ClassVar[float] = 0.0
    skip_drop_path: ClassVar[float] = 0.0
    drop_none: ClassVar[bool] = False

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

    def search_class(self) -> type[Search]:
        """The algorithm these settings drive."""
        raise NotImplementedError

    def resolved(self, space: str) -> SupernetConfig:
        """This config with every None field set to its search's published setting on `space`; a
        ConfigError where the space has no supernet for this search or cannot honour a setting."""
        entry = supernet_for(space)
        if self.recipe not in entry.defaults:
            raise ConfigError("space", f"the {self.algorithm} search has no supernet for {space!r}",
                              supernet_spaces(self.recipe))
        defaults = dict(entry.defaults[self.recipe])
        momentum = defaults["momentum"] if self.momentum is None else self.momentum
        defaults["nesterov"] = defaults["nesterov"] and momentum > 0  # torch's SGD refuses it otherwise
        config = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        entry.check(config)
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


# -- the weights ----------------------------------------------------------------------------------


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


def weight_step(model: Supernet, optimizer: torch.optim.SGD, cfg: SupernetConfig, lr: float, x: Any,
                y: torch.Tensor, path: Any = None,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of the weights (of the whole supernet, or of one path); returns the
    batch's loss (`loss_fn`: the dataset's, per pixel for segmentation) and its number of
    correct predictions, on the device (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Zeroed in place, as torch 0.3's zero_grad did in both references: a weight that has had a
    # gradient keeps a zero one when the step's path does not run it, so weight decay and momentum
    # still move it (None would skip it); one never run yet has none and stays put.
    optimizer.zero_grad(set_to_none=False)
    logits = model(x) if path is None else model(x, path)
    loss = loss_fn(logits, y)
    loss.backward(inputs=model.network_parameters())
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.network_parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


class GradientSlots:
    """Which of a supernet's weights hold a gradient tensor (zero or not), for the checkpoint: the
    optimizer's state does not say, and a resumed search must decay the same weights (`weight_step`)."""

    def __init__(self, model: Supernet):
        self.params = model.network_parameters()

    def state_dict(self) -> dict[str, list[int]]:
        return {"held": [i for i, p in enumerate(self.params) if p.grad is not None]}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        for i in state["held"]:
            self.params[i].grad = torch.zeros_like(self.params[i])


# -- checkpoints and the search's own RNG ---------------------------------------------------------


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
    is no checkpoint yet. A file written by another search (settings, seed, or what it holds) is
    refused rather than continued."""
    if not checkpoint or not os.path.exists(checkpoint):
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("identity") != cfg.identity() or state.get("seed") != seed or not set(parts) <= set(state):
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


# -- the algorithms and the loop that runs them ---------------------------------------------------


class Clock:
    """A step's wall time and throughput: of its own work (an epoch's training, a block's
    ranking) up to `stop`, not of the evaluation a step adds after it (the whole step when it
    never stops the clock)."""

    def __init__(self, unit: str):
        self.unit = unit
        self.start = time.perf_counter()
        self.wall: float | None = None
        self.done: int | None = None

    def stop(self, done: int | None = None) -> None:
        """The work is over; `done`: how many `unit`s it went through (images, tokens)."""
        self.wall, self.done = time.perf_counter() - self.start, done

    def fields(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start if self.wall is None else self.wall
        rate = {} if self.done is None else {f"{self.unit}_per_s": self.done / wall if wall else 0.0}
        return {"wall_time_s": wall, **rate}


@dataclass(frozen=True)
class Stage:
    """`length` steps of one kind (training epochs, ranking blocks): `step(i, clock)` does the
    i-th (from 0) and returns its report's own fields."""

    name: str
    length: int
    step: Callable[[int, Clock], dict[str, Any]]


class Search(ABC):
    """One algorithm at work on one space: the registered supernet and its data (built where
    the search runs, on the search's seeded RNG), whatever the algorithm adds, its stages, and
    its answer. `search_epochs` runs it."""

    def __init__(self, space: SearchSpace, entry: OneShotSpace, data: Data, cfg: SupernetConfig, seed: int,
                 device: torch.device):
        self.space, self.entry, self.cfg = space, entry, cfg
        #: Every random choice about data (shuffles, augmentation, scoring batches, sampled
        #: architectures) comes from here, so that it is checkpointed with the search.
        self.generator = torch.Generator().manual_seed(seed)
        self.model = entry.build(space, cfg, data).to(device)
        self.feed: Feed = entry.feed(data, cfg, self.model, self.generator, device)

    def parts(self) -> dict[str, Any]:
        """What the checkpoint holds, by name: modules, optimizers, torch Generators, anything
        with `state_dict` and `load_state_dict`."""
        return {"model": self.model, "grads": GradientSlots(self.model), "generator": self.generator,
                **self.feed.parts}

    @abstractmethod
    def stages(self) -> tuple[Stage, ...]:
        """What the search does, in order; reports name their stage where it has several."""

    def stops(self, report: dict[str, Any]) -> str | None:
        """Why the search ends after the step that made `report`, before its last (None: it goes on)."""
        return None

    @abstractmethod
    def candidates(self, history: list[dict[str, Any]]) -> list[str]:
        """The architectures the search answers, best first, once `history` holds its last report."""

    @classmethod
    def summary(cls, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Figures of the whole search for its evaluation's metrics, beyond those every search has."""
        return {}

    def train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int, clock: Clock,
                    before: Callable[[Any, torch.Tensor, float], None] | None = None,
                    path: Callable[[], Path | Any] | None = None) -> dict[str, Any]:
        """One epoch of weight steps on the feed's batches: `before(x, y, lr)` runs ahead of each
        (an architecture step), `path()` names the architecture each trains alone (None: the
        whole supernet, mixed). Stops `clock` once trained; returns the epoch's learning rate (at
        its start), its mean training loss and what else the feed reports of training."""
        cfg, feed, model = self.cfg, self.feed, self.model
        model.train()
        losses, correct, seen = [], 0, 0
        for step, (x, y) in enumerate(feed.batches()):
            lr = cosine_lr(cfg, epoch, step, feed.steps) * feed.lr_scale(x)
            if before is not None:
                before(x, y, lr)
            loss, right = weight_step(model, optimizer, cfg, lr, x, y, None if path is None else path(), feed.loss)
            losses.append(loss)
            correct += right
            seen += feed.count(y)
        clock.stop(seen)
        return {"lr": cosine_lr(cfg, epoch, 0, feed.steps), "train_loss": float(torch.stack(losses).mean()),
                **feed.training(correct, seen)}


def search_epochs(space: SearchSpace, dataset: Data, config: SupernetConfig, seed: int,
                  checkpoint: str | None = None) -> Iterator[dict]:
    """Run the search `config` sets on `space`'s supernet, trained on `dataset`; yield one
    JSON-ready report per epoch (or ranking block). The last report names the answer:
    `candidates`, genotype strings, best first.

    With `checkpoint`, the state after each step is saved there, and a search started on a
    file that holds one first replays the reports saved with it, then continues.
    """
    entry = supernet_for(space.name)
    require_task(dataset, entry.task, f"one-shot searches on the {space.name} space")
    cfg = config.resolved(space.name)
    device = pick_device(cfg.device)
    return own_rng(lambda: _run(cfg.search_class(), space, entry, dataset, cfg, seed, device, checkpoint), device)


def _run(algorithm: type[Search], space: SearchSpace, entry: OneShotSpace, dataset: Data, cfg: SupernetConfig,
         seed: int, device: torch.device, checkpoint: str | None) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        search = algorithm(space, entry, dataset, cfg, seed, device)
        parts = search.parts()
        history: list[dict] = load_checkpoint(checkpoint, cfg, seed, device, parts).get("history", [])
        yield from history
        if history and "candidates" in history[-1]:
            return
        stages = search.stages()
        for stage in stages:
            done = sum(r.get("stage", stages[0].name) == stage.name for r in history)
            for i in range(done, stage.length):
                clock = Clock(search.feed.unit)
                named = {"stage": stage.name} if len(stages) > 1 else {}
                report = {**named, "epoch": i + 1, "algorithm": cfg.algorithm, **stage.step(i, clock), **clock.fields()}
                history.append(report)
                stop = search.stops(report)
                if stop:
                    report["stopped_early"] = stop
                if stop or (stage is stages[-1] and i + 1 == stage.length):
                    report["candidates"] = search.candidates(history)
                save_checkpoint(checkpoint, cfg, seed, device, parts, history=history)
                yield report
                if stop:
                    return
