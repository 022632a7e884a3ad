"""The training loop every child and every retrained network runs: `TrainConfig`, the
per-step cosine schedule, image and language-model epochs with one host sync each,
cutout, and a state that resumes exactly (`TrainingRun`).

On CUDA the loop trains fast by default, each switch a `TrainConfig` option and all of them off
on CPU (`resolve_speed`): autocast (bf16 where the GPU computes in it, else fp16 with a gradient
scaler), channels-last weights and batches for image models, pinned host memory with copies that
do not wait, and cuDNN's autotuner. What a run used is in its metrics (`Speed.metrics`).

The train evaluator (workers/evaluation/train.py) and `nas train` (workers/retrain.py)
both drive it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from raynas.common import ConfigError, check_int, check_number
from raynas.common.options import option
from raynas.workers.datasets.images import ImageData, to_device
from raynas.workers.datasets.text import TextData

IMAGE_REWARDS = ("zoph", "last", "max")
LANGUAGE_REWARDS = ("ppl",)
DEVICES = ("auto", "cpu", "cuda")
AUTOCAST_DTYPES = ("auto", "bf16", "fp16")
#: Devices where autocast and channels-last pay: tensor cores compute in half precision and
#: prefer NHWC. On a CPU both mostly cost time (bf16 is emulated on most cores) and change numerics.
MIXED_PRECISION_DEVICES = ("cuda",)
LR_SCHEDULES = ("cosine", "poly", "constant")
DROP_PATH_SCHEDULES = ("darts", "nasnet")
#: DeepLab's poly schedule: lr * (1 - step / steps) ** POLY_POWER.
POLY_POWER = 0.9
#: Zoph & Le score a child by its best validation accuracy over this many final epochs.
REWARD_WINDOW = 5
#: Zoph & Le's PTB reward is PPL_REWARD_CONSTANT / ppl**2.
PPL_REWARD_CONSTANT = 80.0
#: DARTS' evaluation (rnn/train.py) draws each window's length around bptt, or around bptt / 2 one
#: time in BPTT_HALF_EVERY, with this standard deviation, at least BPTT_SHORTEST and at most
#: bptt + BPTT_LONGER (AWD-LSTM's variable-length backprop).
BPTT_HALF_EVERY = 20
BPTT_STD = 5.0
BPTT_SHORTEST = 5
BPTT_LONGER = 20
#: A run whose NaN losses keep coming back after this many returns to its best epoch fails.
MAX_ROLLBACKS = 10

# Fields left as None in TrainConfig take their task's default: NAS-RL's CIFAR
# child training for images, DARTS' PTB recipe for language models (plain SGD
# at lr 20; momentum SGD at 0.1 barely moves an LSTM-style model in a few epochs).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 5.0,
                       "eval_batch_size": 256, "reward": "zoph"},
    # Segmentation: DeepLab's momentum SGD; the reward is the last epoch's validation mIoU.
    "segmentation": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 5.0,
                     "eval_batch_size": 64, "reward": "last"},
    "language_model": {"lr": 20.0, "momentum": 0.0, "weight_decay": 5e-7, "grad_clip": 0.25,
                       "eval_batch_size": 10, "reward": "ppl"},
}


@dataclass(frozen=True)
class TrainConfig:
    """How each child is trained. Validated on construction; errors name the field."""

    epochs: int = option(3, "training epochs per child (short by default, so that a search fits on a laptop CPU; "
                            "Zoph & Le trained each child 50)", most=1000)
    batch_size: int = option(64, "training batch size", most=4096)
    lr: float | None = option(None, "peak learning rate of the schedule (default: the task's: 0.1 images, 0.05 "
                                    "segmentation, 20 language models)")
    momentum: float | None = option(None, "SGD momentum (default: the task's)")
    nesterov: bool = option(True, "Nesterov momentum (NAS-RL's child training; DARTS' evaluation uses plain)")
    weight_decay: float | None = option(None, "weight decay (default: the task's)")
    grad_clip: float | None = option(None, "largest gradient norm, 0 for none (default: the task's)")
    channels: int | None = option(None, "network width: initial channels, or a language model's embedding and "
                                        "hidden size (default: the space's)", most=1024)
    layers: int | None = option(None, "network depth: cells, cells per stage (nb201) or language-model layers "
                                      "(default: the space's)", most=64)
    auxiliary_weight: float = option(0.0, "weight of the auxiliary head's loss; above 0 builds the auxiliary head")
    drop_path: float = option(0.0, "final drop-path probability, ramped linearly from 0 over training (see "
                                   "drop_path_schedule)")
    drop_path_schedule: str = option("darts", "darts: every cell drops with p x epoch / epochs, stepped per epoch; "
                                              "nasnet (ScheduledDropPath, TF-slim's NASNet): cell i of n drops with "
                                              "p x (i + 1) / n x step / steps, ramped per step",
                                     choices=DROP_PATH_SCHEDULES)
    lr_schedule: str = option("cosine", "the learning rate per step: cosine to 0, DeepLab's poly (lr x (1 - t/T)^0.9) "
                                        "or constant (DARTS' PTB evaluation)", choices=LR_SCHEDULES)
    cutout: int = option(0, "side of the square cut out of each training image (DeVries & Taylor; DARTS: 16 on "
                            "CIFAR-10), 0 for none", most=64)
    reward: str = option("auto", "zoph (best validation accuracy of the last 5 epochs, cubed), last, max, or ppl "
                                 "(80 / perplexity^2, language models); auto: zoph for images, ppl for text")
    bptt: int = option(35, "truncated-backprop window of language models", most=1000)
    asgd_nonmono: int = option(0, "language models: switch to averaged SGD once the validation perplexity is worse "
                                  "than the best of the epochs before the last N (AWD-LSTM's NT-ASGD; DARTS: 5); 0: "
                                  "never", most=1000)
    tar: float = option(0.0, "language models: temporal activation regularisation, beta x the mean squared change "
                             "of the last layer's outputs from one step to the next (AWD-LSTM; DARTS: 1e-3)")
    bptt_jitter: bool = option(False, "language models: each window's length drawn as DARTS' evaluation draws it "
                                      "(normal around bptt, or bptt / 2 one time in 20, std 5, 5 to bptt + 20), the "
                                      "learning rate scaled by length / bptt")
    keep_best: bool = option(False, "language models: keep the weights and optimizer of the epoch with the best "
                                    "validation perplexity; the test perplexity is theirs, and a NaN loss rolls "
                                    "training back to them (DARTS' evaluation) instead of failing it")
    eval_batch_size: int | None = option(None, "evaluation batch size (default: the task's)", most=4096)
    max_train_batches_per_epoch: int | None = option(None, "cut every epoch to this many batches (smoke tests and "
                                                           "quick looks)", most=1_000_000)
    device: str = option("auto", "auto (CUDA when there is one), cpu or cuda", choices=DEVICES)
    autocast: bool = option(True, "mixed precision on CUDA: the forward pass under autocast, bf16 where the GPU "
                                  "computes in it, else fp16 with a gradient scaler; language models score their "
                                  "perplexity in fp32 (no effect on CPU, which trains in fp32)")
    autocast_dtype: str = option("auto", "the autocast type: auto (bf16 where the GPU has it natively, else fp16), "
                                         "bf16, or fp16 (always with a gradient scaler)", choices=AUTOCAST_DTYPES)
    channels_last: bool = option(True, "image models on CUDA: weights and batches in channels-last (NHWC) memory "
                                       "format, which tensor-core convolutions prefer (no effect on CPU)")
    pin_memory: bool = option(True, "on CUDA: copy the host tensors the loop makes every step (cutout's squares) "
                                    "from pinned memory without waiting, so the step does not wait for the GPU "
                                    "(datasets streamed from disk copy their batches themselves)")
    cudnn_benchmark: bool = option(True, "on CUDA: let cuDNN time its convolution algorithms for each new shape and "
                                         "keep the fastest (the first batches pay for it; results may then differ "
                                         "in the last bits between runs)")
    num_threads: int | None = option(None, "torch intra-op threads while training (default: the child's CPU share, "
                                           "cpus_per_child): more threads than cores only make children fight",
                                     most=256)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "bptt"):
            check_int(name, getattr(self, name))
        for name in ("channels", "layers", "eval_batch_size", "max_train_batches_per_epoch", "num_threads"):
            check_int(name, getattr(self, name), optional=True)
        check_number("lr", self.lr, 0.0, low_open=True, optional=True)
        check_number("momentum", self.momentum, 0.0, 1.0, high_open=True, optional=True)
        check_number("weight_decay", self.weight_decay, 0.0, optional=True)
        check_number("grad_clip", self.grad_clip, 0.0, optional=True)
        check_number("auxiliary_weight", self.auxiliary_weight, 0.0, optional=True)
        check_number("drop_path", self.drop_path, 0.0, 1.0, high_open=True)
        check_int("cutout", self.cutout, 0)
        check_int("asgd_nonmono", self.asgd_nonmono, 0)
        if self.drop_path_schedule not in DROP_PATH_SCHEDULES:
            raise ConfigError("drop_path_schedule", f"unknown schedule {self.drop_path_schedule!r}",
                              DROP_PATH_SCHEDULES)
        check_number("tar", self.tar, 0.0)
        for name in ("bptt_jitter", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError("lr_schedule", f"unknown schedule {self.lr_schedule!r}", LR_SCHEDULES)
        rewards = ("auto", *IMAGE_REWARDS, *LANGUAGE_REWARDS)
        if self.reward not in rewards:
            raise ConfigError("reward", f"unknown reward {self.reward!r}", rewards)
        if self.device not in DEVICES:
            raise ConfigError("device", f"unknown device {self.device!r}", DEVICES)
        if self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ConfigError("autocast_dtype", f"unknown type {self.autocast_dtype!r}", AUTOCAST_DTYPES)

    def resolved(self, task: str) -> TrainConfig:
        """This config with every None / "auto" replaced by the default for `task`
        (classification, segmentation or language_model), and the reward checked against it."""
        defaults = TASK_DEFAULTS[task]
        config = replace(self, **{k: v for k, v in defaults.items()
                                  if getattr(self, k) is None or getattr(self, k) == "auto"})
        allowed = LANGUAGE_REWARDS if task == "language_model" else IMAGE_REWARDS
        if config.reward not in allowed:
            raise ConfigError("reward", f"{config.reward!r} does not apply to {task.replace('_', ' ')} models", allowed)
        if task == "language_model" and (config.auxiliary_weight or config.drop_path):
            raise ConfigError("auxiliary_weight" if config.auxiliary_weight else "drop_path",
                              "applies to image models only")
        if task != "language_model":
            for name in ("asgd_nonmono", "tar", "bptt_jitter", "keep_best"):
                if getattr(config, name):
                    raise ConfigError(name, "applies to language models only", (TrainConfig.__dataclass_fields__[
                        name].default,))
        return config

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_cutout(config: TrainConfig, data: ImageData) -> None:
    """Refuse a cutout square that hides every pixel of the dataset's images."""
    if config.cutout >= data.image_size:
        raise ConfigError("cutout", f"a {config.cutout}-pixel square hides the whole {data.image_size}x"
                          f"{data.image_size} image (DARTS' 16 is for 32x32 CIFAR-10)",
                          f"0 (none) or fewer than {data.image_size} pixels")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", ("auto", "cpu"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # An explicit index, so that seeding and RNG forking address the device in use.
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes in bf16 in hardware (CUDA from Ampere on); emulated bf16 is slower than fp32."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass(frozen=True)
class Speed:
    """What one training run does to train fast: its effective settings, all off on CPU."""

    #: fp32, bf16 or fp16 (fp16 with a gradient scaler).
    precision: str = "fp32"
    channels_last: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast type, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def metrics(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last, "pin_memory": self.pin_memory,
                "cudnn_benchmark": self.cudnn_benchmark}


def resolve_speed(config: TrainConfig, device: torch.device, image: bool, bf16: bool | None = None) -> Speed:
    """The settings `config` asks for, as they apply on `device` to an image (else language) model;
    `bf16`: whether the device computes in bf16 natively (default: asked of the device)."""
    mixed = device.type in MIXED_PRECISION_DEVICES
    cuda = device.type == "cuda"
    precision = "fp32"
    if mixed and config.autocast:
        bf16 = bf16_native(device) if bf16 is None else bf16
        if config.autocast_dtype == "bf16" and not bf16:
            raise ConfigError("autocast_dtype", f"{device} does not compute in bf16 natively", ("auto", "fp16"))
        precision = "fp16" if config.autocast_dtype == "fp16" or not bf16 else "bf16"
    return Speed(precision=precision, channels_last=mixed and image and config.channels_last,
                 pin_memory=cuda and config.pin_memory, cudnn_benchmark=cuda and config.cudnn_benchmark)


class TrainingRun:
    """The state of one child's training: its loop, curves and timings."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 device: torch.device, generator: torch.Generator, unit: str, metric: str = "acc"):
        self.model, self.optimizer, self.config, self.device = model, optimizer, config, device
        #: The optimizer the run started with, which a roll-back to before averaging takes up again.
        self.sgd = optimizer
        self.generator = generator
        self.speed = resolve_speed(config, device, image=unit == "images")
        if self.speed.channels_last:
            # In place: the optimizer keeps the same Parameter objects.
            model.to(memory_format=torch.channels_last)
        self.params = [p for p in model.parameters() if p.requires_grad]
        dtype = self.speed.dtype
        self.autocast: Callable[[], contextlib.AbstractContextManager] = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        )
        # fp16's 5-bit exponent flushes small gradients to zero unless the loss is scaled up first.
        # Disabled, the scaler passes everything through unchanged.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.speed.precision == "fp16")
        #: Image curves hold accuracies or, for segmentation (`metric` miou), mean IoUs (higher is
        #: better); text curves perplexities (lower is better).
        self.val_curve: list[float] = []
        self.train_loss_curve: list[float] = []
        self.train_time_s = 0.0
        self.samples = 0
        self.unit = unit
        self.metric = "ppl" if unit == "tokens" else metric
        #: The epoch (counted from 1) after which averaged SGD took over (NT-ASGD); None: not yet.
        self.averaged_from: int | None = None
        #: `keep_best`: the best validation epoch (from 0), its perplexity, weights and optimizer state.
        self.best: dict[str, Any] | None = None
        #: NaN losses survived by going back to the best epoch.
        self.rollbacks = 0

    def metrics(self) -> dict[str, Any]:
        best = max if self.unit == "images" else min
        return {
            "val_curve": self.val_curve,
            "train_loss_curve": self.train_loss_curve,
            f"val_{self.metric}_best": best(self.val_curve) if self.val_curve else None,
            "train_time_s": self.train_time_s,
            f"{self.unit}_per_s": self.samples / self.train_time_s if self.train_time_s else 0.0,
            **self.speed.metrics(),
            # A scale that has collapsed towards 0 says fp16 kept overflowing.
            **({"loss_scale": self.scaler.get_scale()} if self.scaler.is_enabled() else {}),
        }

    def _schedule(self, steps_per_epoch: int) -> list[float]:
        """Per-step annealing from lr to 0 (cosine, or poly), so even a 1-epoch run anneals; or lr
        throughout (constant)."""
        total = self.config.epochs * steps_per_epoch
        if self.config.lr_schedule == "poly":
            return [self.config.lr * (1 - t / total) ** POLY_POWER for t in range(total)]
        if self.config.lr_schedule == "constant":
            return [self.config.lr] * total
        return [0.5 * self.config.lr * (1 + math.cos(math.pi * t / total)) for t in range(total)]

    def _step(self, loss: torch.Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            # The bound is on the true gradients, not the scaled ones.
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        # With fp16 this skips a step whose gradients overflowed; checking costs a host sync per step.
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _end_epoch(self, epoch: int, losses: torch.Tensor, start: float) -> str | None:
        """Book the epoch's time and mean loss; the loss check is the epoch's only
        host sync, so a NaN is reported (by its first step) at the end of its epoch."""
        finite = torch.isfinite(losses)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_time_s += time.perf_counter() - start
        if not bool(finite.all()):
            step = int((~finite).nonzero()[0, 0]) + 1
            return f"nan loss at epoch {epoch + 1} step {step}"
        self.train_loss_curve.append(losses.mean().item())
        return None

    @contextlib.contextmanager
    def _backends(self):
        """cuDNN's autotuner as this run asks, restored afterwards: the flag is process-wide,
        and another component in the process may have chosen otherwise."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.speed.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        # A batch in the weights' layout, else the first convolution converts it on every call anyway.
        return x.contiguous(memory_format=torch.channels_last) if self.speed.channels_last else x

    def fit_images(self, data: ImageData, start_epoch: int = 0, on_epoch: Callable[[int], None] | None = None,
                   stop_epoch: int | None = None) -> str | None:
        """Train epochs `start_epoch` (a resumed run restores the state first) to `stop_epoch`
        (default: all of them); `on_epoch(epoch)` runs after each epoch's validation
        (checkpoints, reports). The schedule always spans `config.epochs`, so stopping early
        and continuing later gives the same network as running straight through."""
        with self._backends():
            return self._fit_images(data, start_epoch, on_epoch, stop_epoch)

    def _fit_images(self, data: ImageData, start_epoch: int, on_epoch: Callable[[int], None] | None,
                    stop_epoch: int | None) -> str | None:
        c, model = self.config, self.model
        steps = data.steps(c.batch_size, c.max_train_batches_per_epoch)
        lrs = self._schedule(steps)
        auxiliary = c.auxiliary_weight > 0
        ramp_drop_path = hasattr(model, "drop_path_prob")
        scheduled = ramp_drop_path and c.drop_path_schedule == "nasnet"
        if ramp_drop_path:
            model.drop_path_by_depth = scheduled
        losses = torch.zeros(steps, device=self.device)
        for epoch in range(start_epoch, c.epochs if stop_epoch is None else stop_epoch):
            if ramp_drop_path:
                model.drop_path_prob = c.drop_path * epoch / c.epochs
            model.train()
            start = time.perf_counter()
            for step, (x, y) in enumerate(data.train_batches(c.batch_size, self.generator, steps)):
                if scheduled:
                    model.drop_path_prob = c.drop_path * min(1.0, (epoch * steps + step) / (c.epochs * steps))
                if c.cutout:
                    x = cutout(x, c.cutout, self.generator, pin=self.speed.pin_memory)
                with self.autocast():
                    out = model(self._images(x))
                    if auxiliary:
                        logits, aux_logits = out
                        loss = data.loss(logits, y) + c.auxiliary_weight * data.loss(aux_logits, y)
                    else:
                        loss = data.loss(out, y)
                self._step(loss, lrs[epoch * steps + step])
                losses[step] = loss.detach()
                self.samples += len(y)
            failure = self._end_epoch(epoch, losses, start)
            if failure:
                return failure
            self.val_curve.append(self.accuracy(data))
            if on_epoch:
                on_epoch(epoch)
        return None

    @torch.inference_mode()
    def accuracy(self, data: ImageData, split: str = "val") -> float:
        """The dataset's metric on `split`: accuracy, or mean IoU for segmentation."""
        self.model.eval()
        meter = data.meter()
        for x, y in data.eval_batches(split, self.config.eval_batch_size):
            with self.autocast():
                meter.add(self.model(self._images(x)), y)
        return meter.value()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (weights, optimizer, RNGs, curves)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "val_curve": self.val_curve, "train_loss_curve": self.train_loss_curve,
                "train_time_s": self.train_time_s, "samples": self.samples, "averaged_from": self.averaged_from,
                "scaler": self.scaler.state_dict(), "best": self.best, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("averaged_from") is not None:
            self._start_averaging(state["averaged_from"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.val_curve, self.train_loss_curve = list(state["val_curve"]), list(state["train_loss_curve"])
        self.train_time_s, self.samples = state["train_time_s"], state["samples"]
        self.best, self.rollbacks = state.get("best"), state.get("rollbacks", 0)
        # A run saved in fp32 or bf16 (or by an older version) has no scale: this run's starts afresh.
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def fit_text(self, data: TextData, start_epoch: int = 0, on_epoch: Callable[[int], None] | None = None,
                 stop_epoch: int | None = None) -> str | None:
        """Like `fit_images`; each epoch starts from a fresh hidden state, so a run resumes exactly.
        With `keep_best`, a NaN loss sends the run back to its best epoch (weights, optimizer) and
        it goes on from the epoch after it; `on_epoch` then sees that epoch again."""
        with self._backends():
            return self._fit_text(data, start_epoch, on_epoch, stop_epoch)

    def _fit_text(self, data: TextData, start_epoch: int, on_epoch: Callable[[int], None] | None,
                  stop_epoch: int | None) -> str | None:
        c, model = self.config, self.model
        train = data.batchify("train", c.batch_size, self.device)
        valid = data.batchify("val", c.eval_batch_size, self.device)
        nominal = len(range(0, len(train) - 1, c.bptt)[:c.max_train_batches_per_epoch])
        lrs = self._schedule(nominal)
        epoch, stop = start_epoch, c.epochs if stop_epoch is None else stop_epoch
        while epoch < stop:
            model.train()
            hidden = model.init_hidden(c.batch_size)
            start = time.perf_counter()
            losses = []
            for step, (at, n, scale) in enumerate(self._windows(len(train))):
                x, y = train[at:at + n], train[at + 1:at + 1 + n]
                # Truncated backprop: carry the state across windows, not its history.
                hidden = _detach(hidden)
                with self.autocast():
                    output, hidden = model(x, hidden)
                    loss = F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1))
                    objective = loss + temporal_activation_penalty(model.raw_output, c.tar)
                self._step(objective, lrs[epoch * nominal + min(step, nominal - 1)] * scale)
                losses.append(loss.detach())
                self.samples += y.numel()
            failure = self._end_epoch(epoch, torch.stack(losses), start)
            if failure:
                if not self._roll_back():
                    return failure
                epoch = self.best["epoch"] + 1
                continue
            self.val_curve.append(self._perplexity(valid))
            if c.keep_best and (self.best is None or self.val_curve[-1] < self.best["ppl"]):
                self._remember_best(epoch)
            if (self.averaged_from is None and c.asgd_nonmono
                    and nonmonotonic(self.val_curve[:-1], self.val_curve[-1], c.asgd_nonmono)):
                self._start_averaging(epoch + 1)
            if on_epoch:
                on_epoch(epoch)
            epoch += 1
        return None

    def _windows(self, length: int) -> Iterator[tuple[int, int, float]]:
        """(start, length, learning-rate factor) of one epoch's windows over a training stream of
        `length` steps: every bptt steps at the full rate; or (`bptt_jitter`) as DARTS' evaluation
        draws them, until the stream's end, each at the rate times its drawn length / bptt (the
        last window may be cut shorter than drawn, as DARTS' get_batch cuts it)."""
        c, cap = self.config, self.config.max_train_batches_per_epoch
        if not c.bptt_jitter:
            for at in range(0, length - 1, c.bptt)[:cap]:
                yield at, min(c.bptt, length - 1 - at), 1.0
            return
        at, count = 0, 0
        while at < length - 2 and (cap is None or count < cap):
            n = jittered_bptt(c.bptt, self.generator)
            yield at, min(n, length - 1 - at), n / c.bptt
            at, count = at + n, count + 1

    def _remember_best(self, epoch: int) -> None:
        """The weights as validation scored them (the averages, once averaging) and the optimizer:
        where DARTS' evaluation saves its model.pt and optimizer.pt."""
        with self._averaged_weights():
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best = {"epoch": epoch, "ppl": self.val_curve[-1], "model": weights,
                     "optimizer": copy.deepcopy(self.optimizer.state_dict()), "averaged_from": self.averaged_from}

    def _roll_back(self) -> bool:
        """Back to the best epoch after a NaN loss, as DARTS' evaluation reloads model.pt and
        optimizer.pt: its weights, its optimizer (SGD or averaged SGD with its averages), the
        curves up to it. The RNGs go on, so the epochs after it draw other dropout masks. False
        where there is nothing to go back to, or the NaNs came back MAX_ROLLBACKS times."""
        if self.best is None or self.rollbacks >= MAX_ROLLBACKS:
            return False
        self.rollbacks += 1
        best = self.best
        self.model.load_state_dict(best["model"])
        if best["averaged_from"] is None:
            self.optimizer = self.sgd
        else:
            self._start_averaging(best["averaged_from"])
        self.optimizer.load_state_dict(copy.deepcopy(best["optimizer"]))
        self.averaged_from = best["averaged_from"]
        kept = best["epoch"] + 1
        self.val_curve, self.train_loss_curve = self.val_curve[:kept], self.train_loss_curve[:kept]
        return True

    def _start_averaging(self, epoch: int) -> None:
        """Continue with averaged SGD from the current weights (DARTS: t0 = 0, lambda = 0)."""
        group = self.optimizer.param_groups[0]
        self.optimizer = torch.optim.ASGD(self.params, lr=self.config.lr, t0=0, lambd=0.0,
                                          weight_decay=group["weight_decay"])
        self.averaged_from = epoch

    @contextlib.contextmanager
    def _averaged_weights(self):
        """The averaged weights in the model while the block runs (NT-ASGD's evaluation)."""
        if self.averaged_from is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p in self.params:
                if "ax" in self.optimizer.state.get(p, {}):
                    p.copy_(self.optimizer.state[p]["ax"])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, saved):
                    p.copy_(w)

    def perplexity(self, data: TextData, split: str, batch_size: int | None = None) -> float:
        """Perplexity on a split of `data` in `batch_size` columns (default: the eval batch size):
        of the best epoch's weights where the run keeps them, else of the current ones (averaged,
        once averaging)."""
        stream = data.batchify(split, batch_size or self.config.eval_batch_size, self.device)
        if self.best is None:
            return self._perplexity(stream)
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.best["model"])
        try:
            return self._stream_perplexity(stream)
        finally:
            self.model.load_state_dict(current)

    def _perplexity(self, valid: torch.Tensor) -> float:
        with self._averaged_weights():
            return self._stream_perplexity(valid)

    @torch.inference_mode()
    def _stream_perplexity(self, valid: torch.Tensor) -> float:
        self.model.eval()
        hidden = self.model.init_hidden(valid.shape[1])
        total = torch.zeros((), device=self.device)
        for at in range(0, len(valid) - 1, self.config.bptt):
            x, y = _window(valid, at, self.config.bptt)
            # In fp32, not under autocast: the reward is 80 / exp(mean loss)^2, and logits rounded to
            # bf16 raised the measured perplexity of small PTB children by 0.2 to 2 % (CPU autocast),
            # where training under it left their losses unchanged. Validation is a small share of the time.
            output, hidden = self.model(x, hidden)
            total += F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1), reduction="sum")
        mean_loss = total.item() / ((len(valid) - 1) * valid.shape[1])
        # exp overflows past ~709; a NaN loss also fails the comparison and scores as infinite.
        return math.exp(mean_loss) if mean_loss < 700 else math.inf


def jittered_bptt(bptt: int, generator: torch.Generator) -> int:
    """A window's length as DARTS' evaluation draws it: int(N(bptt, 5)), or int(N(bptt / 2, 5)) one
    time in BPTT_HALF_EVERY, kept within BPTT_SHORTEST .. bptt + BPTT_LONGER."""
    mean = bptt if float(torch.rand((), generator=generator)) * BPTT_HALF_EVERY >= 1 else bptt / 2
    drawn = int(mean + BPTT_STD * float(torch.randn((), generator=generator)))
    return min(max(BPTT_SHORTEST, drawn), bptt + BPTT_LONGER)


def nonmonotonic(before: list[float], value: float, n: int) -> bool:
    """NT-ASGD's trigger (AWD-LSTM, DARTS' rnn/train.py): `value` is worse than the best of the
    epochs before the last `n` of `before` (the curve up to the epoch before this one), with more
    than `n` epochs in `before`."""
    return len(before) > n and value > min(before[:-n])


def temporal_activation_penalty(outputs: torch.Tensor | None, beta: float) -> torch.Tensor | float:
    """AWD-LSTM's TAR: beta x the mean squared difference of consecutive outputs [T, B, H] (the
    last layer's, before the output dropout); 0 without outputs or beta."""
    if not beta or outputs is None:
        return 0.0
    return beta * (outputs[1:] - outputs[:-1]).pow(2).mean()


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, pin: bool = False) -> torch.Tensor:
    """Zero one size x size square per image, centred anywhere (it may hang over the edge),
    as DeVries & Taylor and DARTS' evaluation do. Zero is the mean after normalisation.
    The centres come from the CPU `generator` (the same squares on any device); `pin` copies
    them to the GPU from pinned memory without waiting, where a pageable copy syncs the step."""
    b, _, h, w = x.shape
    centres = torch.randint(0, h, (b, 1, 1), generator=generator), torch.randint(0, w, (b, 1, 1), generator=generator)
    cy, cx = (to_device(c, x.device, pin) for c in centres)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~inside)[:, None].to(x.dtype)


def _window(stream: torch.Tensor, at: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs stream[at:at+n] and their next tokens, n = bptt or what is left."""
    n = min(bptt, len(stream) - 1 - at)
    return stream[at:at + n], stream[at + 1:at + 1 + n]


def _detach(hidden):
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return type(hidden)(_detach(h) for h in hidden)
