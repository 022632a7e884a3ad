"""Image sets held as arrays: your own (`arrays`: an .npz file, or .npy files that stream from
disk through memory maps), and the built-in digits, MNIST and CIFAR-10.

Data files are never unpickled freely: .npz and .npy files are read with `allow_pickle=False`,
and CIFAR-10's python batches by an unpickler that builds nothing but the dicts, lists, bytes
and numeric arrays they hold.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raynas.common import ConfigError
from raynas.common.options import option
from raynas.workers.datasets import register_dataset
from raynas.workers.datasets.base import CLASSIFICATION, Dataset, StreamOptions, split_positions
from raynas.workers.datasets.images import ArrayReader, ImageData, image_data

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

SPLITS = ("train", "val", "test")
_ARRAYS_LAYOUT = ("an .npz file with arrays x_train, y_train (and optionally x_val, y_val, x_test, y_test, "
                  "class_names), or a folder of .npy files with those names; images (N, H, W), (N, H, W, C) or "
                  "(N, C, H, W) with C 1 or 3, integer labels 0..K-1")
#: scikit-learn's copy of the UCI optdigits test set (CC BY 4.0), kept here because importing
#: scikit-learn to read it takes about 2 s of CPU in every process that loads the digits.
DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def arrays_data(dataset: Dataset, arrays: dict[str, np.ndarray], seed: int, class_names=None, num_classes=None,
                stream: str = "memory", layout: str = "auto") -> ImageData:
    """ImageData from x_<split>/y_<split> arrays: the validation split is drawn from the training
    arrays (`val_fraction`) unless x_val is given; x_test is the test split where given."""
    options = dataset.options
    names = [s for s in SPLITS if f"x_{s}" in arrays]
    images = {s: nchw(dataset, arrays[f"x_{s}"], layout) for s in names}
    labels = {s: np.asarray(arrays[f"y_{s}"]).astype(np.int64).reshape(-1) for s in names}
    for s in names:
        if len(labels[s]) != len(images[s]):
            raise ConfigError("data_path", f"{dataset.path}: {len(images[s])} images in x_{s} but {len(labels[s])} "
                              f"labels in y_{s}; expected {dataset.layout}")
    shapes = {images[s].shape[1:] for s in names}
    if len(shapes) > 1:
        raise ConfigError("data_path", f"{dataset.path}: the splits' images differ in shape ({sorted(shapes)})")
    top = int(max(labels[s].max(initial=-1) for s in names)) + 1
    num_classes = num_classes or top
    for s in names:
        if len(labels[s]) and (labels[s].min() < 0 or labels[s].max() >= num_classes):
            raise ConfigError("data_path", f"{dataset.path}: labels of y_{s} must lie in 0..{num_classes - 1}")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError("data_path", f"{dataset.path}: {len(class_names)} class names for {num_classes} classes")
    at = split_positions({s: len(labels[s]) for s in names}, seed, options.val_fraction or dataset.val_fraction,
                         options.max_train)
    augment = dataset.augments if options.augment is None else options.augment
    reader = ArrayReader([(images[s], labels[s]) for s in names])
    return image_data(dataset.name, CLASSIFICATION, reader, at, num_classes,
                      class_names or [str(k) for k in range(num_classes)], seed=seed, augment=augment, stream=stream)


def nchw(dataset: Dataset, x: np.ndarray, layout: str = "auto") -> np.ndarray:
    """Images as (N, C, H, W): NHW (grey), NHWC and NCHW with 1 or 3 channels."""
    if x.dtype.kind not in "uif":
        raise ConfigError("data_path", f"{dataset.path}: images of dtype {x.dtype} are not numbers")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if layout in ("auto", "nhwc") and x.shape[-1] in (1, 3):
            return x.transpose(0, 3, 1, 2)
        if layout in ("auto", "nchw") and x.shape[1] in (1, 3):
            return x
    raise ConfigError("data_path", f"{dataset.path}: images of shape {x.shape} are neither (N, H, W) nor "
                      f"(N, H, W, C) nor (N, C, H, W) with C 1 or 3; expected {dataset.layout}")


@dataclass(frozen=True)
class ArraysOptions(StreamOptions):
    layout: str = option("auto", "how 4-d image arrays are laid out: nhwc, nchw, or auto (channels last when the "
                                 "last axis is 1 or 3)", choices=("auto", "nhwc", "nchw"))


@register_dataset
class Arrays(Dataset):
    """Your own images as numpy arrays: an .npz file (read into memory), or a folder of .npy files
    (memory-mapped, so `stream` disk reads only the batches it trains on)."""

    name = "arrays"
    summary = "your own images as numpy arrays (.npz, or .npy files that stream from disk)"
    layout = _ARRAYS_LAYOUT
    Options = ArraysOptions

    def load(self, seed: int = 0) -> ImageData:
        path = self.root()
        arrays = _read_npz(self, path) if path.is_file() else _read_npy_folder(self, path)
        class_names = arrays.pop("class_names", None)
        stream = self.options.stream
        if stream == "disk" and path.is_file():
            raise ConfigError("dataset_options.stream", "an .npz file is read whole; give a folder of .npy files to "
                              "stream from disk", ("auto", "memory"))
        if path.is_file():
            stream = "memory"
        names = None if class_names is None else [str(c) for c in class_names]
        return arrays_data(self, arrays, seed, names, names and len(names), stream=stream, layout=self.options.layout)


def _read_npz(dataset: Dataset, path: Path, required=("x_train", "y_train")) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in required if k not in archive.files]
            if missing:
                raise ValueError(f"missing arrays {', '.join(missing)}")
            wanted = [k for k in archive.files if k in {f"{p}_{s}" for p in "xy" for s in SPLITS} | {"class_names"}]
            return {k: archive[k] for k in wanted}
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError("data_path", f"cannot read {path}: {exc}; expected {dataset.layout}") from None


def _read_npy_folder(dataset: Dataset, path: Path) -> dict[str, np.ndarray]:
    found = {p.stem: p for p in path.glob("*.npy")}
    if not {"x_train", "y_train"} <= set(found):
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            return _read_npz(dataset, npz[0])
        raise ConfigError("data_path", f"{path} holds no x_train.npy and y_train.npy; expected {dataset.layout}")
    arrays = {}
    for name, file in found.items():
        if name in {f"{p}_{s}" for p in "xy" for s in SPLITS} | {"class_names"}:
            try:
                # Images memory-mapped: a batch reads its rows only.
                arrays[name] = np.load(file, mmap_mode="r" if name.startswith("x_") else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ConfigError("data_path", f"cannot read {file}: {exc}; expected {dataset.layout}") from None
    return arrays


@register_dataset
class Digits(Dataset):
    """scikit-learn's 1,797 bundled 8x8 handwritten digits (UCI optdigits), ink 0..16."""

    name = "digits"
    summary = "scikit-learn's bundled 8x8 handwritten digits (default; no download)"
    val_fraction = 0.2

    def load(self, seed: int = 0) -> ImageData:
        images, digits = load_digits()
        return arrays_data(self, {"x_train": images[:, None], "y_train": digits}, seed, DIGIT_CLASSES, 10)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (images [N, 8, 8] float32, ink 0..16; labels [N] int64), the arrays of
    scikit-learn's `load_digits()`."""
    with gzip.open(DIGITS_FILE, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8).astype(np.float32), table[:, -1].astype(np.int64)


class _FixedArrays(Dataset):
    """A built-in set read from the arrays of its known shape."""

    shape: tuple[int, ...] = ()

    def _checked(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for split in ("train", "test"):
            x = arrays.get(f"x_{split}")
            if x is None or x.shape[1:] != self.shape or x.dtype != np.uint8:
                got = "missing" if x is None else f"{x.shape} {x.dtype}"
                raise ConfigError("data_path", f"{self.path}: x_{split} is {got}; expected {self.layout}")
        return arrays


@register_dataset
class MNIST(_FixedArrays):
    name = "mnist"
    summary = "MNIST (--data: an .npz with x_train, y_train, x_test, y_test)"
    layout = "an .npz file (or a folder holding exactly one) with arrays x_train, y_train, x_test, y_test; " \
             "x_* of shape (N, 28, 28) uint8"
    shape = (28, 28)

    def load(self, seed: int = 0) -> ImageData:
        path = _single_npz(self, self.root())
        arrays = self._checked(_read_npz(self, path, ("x_train", "y_train", "x_test", "y_test")))
        return arrays_data(self, arrays, seed, DIGIT_CLASSES, 10)


@register_dataset
class CIFAR10(_FixedArrays):
    name = "cifar10"
    summary = "CIFAR-10 (--data: the python batches folder, or an .npz); crop and flip on"
    layout = ("the CIFAR-10 python batches folder (data_batch_1 .. data_batch_5 and test_batch), or an .npz "
              "file (or a folder holding exactly one) with arrays x_train, y_train, x_test, y_test; x_* of shape "
              "(N, 32, 32, 3) uint8")
    shape = (32, 32, 3)
    augments = True

    def load(self, seed: int = 0) -> ImageData:
        path = self.root()
        if path.is_dir() and (path / "cifar-10-batches-py").is_dir():
            path = path / "cifar-10-batches-py"
        batch_files = (*_CIFAR_BATCHES, "test_batch")
        if path.is_file() or not any((path / b).exists() for b in batch_files):
            arrays = self._checked(_read_npz(self, _single_npz(self, path), ("x_train", "y_train", "x_test",
                                                                            "y_test")))
        else:
            missing = [b for b in batch_files if not (path / b).is_file()]
            if missing:
                raise ConfigError("data_path", f"not found: {path / missing[0]}; expected {self.layout}")
            train = [self._read_batch(path / b) for b in _CIFAR_BATCHES]
            test = self._read_batch(path / "test_batch")
            arrays = {"x_train": np.concatenate([x for x, _ in train]),
                      "y_train": np.concatenate([y for _, y in train]), "x_test": test[0], "y_test": test[1]}
        return arrays_data(self, arrays, seed, CIFAR10_CLASSES, 10)

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                batch = _BatchUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - whatever unpickling trips on, the file is unreadable
            raise ConfigError("data_path", f"cannot read {path}: {type(exc).__name__}: {exc}; "
                              f"expected {self.layout}") from None
        if len(labels) != len(data) or not np.isin(labels, np.arange(10)).all():
            raise ConfigError("data_path", f"{path}: expected {len(data)} labels in 0..9; expected {self.layout}")
        return data.transpose(0, 2, 3, 1), labels


def _single_npz(dataset: Dataset, path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.npz"))
    if len(found) != 1:
        what = "no .npz file" if not found else f"{len(found)} .npz files ({', '.join(p.name for p in found)})"
        raise ConfigError("data_path", f"{path} holds {what}; expected {dataset.layout}")
    return found[0]


_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
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
