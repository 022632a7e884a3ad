"""Datasets that need no network, held in memory as tensors.

Children are small and evaluated many times per process, so a dataset is
loaded once, normalised once, and served by index tensors: no DataLoader, no
worker processes, no per-sample Python (see benchmarks/train_throughput.py).

Names: `digits` (scikit-learn's bundled 8x8 digits, the default), `mnist`,
`cifar10` (image classification) and `ptb` (word-level language modelling).

Data files are never unpickled freely: the CIFAR-10 python batches are read by an
unpickler that builds nothing but the dicts, lists, bytes and numeric arrays they hold,
and the search service reads datasets only under the roots its operator allows
(`check_data_root`).
"""

from __future__ import annotations

import codecs
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from raynas.common import ConfigError
from raynas.workers import segdata

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

#: Segmentation sets (workers/segdata.py): digits-seg (composed from the digits), cityscapes, voc.
SEGMENTATION_DATASETS = ("digits-seg", "cityscapes", "voc")
DATASETS = ("digits", "mnist", "cifar10", "ptb", *SEGMENTATION_DATASETS)


def dataset_kind(name: str) -> str:
    """What `name` holds: image (classification), segmentation or text."""
    return "text" if name == "ptb" else "segmentation" if name in SEGMENTATION_DATASETS else "image"

#: Validation share of the official training set (Zoph & Le held out 5k of CIFAR-10's 50k).
DEFAULT_VAL_FRACTION = {"digits": 0.2, "mnist": 0.1, "cifar10": 0.1}
CIFAR10_PADDING = 4

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_LAYOUT = "an .npz file (or a folder holding exactly one) with arrays x_train, y_train, x_test, y_test"
EXPECTED_LAYOUT = {
    "mnist": f"{_NPZ_LAYOUT}; x_* of shape (N, 28, 28) uint8",
    "cifar10": (
        "the CIFAR-10 python batches folder (data_batch_1 .. data_batch_5 and test_batch), or "
        f"{_NPZ_LAYOUT}; x_* of shape (N, 32, 32, 3) uint8"
    ),
    "ptb": "a folder with ptb.train.txt, ptb.valid.txt and ptb.test.txt",
    **segdata.EXPECTED_LAYOUT,
}
_PTB_FILES = {"train": "ptb.train.txt", "val": "ptb.valid.txt", "test": "ptb.test.txt"}
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class Dataset(ABC):
    """What every dataset tells the evaluator: its name, kind and split sizes."""

    name: str
    kind: ClassVar[str]

    @property
    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Samples (images) or tokens per split: train, val, test."""

    @abstractmethod
    def info(self) -> dict:
        """Plain-data description for logs and run directories."""


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


@dataclass(frozen=True, eq=False)
class ImageDataset(Dataset):
    """Normalised float32 NCHW images and int64 labels; `x_test` is None when
    the source has no test set (digits)."""

    kind: ClassVar[str] = "image"
    #: What `meter` measures, as reports name it (val_acc).
    metric: ClassVar[str] = "acc"

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Random crop (zero padding of CIFAR10_PADDING) and horizontal flip of training batches.
    augment: bool = False

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (segmentation datasets: per pixel, ignore label left out)."""
        return F.cross_entropy(logits, y)

    def meter(self) -> Accuracy:
        """A fresh accumulator of this dataset's metric over batches (`add`, then `value`)."""
        return Accuracy()

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val),
                "test": 0 if self.y_test is None else len(self.y_test)}

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "in_channels": self.in_channels,
                "image_size": self.image_size, "num_classes": self.num_classes,
                "augment": self.augment, "sizes": self.sizes}

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with every tensor on `device` (self when already there)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name[:2] in ("x_", "y_")}
        return replace(self, **{k: None if v is None else v.to(device) for k, v in tensors.items()})

    def whole_training_set(self) -> ImageDataset:
        """The final training's data, as DARTS' train.py has it: the official training set whole
        (this dataset's train and validation splits together) trains, and the test set is what
        every epoch reports (`x_val` holds it). Normalisation stays that of the train split. A
        dataset without a test split (digits) is returned as it is: its validation split stays
        held out."""
        if self.x_test is None:
            return self
        return replace(self, x_train=torch.cat([self.x_train, self.x_val]),
                       y_train=torch.cat([self.y_train, self.y_val]), x_val=self.x_test, y_val=self.y_test)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, max_batches: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled (x, y) batches, the last one possibly short.

        All randomness comes from `generator` (a CPU generator, so the same seed
        gives the same batches on any device); one permutation per epoch and
        batch gathers by index keep the per-step cost to a few tensor ops.
        """
        n = len(self.y_train)
        device = self.x_train.device
        order = torch.randperm(n, generator=generator).to(device)
        steps = -(-n // batch_size)
        if max_batches is not None:
            steps = min(steps, max_batches)
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = self.x_train[idx]
            if self.augment:
                x = _crop_and_flip(x, CIFAR10_PADDING, generator)
            yield x, self.y_train[idx]

    def eval_batches(self, split: str = "val", batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential (x, y) views of the `val` or `test` split, no copies."""
        if split not in ("val", "test"):
            raise ConfigError("split", f"unknown split {split!r}", ("val", "test"))
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if x is None:
            raise ConfigError("split", f"the {self.name} dataset has no {split} split", ("val",))
        for start in range(0, len(y), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]


@dataclass(frozen=True, eq=False)
class SegmentationDataset(ImageDataset):
    """Images [N, C, H, W] and label masks [N, H, W] (int64; `ignore_index` marks unlabelled
    pixels), from workers/segdata.py."""

    kind: ClassVar[str] = "segmentation"
    metric: ClassVar[str] = "miou"

    ignore_index: int = segdata.IGNORE_INDEX

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index)

    def meter(self) -> segdata.MeanIoU:
        return segdata.MeanIoU(self.num_classes, self.ignore_index)


@dataclass(frozen=True, eq=False)
class TextDataset(Dataset):
    """Word-level corpus as 1-D int64 token streams; ids index `vocab`."""

    kind: ClassVar[str] = "text"
    #: What validation measures, as reports name it (val_ppl).
    metric: ClassVar[str] = "ppl"

    name: str
    vocab: tuple[str, ...]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "vocab_size": self.vocab_size, "sizes": self.sizes}

    def batchify(self, split: str, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The split's stream cut into `batch_size` parallel columns: shape [T, batch_size].
        The tail that does not fill a row is dropped, as in the usual PTB setup."""
        streams = {"train": self.train, "val": self.val, "test": self.test}
        if split not in streams:
            raise ConfigError("split", f"unknown split {split!r}", tuple(streams))
        tokens = streams[split]
        rows = len(tokens) // batch_size
        if rows < 2:
            raise ConfigError("batch_size", f"{batch_size} leaves fewer than 2 time steps of the "
                              f"{split} split ({len(tokens)} tokens)")
        return tokens[:rows * batch_size].view(batch_size, rows).t().contiguous().to(device)


def check_data_root(path: str, roots: list[str]) -> str:
    """The real path of `path` if it lies inside one of `roots` (a relative path is taken
    inside the first root), else a ConfigError.

    The refusal reads the same whether the path exists, is unreadable or is missing, and
    never repeats it, so that a client cannot probe the server's file system with it.
    A symbolic link inside a root that leads out of it is refused like any outside path.
    """
    if not roots:
        raise ConfigError("data_path", "this service reads datasets only from its data roots, and it has none",
                          "ask its operator to start nas serve with --data-root DIR")
    real_roots = [os.path.realpath(r) for r in roots]
    candidate = os.path.realpath(os.path.join(real_roots[0], path))
    if not any(candidate == r or candidate.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots):
        raise ConfigError("data_path", "is not inside a data root of this service",
                          f"a path inside {', '.join(real_roots)}")
    return candidate


def check_dataset_options(name: str, *, val_fraction: float | None = None, max_train: int | None = None,
                          augment: bool | None = None) -> None:
    """The dataset and its options, checked without reading anything (what `load_dataset`
    refuses before it touches a file, so that a service can refuse it at submit)."""
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r}", DATASETS)
    if max_train is not None and (not isinstance(max_train, int) or isinstance(max_train, bool) or max_train < 1):
        raise ConfigError("max_train", f"must be a positive integer or None, got {max_train!r}")
    if augment is not None and not isinstance(augment, bool):
        raise ConfigError("augment", f"must be true or false, got {augment!r}")
    if augment and name != "cifar10":
        raise ConfigError("augment", f"random crop and flip apply to cifar10 only, not {name!r}", ("cifar10",))
    if name == "ptb":
        if val_fraction is not None:
            raise ConfigError("val_fraction", "ptb has its own validation file; leave val_fraction unset")
    elif val_fraction is not None and (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
                                       or not 0 < val_fraction < 1):
        raise ConfigError("val_fraction", f"must be strictly between 0 and 1, got {val_fraction!r}")


def load_dataset(
    name: str = "digits", path: str | Path | None = None, seed: int = 0, *,
    val_fraction: float | None = None, max_train: int | None = None, augment: bool | None = None,
) -> Dataset:
    """Load `name` into memory.

    Image datasets: the official training set is split into train/validation
    by a permutation drawn from `seed` (`val_fraction` of it validates; 0.2 for
    digits, 0.1 otherwise), `max_train` keeps only the first that many training
    samples of the permuted order, and every split is normalised by the
    training split's per-channel mean and std. `augment` (default: on for
    cifar10 only) applies random crop and flip to training batches.
    ptb keeps its own train/valid/test files; `max_train` caps its training tokens.
    """
    check_dataset_options(name, val_fraction=val_fraction, max_train=max_train, augment=augment)
    if name in ("digits", "digits-seg"):
        if path is not None:
            raise ConfigError("data_path", f"{name} ships with scikit-learn and takes no --data path")
    elif path is None:
        raise ConfigError("data_path", f"the {name} dataset needs --data PATH: {EXPECTED_LAYOUT[name]}")
    elif not Path(path).exists():
        raise ConfigError("data_path", f"not found: {path}; expected {EXPECTED_LAYOUT[name]}")

    if name == "ptb":
        return _load_ptb(Path(path), max_train)
    if name in SEGMENTATION_DATASETS:
        train, test, num_classes = segdata.read_segmentation(name, None if path is None else Path(path))
        return _split_and_normalise(name, train, test, seed,
                                    segdata.DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
                                    max_train, augment=False, num_classes=num_classes, kind=SegmentationDataset)

    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION[name]
    if name == "digits":
        train, test = _read_digits(), None
    elif name == "mnist":
        train, test = _read_npz(name, Path(path))
    else:
        train, test = _read_cifar10(Path(path))
    return _split_and_normalise(
        name, train, test, seed, val_fraction, max_train,
        augment=(name == "cifar10") if augment is None else augment,
    )


# -- image sources: each returns (x uint8/float NCHW numpy, y int64) pairs -----------------------


def _read_digits():
    # Deferred: scikit-learn takes about 2 s to import and only digits needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images[:, None].astype(np.float32), bunch.target.astype(np.int64)


def _read_npz(name: str, path: Path):
    path = _single_npz(name, path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in _NPZ_KEYS if k not in archive.files]
            if missing:
                raise ValueError(f"missing arrays {', '.join(missing)}")
            arrays = {k: archive[k] for k in _NPZ_KEYS}
    except (OSError, ValueError) as exc:
        raise ConfigError("data_path", f"cannot read {path}: {exc}; expected {EXPECTED_LAYOUT[name]}") from None
    return tuple(
        (_nchw(name, path, arrays[f"x_{split}"]), _labels(name, path, arrays[f"y_{split}"], len(arrays[f"x_{split}"])))
        for split in ("train", "test")
    )


def _single_npz(name: str, path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.npz"))
    if len(found) != 1:
        what = "no .npz file" if not found else f"{len(found)} .npz files ({', '.join(p.name for p in found)})"
        raise ConfigError("data_path", f"{path} holds {what}; expected {EXPECTED_LAYOUT[name]}")
    return found[0]


def _nchw(name: str, path: Path, x: np.ndarray) -> np.ndarray:
    """NHW (grey) or NHWC images as NCHW."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise ConfigError("data_path", f"{path}: images of shape {x.shape} are neither (N, H, W) nor (N, H, W, C); "
                      f"expected {EXPECTED_LAYOUT[name]}")


def _labels(name: str, path: Path, y, n: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != n or not np.isin(y, np.arange(10)).all():
        raise ConfigError("data_path", f"{path}: expected {n} labels in 0..9, got {len(y)}; "
                          f"expected {EXPECTED_LAYOUT[name]}")
    return y


def _read_cifar10(path: Path):
    if path.is_dir() and (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    batch_files = (*_CIFAR_BATCHES, "test_batch")
    if path.is_file() or not any((path / b).exists() for b in batch_files):
        return _read_npz("cifar10", path)
    missing = [b for b in batch_files if not (path / b).is_file()]
    if missing:
        raise ConfigError("data_path", f"not found: {path / missing[0]}; expected {EXPECTED_LAYOUT['cifar10']}")
    train = [_read_cifar_batch(path / b) for b in _CIFAR_BATCHES]
    train_pair = (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]))
    return train_pair, _read_cifar_batch(path / "test_batch")


#: The numeric dtypes a CIFAR batch may hold: never `O` (objects) or structured types.
_PLAIN_DTYPES = frozenset(np.dtype(c).str[1:] for c in ("b1", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8",
                                                        "f2", "f4", "f8"))


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what the official batches contain (dicts, lists, ints, bytes and numeric
    numpy arrays). Every other global a pickle names, the usual route to running code, is
    refused; so are object arrays, whose elements would be arbitrary pickled objects."""

    _NDARRAY = object()  # stands for numpy.ndarray, which must never be called directly

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): self._NDARRAY,
            ("numpy", "dtype"): _plain_dtype,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): _frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _frombuffer,
            # How Python 3 pickles bytes at protocol 2.
            ("_codecs", "encode"): _latin1,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return allowed[module, name]

    @classmethod
    def _reconstruct(cls, subtype, shape, dtype):
        # numpy pickles every array as an empty one plus its state, which fills it in.
        if subtype is not cls._NDARRAY or tuple(shape) != (0,):
            raise pickle.UnpicklingError("only plain numpy arrays are allowed in a CIFAR-10 batch")
        return _multiarray._reconstruct(np.ndarray, (0,), _plain_dtype(dtype))


def _plain_dtype(spec, *args):
    dtype = np.dtype(spec if isinstance(spec, str) else spec.decode("latin1") if isinstance(spec, bytes) else spec)
    if dtype.str[1:] not in _PLAIN_DTYPES:
        raise pickle.UnpicklingError(f"arrays of {dtype} are not allowed in a CIFAR-10 batch")
    return dtype


def _frombuffer(buffer, dtype, shape, order):
    return _numeric._frombuffer(buffer, _plain_dtype(dtype), shape, order)


def _latin1(text, encoding):
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("only latin1 bytes are allowed in a CIFAR-10 batch")
    return codecs.encode(text, "latin1")


def _read_cifar_batch(path: Path):
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = batch[b"labels"]
    except Exception as exc:  # noqa: BLE001 - whatever unpickling trips on, the file is unreadable
        raise ConfigError("data_path", f"cannot read {path}: {type(exc).__name__}: {exc}; "
                          f"expected {EXPECTED_LAYOUT['cifar10']}") from None
    return data, _labels("cifar10", path, labels, len(data))


def _split_and_normalise(name, train, test, seed, val_fraction, max_train, augment, num_classes: int = 10,
                         kind: type[ImageDataset] | None = None) -> ImageDataset:
    """The training set split by `seed`, every split normalised by the training split's statistics,
    as an ImageDataset (or `kind`: segmentation datasets, whose labels are masks)."""
    x, y = train
    n = len(y)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise ConfigError("val_fraction", f"{val_fraction} of {n} training samples leaves an empty split")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    def floats(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32))

    # Per-channel statistics of the training split only, so validation stays unseen.
    train_pixels = floats(x[train_idx])
    mean = train_pixels.mean(dim=(0, 2, 3))
    std = train_pixels.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images - mean[:, None, None]) / std[:, None, None]

    return (kind or ImageDataset)(
        name=name,
        x_train=normalise(train_pixels), y_train=torch.from_numpy(y[train_idx]),
        x_val=normalise(floats(x[val_idx])), y_val=torch.from_numpy(y[val_idx]),
        x_test=None if test is None else normalise(floats(test[0])),
        y_test=None if test is None else torch.from_numpy(test[1]),
        num_classes=num_classes, mean=tuple(mean.tolist()), std=tuple(std.tolist()), augment=augment,
    )


def _crop_and_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch plus horizontal flip, as one gather.

    Zero padding happens after normalisation (the mean colour, not black), which
    avoids un-normalising every batch. A flip is a reversed column index, so
    crop and flip together cost a single gather over the flattened planes.
    """
    b, c, h, w = x.shape
    width = w + 2 * padding
    planes = F.pad(x, (padding, padding, padding, padding)).reshape(b * c, -1)
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device)
    cols = offsets[1, :, None] + torch.where(flip[:, None], cols.flip(0), cols)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return planes.gather(1, index.reshape(b * c, h * w)).reshape(b, c, h, w)


# -- text ---------------------------------------------------------------------------------------


def _load_ptb(folder: Path, max_train: int | None) -> TextDataset:
    if not folder.is_dir():
        raise ConfigError("data_path", f"not found: folder {folder}; expected {EXPECTED_LAYOUT['ptb']}")
    words = {}
    for split, filename in _PTB_FILES.items():
        file = folder / filename
        if not file.is_file():
            raise ConfigError("data_path", f"not found: {file}; expected {EXPECTED_LAYOUT['ptb']}")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("data_path", f"cannot read {file}: {exc}; expected {EXPECTED_LAYOUT['ptb']}") from None
        words[split] = [w for line in text.splitlines() for w in (*line.split(), "<eos>")]
    # Ids in order of first appearance in the training text, as the usual PTB corpus readers assign them.
    ids = {w: i for i, w in enumerate(dict.fromkeys(words["train"]))}
    streams = {}
    for split, tokens in words.items():
        unknown = ids.get("<unk>")
        try:
            streams[split] = torch.tensor([ids[w] if unknown is None else ids.get(w, unknown) for w in tokens],
                                          dtype=torch.int64)
        except KeyError as exc:
            raise ConfigError("data_path", f"{folder / _PTB_FILES[split]}: word {exc.args[0]!r} is not in the "
                              "training vocabulary and there is no <unk> token") from None
    if max_train is not None:
        streams["train"] = streams["train"][:max_train]
    return TextDataset(name="ptb", vocab=tuple(ids), **streams)
