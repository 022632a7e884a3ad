"""The dataset interface: a plug-in names a source of data, declares its task and typed options,
and loads it into splits that the training loops read batch by batch.

Two types:
- `Dataset`, the plug-in: a registered name (`image-folder`, `cifar10`, ...), the task it serves
  (classification, segmentation, language_model), its options (`dataset_options` in a spec),
  what its path must hold, and `load(seed)`. An instance is a cheap, picklable reference (name,
  path, typed options) that a search's plan carries to every worker; nothing is read until
  `load`.
- `Data`, what `load` returns: `ImageData` (workers/datasets/images.py) or `TextData`
  (workers/datasets/text.py), whose splits the training loops, one-shot searches and exports
  consume through one API (batches, sizes, preprocessing), whether the samples sit in memory
  or stream from disk.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from raynas.common import ConfigError
from raynas.common.options import option, parse_options

CLASSIFICATION, SEGMENTATION, LANGUAGE_MODEL = "classification", "segmentation", "language_model"
TASKS = (CLASSIFICATION, SEGMENTATION, LANGUAGE_MODEL)
#: The most samples (images, or tokens of text) a spec may keep for training.
MAX_TRAIN = 10_000_000


class Data(ABC):
    """A loaded dataset: its splits (train, val, and test where the source has one) and what a
    model trained on it must know (task, input, classes or vocabulary, normalisation)."""

    name: str
    #: One of TASKS.
    task: str

    @property
    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Samples (images) or tokens per split."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Plain-data description for logs and run directories."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """What turns raw inputs into this data's model inputs, as plain data: an exported model
        carries it, so that raw inputs in give the trained accuracy out."""


@dataclass(frozen=True)
class ImageOptions:
    """Options of every image dataset (classification and segmentation)."""

    val_fraction: float | None = option(
        None, "share of the training images held out for validation where the source has no validation split "
              "(default: the dataset's, 0.1 for most)")
    max_train: int | None = option(None, "keep only the first N training samples of the seeded order",
                                   most=MAX_TRAIN)
    augment: bool | None = option(None, "random crop (zero padding 4) and horizontal flip of training batches, "
                                        "classification only (default: on for cifar10, off otherwise)")

    def __post_init__(self):
        if self.val_fraction is not None and (isinstance(self.val_fraction, bool)
                                              or not isinstance(self.val_fraction, (int, float))
                                              or not 0 < self.val_fraction < 1):
            raise ConfigError("val_fraction", f"must be strictly between 0 and 1, got {self.val_fraction!r}")
        if self.max_train is not None and (isinstance(self.max_train, bool) or not isinstance(self.max_train, int)
                                           or self.max_train < 1):
            raise ConfigError("max_train", f"must be a positive integer or None, got {self.max_train!r}")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise ConfigError("augment", f"must be true or false, got {self.augment!r}")


STREAM_MODES = ("auto", "memory", "disk")
#: `stream` auto keeps a set in memory up to this many decoded MiB, and streams a larger one.
MEMORY_LIMIT_MB = 256


@dataclass(frozen=True)
class StreamOptions(ImageOptions):
    """Options of the image sets read from files, which may stream from disk."""

    stream: str = option("auto", f"memory (decode every image once, hold them), disk (decode each batch in loader "
                                 f"processes, bounded memory) or auto (memory up to {MEMORY_LIMIT_MB} MiB "
                                 f"decoded)", choices=STREAM_MODES)
    loader_workers: int = option(2, "processes decoding batches when streaming from disk (0: in the training "
                                    "process)", most=64)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) \
                or self.loader_workers < 0:
            raise ConfigError("loader_workers", f"must be a non-negative integer, got {self.loader_workers!r}")


@dataclass(frozen=True)
class TextOptions:
    """Options of every text corpus."""

    max_train: int | None = option(None, "keep only the first N training tokens", most=MAX_TRAIN)

    def __post_init__(self):
        if self.max_train is not None and (isinstance(self.max_train, bool) or not isinstance(self.max_train, int)
                                           or self.max_train < 1):
            raise ConfigError("max_train", f"must be a positive integer or None, got {self.max_train!r}")


class Dataset(ABC):
    """A dataset plug-in: a registered name, its task, its options, and how to load it.

    Subclasses set `name`, `task`, `summary` (one line for help texts), `Options` (a frozen
    dataclass of `option` fields), and `layout`: what `path` must hold, or "" for a set that
    ships with the project or a dependency and takes no path. Constructing one checks the
    options and the path's presence without reading anything; `load` reads.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = CLASSIFICATION
    summary: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    Options: ClassVar[type] = ImageOptions
    #: Share of the training images that validates when the source has no validation split.
    val_fraction: ClassVar[float] = 0.1
    #: Whether training batches are cropped and flipped unless the options say otherwise.
    augments: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike | None = None, options: Mapping[str, Any] | Any = None):
        if isinstance(options, self.Options):
            self.options = options
        else:
            self.options = parse_options(self.Options, options, "dataset_options", f"the {self.name} dataset")
        self.path = None if path is None else str(path)
        self.check()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, options={self.options!r})"

    @property
    def bundled(self) -> bool:
        return not self.layout

    def check(self) -> None:
        """Refuse what can be refused without reading: a path given to a bundled set, a missing
        one, options the task cannot honour."""
        if self.bundled and self.path is not None:
            raise ConfigError("data_path", f"{self.name} ships with the project and takes no --data path")
        if not self.bundled and self.path is None:
            raise ConfigError("data_path", f"the {self.name} dataset needs --data PATH: {self.layout}")
        augment = getattr(self.options, "augment", None)
        if augment and self.task != CLASSIFICATION:
            raise ConfigError("dataset_options.augment", f"crop and flip apply to classification sets; {self.name} "
                              f"is a {self.task} set", (False,))

    def root(self) -> Path:
        """The path, which must exist."""
        path = Path(self.path)
        if not path.exists():
            raise ConfigError("data_path", f"not found: {path}; expected {self.layout}")
        return path

    @abstractmethod
    def load(self, seed: int = 0) -> Data:
        """Read the data; `seed` draws the train/validation split where the source has none."""

    def fingerprint(self) -> str | None:
        """What every node must see alike (a digest of the files' names and sizes), so that a
        worker on a node with other data refuses to train; None where there is nothing to compare."""
        if self.bundled:
            return None
        return files_fingerprint(self.root())

    def describe(self) -> dict[str, Any]:
        """The reference as plain data: name, path, options."""
        from dataclasses import asdict

        return {"name": self.name, "task": self.task, "path": self.path, "options": asdict(self.options)}


def files_fingerprint(path: Path) -> str:
    """A digest of every file's relative name and size under `path` (or of the file itself): cheap
    (no file is read), and the same on every node that mounts the same data."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(f"{path.name}\0{path.stat().st_size}".encode())
        return digest.hexdigest()[:16]
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def split_indices(n: int, seed: int, val_fraction: float, max_train: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions of `n` training samples: a permutation drawn from `seed`, its
    first `val_fraction` validates, the rest trains, cut to `max_train`."""
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise ConfigError("dataset_options.val_fraction",
                          f"{val_fraction} of {n} training samples leaves an empty split")
    order = np.random.default_rng(seed).permutation(n)
    train = order[n_val:]
    return (train if max_train is None else train[:max_train]), order[:n_val]


def split_positions(counts: Mapping[str, int], seed: int, val_fraction: float, max_train: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Positions of each split in a source that lays the given splits end to end, in the order of
    `counts` (samples per split: train, and val or test where the source has them). Without a val
    split, a seeded `val_fraction` of the training samples validates (`split_indices`); the
    training positions are cut to `max_train` either way."""
    offsets = np.cumsum([0, *counts.values()])
    at = {s: np.arange(offsets[i], offsets[i + 1]) for i, s in enumerate(counts)}
    if "val" not in at:
        train, val = split_indices(len(at["train"]), seed, val_fraction, max_train)
        at["train"], at["val"] = at["train"][train], at["train"][val]
    elif max_train is not None:
        at["train"] = at["train"][:max_train]
    return at
