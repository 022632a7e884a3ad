"""How a search's data reaches its supernet: a `Feed` per kind of data, so that the searches'
epochs, evaluations and rankings are written once. `ImageFeed` serves images (classification,
segmentation); rnn.py's `TextFeed` serves token streams.

Image data as the papers use it: the whole official training set (our loader's train and
validation splits together) is halved, the first `train_portion` trains the weights and the rest
the architecture (CIFAR-10: 25k/25k), and batches of both halves get the dataset's augmentation
(random crop with padding 4 and horizontal flip on cifar10), as the DARTS code applies its
training transform to both. The supernet's validation figures, and the re-scoring of an
architecture, read the architecture's half un-augmented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from raynas.workers.datasets import CLASSIFICATION
from raynas.workers.datasets.images import ImageData
from raynas.workers.oneshot.supernet import Path, Supernet


class Feed(Protocol):
    """A search's data as the supernet takes it."""

    #: What throughput counts (`<unit>_per_s`): images, tokens.
    unit: str
    #: What validation measures, as reports name it (`val_<metric>`): acc, miou, ppl.
    metric: str
    #: -1 where a higher `metric` is better (accuracy, mean IoU), 1 where a lower one is
    #: (perplexity): multiplied in, figures sort best first.
    sign: int
    #: Weight steps per epoch.
    steps: int
    #: Its own state in the search's checkpoint (where it is in a stream), by name.
    parts: dict[str, Any]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The weights' loss on a batch (the architecture's step has its own)."""

    def count(self, y: torch.Tensor) -> int:
        """The `unit`s in a batch of targets."""

    def lr_scale(self, x: Any) -> float:
        """The factor of the learning rate for a step on batch `x` (PTB: its window's length / 35)."""

    def batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        """One epoch of the weights' batches; the architecture's batches start afresh with it."""

    def arch_batch(self, step: Callable[[Any, torch.Tensor], None]) -> None:
        """`step` on the architecture's next batch."""

    def training(self, correct: torch.Tensor | int, seen: int) -> dict[str, float]:
        """What an epoch's report says of training beyond its loss, from its right predictions."""

    def assess(self, model: Supernet) -> dict[str, float]:
        """The supernet's validation loss and `val_<metric>`, mixed by its weights."""

    def rescore(self, model: Supernet, path: Any) -> float:
        """One architecture's `metric` with the shared weights, on the whole of the architecture's data."""

    def scorer(self, batches: int) -> Callable[[Supernet, Any], float]:
        """An architecture's `metric` on `batches` minibatches of the architecture's data: fresh
        ones per call, from a stream that starts with the scorer (one per ranking block)."""


def evaluate(model: Supernet, data: ImageData, batch_size: int, path: Path | None = None, split: str = "train"
             ) -> tuple[float, float]:
    """Mean loss per image and the data's metric (accuracy, mean IoU) of the supernet (or of one
    path through it) in eval mode, on `split` of `data` (a search scores on the architecture
    half's `train` split)."""
    model.eval()
    meter, loss, seen = data.meter(), 0.0, 0
    with torch.no_grad():
        for x, y in data.eval_batches(split, batch_size):
            logits = model(x) if path is None else model(x, path)
            loss += data.loss(logits, y).item() * len(y)
            meter.add(logits, y)
            seen += len(y)
    model.train()
    return loss / seen, meter.value()


def endless(data: ImageData, batch_size: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches, reshuffled whenever the split runs out: the architecture's half may hold
    one sample fewer than the weights' half, and it must not run dry before it."""
    while True:
        yield from data.train_batches(batch_size, generator)


class ImageFeed:
    """Images, the whole training set halved (weights, architecture), both halves augmented."""

    unit = "images"
    sign = -1

    def __init__(self, data: ImageData, cfg: Any, model: Supernet, generator: torch.Generator,
                 device: torch.device):
        self.weights, self.arch = data.to(device).halves(cfg.train_portion)
        self.metric = data.metric
        self.loss = data.loss
        self.generator, self.batch_size, self.max_batches = generator, cfg.batch_size, cfg.max_batches_per_epoch
        self.steps = self.weights.steps(cfg.batch_size, cfg.max_batches_per_epoch)
        self.parts: dict[str, Any] = {}
        self.classifies = data.task == CLASSIFICATION
        self._arch_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def count(self, y: torch.Tensor) -> int:
        return len(y)

    def lr_scale(self, x: torch.Tensor) -> float:
        return 1.0

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Both draw from the one generator as they are consumed, weights' batch first.
        self._arch_batches = endless(self.arch, self.batch_size, self.generator)
        return self.weights.train_batches(self.batch_size, self.generator, self.max_batches)

    def arch_batch(self, step: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        step(*next(self._arch_batches))

    def training(self, correct: torch.Tensor | int, seen: int) -> dict[str, float]:
        # A segmentation batch's right predictions are pixels, its size images: no accuracy to report.
        return {"train_acc": float(correct) / max(seen, 1)} if self.classifies else {}

    def assess(self, model: Supernet) -> dict[str, float]:
        loss, value = evaluate(model, self.arch, 2 * self.batch_size)
        return {"val_loss": loss, f"val_{self.metric}": value}

    def rescore(self, model: Supernet, path: Path) -> float:
        return evaluate(model, self.arch, 2 * self.batch_size, path)[1]

    def scorer(self, batches: int) -> Callable[[Supernet, Path], float]:
        # Minibatches as they come (shuffled, augmented: the reference's validation queue shares
        # the training transform), in eval mode with the supernet's running BN statistics.
        stream = endless(self.arch, self.batch_size, self.generator)

        def score(model: Supernet, path: Path) -> float:
            model.eval()
            meter = self.arch.meter()
            for x, y in [next(stream) for _ in range(batches)]:
                meter.add(model(x, path), y)
            return meter.value()

        return score
