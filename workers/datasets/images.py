"""Image data (classification and segmentation): splits served as normalised batches, from memory
or streamed from disk.

Every image set is a `Reader` of raw samples by position (arrays in memory or memory-mapped, or
image files decoded on demand) and the positions of its splits. `image_data` turns that into
`ImageData`:
- memory: every sample the splits use is read once, normalised once and held as one tensor on
  the training device; a batch is one gather (no DataLoader, no per-sample Python: children are
  small and trained many times per process, benchmarks/train_throughput.py);
- disk: a batch is read when it is needed, files decoded in `loader_workers` DataLoader processes,
  and normalised on the device; a worker holds the file list and a few batches in flight, whatever
  the size of the set.
`stream` auto picks memory while the decoded set stays under MEMORY_LIMIT_MB. Both give the same
batches for the same seed: the order, the crops and the flips come from the caller's generator.

Normalisation is per channel, with the statistics of the training split (of a seeded sample of
up to STATS_SAMPLE of its images when streaming), so that validation stays unseen; the raw scale
is the stored one (0..255 for image files). `preprocessing()` says all of it for exports.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raynas.common import ConfigError, DataError
from raynas.workers.datasets.base import CLASSIFICATION, MEMORY_LIMIT_MB, SEGMENTATION, Data

#: The label of unlabelled pixels in segmentation masks (PASCAL VOC's boundary band, Cityscapes' void).
IGNORE_INDEX = 255
#: Zero padding of the random crop (CIFAR-10's usual 4 pixels).
CROP_PADDING = 4
#: Training images whose statistics normalise a streamed set.
STATS_SAMPLE = 2048


class Reader(ABC):
    """Raw samples by position: an image [C, H, W] in its stored scale and dtype, and its label
    (an int) or mask ([H, W] int64)."""

    #: Whether decoding a sample costs enough to spread over loader processes (image files).
    decodes: bool = False

    def __init__(self, channels: int, size: tuple[int, int], dtype: str):
        self.channels, self.size, self.dtype = channels, tuple(size), dtype

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, i: int) -> tuple[np.ndarray, Any]: ...

    def read_batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [self.read(int(i)) for i in positions]
        return (torch.from_numpy(np.stack([x for x, _ in samples])),
                torch.as_tensor(np.stack([np.asarray(y) for _, y in samples]), dtype=torch.int64))

    def decoded_mb(self, n: int) -> float:
        """MiB that `n` samples take once normalised (float32)."""
        return n * self.channels * self.size[0] * self.size[1] * 4 / 2**20


class ArrayReader(Reader):
    """Samples of NCHW arrays (in memory, or memory-mapped .npy files) and their labels or masks,
    one or more parts (a set's splits) laid end to end, never concatenated (a memory map stays one)."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]):
        x = parts[0][0]
        super().__init__(x.shape[1], x.shape[2:], str(x.dtype))
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(y) for _, y in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        x, y = self.parts[part]
        return np.asarray(x[i - self.offsets[part]]), y[i - self.offsets[part]]

    def read_batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-indexing read per part, in file order; a memory map reads only these rows.
        x0, y0 = self.parts[0]
        x = np.empty((len(positions), *x0.shape[1:]), dtype=x0.dtype)
        y = np.empty((len(positions), *np.shape(y0)[1:]), dtype=np.int64)
        part_of = np.searchsorted(self.offsets, positions, side="right") - 1
        for part in np.unique(part_of):
            mine = np.flatnonzero(part_of == part)
            local = positions[mine] - self.offsets[part]
            order = np.argsort(local, kind="stable")
            xs, ys = self.parts[part]
            x[mine[order]] = xs[local[order]]
            y[mine[order]] = ys[local[order]]
        return torch.from_numpy(x), torch.from_numpy(y)


class _Samples(torch.utils.data.Dataset):
    """A reader as a map-style torch Dataset, for DataLoader processes."""

    def __init__(self, reader: Reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.reader.read(i)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.as_tensor(y, dtype=torch.int64)


def read_batches(reader: Reader, batches: Sequence[np.ndarray], workers: int, pin: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The raw samples of each list of positions in `batches`, in order: decoded by `workers`
    loader processes where the reader decodes files, else read here."""
    if not batches:
        return
    if workers == 0 or not reader.decodes:
        for positions in batches:
            yield reader.read_batch(positions)
        return
    loader = torch.utils.data.DataLoader(_Samples(reader), batch_sampler=[b.tolist() for b in batches],
                                         num_workers=min(workers, len(batches)), pin_memory=pin)
    try:
        yield from loader
    except DataError as exc:
        # Rebuilt from the loader process's text, which holds its traceback: keep the last line's message.
        raise DataError(str(exc).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


class MemorySource:
    """Every sample normalised once, held as one tensor on the training device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device) -> MemorySource:
        return self if self.x.device == device else MemorySource(self.x.to(device), self.y.to(device))

    def batches(self, positions: np.ndarray, batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, ...]]:
        at = torch.from_numpy(positions).to(self.x.device)
        for step in range(steps):
            idx = at[step * batch_size:(step + 1) * batch_size]
            yield self.x[idx], self.y[idx]


class DiskSource:
    """Samples read from the reader batch by batch and normalised on the training device."""

    def __init__(self, reader: Reader, mean: torch.Tensor, std: torch.Tensor, workers: int,
                 device: torch.device | None = None):
        device = device or torch.device("cpu")
        self.reader, self.workers, self.device = reader, workers, device
        self.mean, self.std = mean.to(device), std.to(device)

    def to(self, device: torch.device) -> DiskSource:
        return self if self.device == device else DiskSource(self.reader, self.mean, self.std, self.workers, device)

    def batches(self, positions: np.ndarray, batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, ...]]:
        lists = [positions[s * batch_size:(s + 1) * batch_size] for s in range(steps)]
        cuda = self.device.type == "cuda"
        for x, y in read_batches(self.reader, lists, self.workers, pin=cuda):
            x = x.to(self.device, non_blocking=cuda)
            yield normalise(x, self.mean, self.std), y.to(self.device, non_blocking=cuda)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw images [N, C, H, W] as the network's inputs; exported models apply the same formula."""
    return (x.float() - mean[:, None, None]) / std[:, None, None]


@dataclass(frozen=True, eq=False)
class ImageData(Data):
    """Images and labels (classification) or masks (segmentation), served by split positions."""

    name: str
    task: str
    source: MemorySource | DiskSource
    #: Positions in the source of each split: train, val, and test where the source has one.
    splits: dict[str, np.ndarray]
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: What a raw input is: dtype, channels, height, width, and the resize that made it so.
    raw: dict[str, Any]
    augment: bool = False
    ignore_index: int = IGNORE_INDEX

    @property
    def metric(self) -> str:
        """What `meter` measures, as reports name it (val_acc, val_miou)."""
        return "acc" if self.task == CLASSIFICATION else "miou"

    @property
    def in_channels(self) -> int:
        return self.raw["channels"]

    @property
    def image_size(self) -> int:
        """The width (classification sets are square)."""
        return self.raw["width"]

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def has_test(self) -> bool:
        return "test" in self.splits

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.splits["train"]), "val": len(self.splits["val"]),
                "test": len(self.splits["test"]) if self.has_test else 0}

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "in_channels": self.in_channels,
                "image_size": [self.raw["height"], self.raw["width"]], "num_classes": self.num_classes,
                "augment": self.augment, "sizes": self.sizes,
                "stored": "memory" if isinstance(self.source, MemorySource) else "disk"}

    def preprocessing(self) -> dict[str, Any]:
        return {"task": self.task, "input": dict(self.raw), "mean": list(self.mean), "std": list(self.std),
                "class_names": list(self.class_names),
                **({"ignore_index": self.ignore_index} if self.task == SEGMENTATION else {})}

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (segmentation: per pixel, the ignore label left out)."""
        if self.task == SEGMENTATION:
            return F.cross_entropy(logits, y, ignore_index=self.ignore_index)
        return F.cross_entropy(logits, y)

    def meter(self) -> Accuracy | MeanIoU:
        """A fresh accumulator of this data's metric over batches (`add`, then `value`)."""
        return Accuracy() if self.task == CLASSIFICATION else MeanIoU(self.num_classes, self.ignore_index)

    def to(self, device: torch.device | str) -> ImageData:
        """The same data with its batches on `device` (self when already there)."""
        source = self.source.to(torch.device(device))
        return self if source is self.source else dataclasses.replace(self, source=source)

    def whole_training_set(self) -> ImageData:
        """The final training's data, as DARTS' train.py has it: train and validation splits
        together train, and the test split is what every epoch reports (as `val`). Data without a
        test split (digits) is returned as it is: its validation split stays held out."""
        if not self.has_test:
            return self
        splits = self.splits
        return dataclasses.replace(self, splits={"train": np.concatenate([splits["train"], splits["val"]]),
                                                 "val": splits["test"], "test": splits["test"]})

    def halves(self, portion: float) -> tuple[ImageData, ImageData]:
        """The whole training set (train and validation splits, both from the official training
        set) cut in two, as one-shot searches use it: the first `portion` is the first half's
        `train` split (the weights'), the rest the second's (the architecture's). Both keep the
        augmentation, as DARTS applies its training transform to both."""
        pool = np.concatenate([self.splits["train"], self.splits["val"]])
        n = int(len(pool) * portion)
        if not 0 < n < len(pool):
            raise ConfigError("train_portion", f"leaves an empty half of {len(pool)} training samples")
        return tuple(dataclasses.replace(self, splits={**self.splits, "train": part})
                     for part in (pool[:n], pool[n:]))

    def steps(self, batch_size: int, max_batches: int | None = None, split: str = "train") -> int:
        """Batches in one epoch of `split`."""
        steps = -(-len(self.splits[split]) // batch_size)
        return min(steps, max_batches) if max_batches else steps

    def train_batches(self, batch_size: int, generator: torch.Generator, max_batches: int | None = None,
                      split: str = "train") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented (x, y) batches of `split`, the last possibly short.
        All randomness comes from `generator` (a CPU generator: the same seed gives the same
        batches on any device and from memory or disk)."""
        positions = self.splits[split]
        order = torch.randperm(len(positions), generator=generator).numpy()
        for x, y in self.source.batches(positions[order], batch_size, self.steps(batch_size, max_batches, split)):
            if self.augment:
                x = crop_and_flip(x, CROP_PADDING, generator)
            yield x, y

    def eval_batches(self, split: str = "val", batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`split` in order, in batches, without augmentation."""
        if split not in self.splits:
            raise ConfigError("split", f"the {self.name} dataset has no {split} split", tuple(self.splits))
        positions = self.splits[split]
        yield from self.source.batches(positions, batch_size, -(-len(positions) // batch_size))

    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The whole of `split`, in order, as one (x, y) pair (a streamed split is read whole)."""
        n = len(self.splits[split])
        return next(self.eval_batches(split, max(n, 1)))

    def sample_input(self) -> torch.Tensor:
        """One validation image as a batch of one (for FLOPs and trial builds)."""
        return next(self.source.batches(self.splits["val"][:1], 1, 1))[0]


class Accuracy:
    """The share of right predictions, counted on the device; `value` is the one host sync."""

    def __init__(self):
        self.correct: torch.Tensor | int = 0
        self.total = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.correct = self.correct + (logits.argmax(1) == y).sum()
        self.total += y.numel()

    def value(self) -> float:
        return int(self.correct) / self.total if self.total else 0.0


class MeanIoU:
    """Mean intersection-over-union from a confusion matrix counted on the device; pixels with
    the ignore label are left out, and classes absent from both truth and prediction do not
    count in the mean."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        k = self.num_classes
        keep = y != self.ignore_index
        counts = torch.bincount(y[keep] * k + logits.argmax(1)[keep], minlength=k * k)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def value(self) -> float:
        if self.confusion is None:
            return 0.0
        return mean_iou(self.confusion.view(self.num_classes, self.num_classes).cpu())


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU of a [truth, prediction] confusion matrix, over the classes that occur in either."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    return float((hits[present] / union[present]).mean()) if present.any() else 0.0


def image_data(name: str, task: str, reader: Reader, splits: dict[str, np.ndarray], num_classes: int,
               class_names: Sequence[str], *, seed: int, augment: bool = False, stream: str = "memory",
               workers: int = 0, resize: str | None = None, ignore_index: int = IGNORE_INDEX) -> ImageData:
    """`reader`'s samples at `splits` as ImageData, held in memory or streamed (`stream`: memory,
    disk, or auto by the decoded size of the samples the splits use)."""
    used = np.unique(np.concatenate(list(splits.values())))
    if stream == "auto":
        stream = "memory" if reader.decoded_mb(len(used)) <= MEMORY_LIMIT_MB else "disk"
    # No layout: what an export takes is said by its inputs (NHWC, as decoders give images), and the
    # NCHW tensors held here are the training's own business.
    raw = {"dtype": reader.dtype, "channels": reader.channels, "height": reader.size[0], "width": reader.size[1],
           "resize": resize}
    fields = dict(name=name, task=task, num_classes=num_classes, class_names=tuple(class_names), raw=raw,
                  augment=augment, ignore_index=ignore_index)
    if stream == "memory":
        # The samples the splits use, read once; positions renumbered into the held tensor.
        batch = 4096
        parts = list(read_batches(reader, [used[i:i + batch] for i in range(0, len(used), batch)], workers))
        x = torch.cat([p[0] for p in parts]).float()
        y = torch.cat([p[1] for p in parts])
        at = {int(p): i for i, p in enumerate(used)}
        local = {k: np.fromiter((at[int(p)] for p in v), dtype=np.int64, count=len(v)) for k, v in splits.items()}
        mean, std = _statistics(x[torch.from_numpy(local["train"])])
        # In place (the same arithmetic as `normalise`): a large set is not held twice.
        x.sub_(mean[:, None, None]).div_(std[:, None, None])
        return ImageData(source=MemorySource(x, y), splits=local,
                         mean=tuple(mean.tolist()), std=tuple(std.tolist()), **fields)
    sample = np.random.default_rng(seed).permutation(splits["train"])[:STATS_SAMPLE]
    x = torch.cat([b[0] for b in read_batches(reader, [np.sort(sample)], workers)]).float()
    mean, std = _statistics(x)
    return ImageData(source=DiskSource(reader, mean, std, workers), splits=splits,
                     mean=tuple(mean.tolist()), std=tuple(std.tolist()), **fields)


def _statistics(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)).clamp_min(1e-6)


def to_device(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    """A small host tensor drawn for this step (crops, flips, cutout squares) on `device`; `pin` (on
    CUDA) copies it from pinned memory without waiting, where a pageable copy makes the step wait."""
    return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)


def crop_and_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch plus horizontal flip, as one gather.

    Zero padding happens after normalisation (the mean colour, not black), which
    avoids un-normalising every batch. A flip is a reversed column index, so
    crop and flip together cost a single gather over the flattened planes.
    """
    b, c, h, w = x.shape
    width = w + 2 * padding
    planes = F.pad(x, (padding, padding, padding, padding)).reshape(b * c, -1)
    offsets = to_device(torch.randint(0, 2 * padding + 1, (2, b), generator=generator), x.device, x.is_cuda)
    flip = to_device(torch.rand(b, generator=generator) < 0.5, x.device, x.is_cuda)
    cols = torch.arange(w, device=x.device)
    cols = offsets[1, :, None] + torch.where(flip[:, None], cols.flip(0), cols)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return planes.gather(1, index.reshape(b * c, h * w)).reshape(b, c, h, w)
