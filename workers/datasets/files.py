"""Image files: decoding and resizing (in DataLoader processes when a set streams), and
`image-folder`, your own images in the layout torchvision's ImageFolder reads.

Decoding uses Pillow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raynas.common import ConfigError, DataError
from raynas.common.options import option
from raynas.workers.datasets import register_dataset
from raynas.workers.datasets.base import CLASSIFICATION, Dataset, StreamOptions, split_positions
from raynas.workers.datasets.images import ImageData, Reader, image_data

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: Folder names of the splits in a split layout (the first that exists is taken).
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
#: Pillow modes of one channel.
_GREY = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def pil():
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("dataset", "reading image files needs Pillow: pip install pillow") from None
    return Image


def open_image(path: str | Path, channels: int) -> np.ndarray:
    """An image file as [C, H, W] uint8 (C = 1: grey, 3: RGB)."""
    try:
        with pil().open(path) as image:
            array = np.array(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode {path}: {exc}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resize(image: np.ndarray, size: tuple[int, int], crop: bool) -> np.ndarray:
    """[C, H, W] uint8 at `size`: bilinear with antialiasing; with `crop`, the shorter side is
    resized to the target's and the centre cut out (the aspect ratio kept, as torchvision's
    Resize + CenterCrop). An image already at `size` is returned as it is."""
    h, w = image.shape[1:]
    if (h, w) == tuple(size):
        return image
    target = size
    if crop:
        scale = max(size[0] / h, size[1] / w)
        target = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image))[None].float()
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)[0]
    if crop:
        top, left = (target[0] - size[0]) // 2, (target[1] - size[1]) // 2
        x = x[:, top:top + size[0], left:left + size[1]]
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [H, W] label map at `size`, by nearest neighbour (labels are not averaged)."""
    if mask.shape == tuple(size):
        return mask.astype(np.int64)
    y = F.interpolate(torch.from_numpy(mask.astype(np.int64))[None, None].float(), size=size, mode="nearest")
    return y[0, 0].long().numpy()


class FileReader(Reader):
    """Image files and their class labels, decoded and resized on demand."""

    decodes = True

    def __init__(self, files: list[str], labels: np.ndarray, channels: int, size: tuple[int, int]):
        super().__init__(channels, size, "uint8")
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        return resize(open_image(self.files[i], self.channels), self.size, crop=True), int(self.labels[i])


def image_files(folder: Path) -> list[str]:
    """The image files directly in `folder`, by name; hidden files and other suffixes are skipped."""
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_file() and not e.name.startswith(".")
                      and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def split_folders(root: Path) -> dict[str, Path] | None:
    """The split folders of a split layout (train/, and val/ or test/ where present), or None when
    `root` has no train/ folder of its own."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is not None:
            found[split] = folder
    return found if "train" in found else None


@dataclass(frozen=True)
class FolderOptions(StreamOptions):
    image_size: int | None = option(None, "side of the square images the network sees: the shorter side resized to "
                                          "it and the centre cut out (default: the first training image's shorter "
                                          "side)", most=4096)
    grayscale: bool | None = option(None, "one channel (default: when the first training image is grey)")


@register_dataset
class ImageFolder(Dataset):
    """Your own images, a folder per class (torchvision's ImageFolder layout), at the top of the
    path or under train/ (with val/ or valid/ and test/ beside it where you have them; else the
    validation images are a seeded share of train/)."""

    name = "image-folder"
    summary = "your own images: a subfolder per class (optionally under train/, val/, test/), PNG or JPEG"
    layout = ("a folder with a subfolder of images (.png, .jpg, ...) per class, or train/ (and optionally val/ and "
              "test/) holding such subfolders")
    Options = FolderOptions

    def _listing(self) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
        root = self.root()
        if not root.is_dir():
            raise ConfigError("data_path", f"{root} is not a folder; expected {self.layout}")
        folders = split_folders(root) or {"train": root}
        classes = sorted(e.name for e in os.scandir(folders["train"]) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise ConfigError("data_path", f"{folders['train']} holds no class folders; expected {self.layout}")
        listing = {}
        for split, folder in folders.items():
            present = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
            strangers = sorted(set(present) - set(classes))
            if strangers:
                raise ConfigError("data_path", f"{folder / strangers[0]} is a class the training folder "
                                  f"{folders['train']} has not", classes)
            items = [(f, k) for k, name in enumerate(classes) if (folder / name).is_dir()
                     for f in image_files(folder / name)]
            if split == "train":
                empty = [name for name in classes if not image_files(folder / name)]
                if empty:
                    raise ConfigError("data_path", f"{folder / empty[0]} holds no image files "
                                      f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            if not items:
                raise ConfigError("data_path", f"{folder} holds no images; expected {self.layout}")
            listing[split] = items
        return listing, classes

    def load(self, seed: int = 0) -> ImageData:
        listing, classes = self._listing()
        first = listing["train"][0][0]
        with pil().open(first) as image:
            mode, (width, height) = image.mode, image.size
        options = self.options
        channels = 1 if (options.grayscale if options.grayscale is not None else mode in _GREY) else 3
        side = options.image_size or min(width, height)
        names = list(listing)
        files = [f for s in names for f, _ in listing[s]]
        labels = np.array([k for s in names for _, k in listing[s]], dtype=np.int64)
        at = split_positions({s: len(listing[s]) for s in names}, seed, options.val_fraction or self.val_fraction,
                             options.max_train)
        reader = FileReader(files, labels, channels, (side, side))
        return image_data(self.name, CLASSIFICATION, reader, at, len(classes), classes, seed=seed,
                          augment=bool(options.augment), stream=options.stream, workers=options.loader_workers,
                          resize=f"shorter side to {side} (bilinear, antialiased), centre {side}x{side}")
