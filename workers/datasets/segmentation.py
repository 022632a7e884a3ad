"""Semantic segmentation sets: `seg-folder` (your own images and masks), the composed `digits-seg`,
and the Cityscapes and PASCAL VOC folders.

- `seg-folder`: images/ and masks/ side by side (a mask per image, same file stem, a PNG of class
  indices), at the top of the path or under train/ (with val/ and test/ where you have them);
  classes from classes.txt (a name per line), or `num_classes`, or the largest label found.
- `digits-seg`: a segmentation set composed from real images, with no download. One to three
  of scikit-learn's 8x8 handwritten digits, scaled x2, are placed on a 32x32 canvas; a pixel
  is labelled with its digit's class (1 + the digit; 0 is background) where the digit's ink is
  at least half of full strength or next to such ink (the stroke grown by one digit pixel, so
  that a mask is a body a stride-4 network can resolve, not a 2-pixel line), and with the ignore
  label on the ring one digit pixel wide around that body (like the boundary band of PASCAL
  VOC's masks); a digit placed later covers an earlier one. The digits of the test canvases are
  never those of the training canvases. The composition has its own fixed seed, so the set is the
  same for every run; `seed` draws the train/validation split of the training canvases, as for
  the other datasets.
- `cityscapes`: a folder in the official layout, leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  and gtFine/{train,val}/<city>/*_gtFine_labelIds.png; label ids map to the 19 train ids by the
  table of the `cityscapesscripts` package (the official one, not a copy), every other id to the
  ignore label. Images are resized to 64x128 (labels by nearest neighbour).
- `voc`: PASCAL VOC 2012, VOCdevkit/VOC2012/ (or that folder itself) with JPEGImages/*.jpg,
  SegmentationClass/*.png (palette indices; 255 marks the boundary band and is ignored) and
  ImageSets/Segmentation/{train,val}.txt; 21 classes, resized to 128x128.

The official validation images of Cityscapes and VOC are the test split, and the validation
split is a seeded share of the training images, as the classification sets do with theirs.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raynas.common import ConfigError
from raynas.common.options import option
from raynas.workers.datasets import register_dataset
from raynas.workers.datasets.arrays import load_digits
from raynas.workers.datasets.base import SEGMENTATION, Dataset, StreamOptions, split_positions
from raynas.workers.datasets.files import IMAGE_SUFFIXES, open_image, pil, resize, resize_mask, split_folders
from raynas.workers.datasets.images import IGNORE_INDEX, ArrayReader, ImageData, Reader, image_data

#: Validation share of the training images of the segmentation sets.
VAL_FRACTION = 0.2

# The composed set.
CANVAS = 32
DIGIT_SCALE = 2
MAX_DIGITS = 3
#: Ink (of scikit-learn's 16) from which a pixel is a stroke of its digit.
INK = 8
TRAIN_CANVASES = 1200
TEST_CANVASES = 300
COMPOSE_SEED = 0


class PairReader(Reader):
    """Image files and their mask files, decoded and resized on demand (masks by nearest
    neighbour, through `table` when label ids need mapping to class indices)."""

    decodes = True

    def __init__(self, pairs: list[tuple[str, str]], size: tuple[int, int], channels: int = 3,
                 table: np.ndarray | None = None):
        super().__init__(channels, size, "uint8")
        self.pairs, self.table = pairs, table

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[np.ndarray, Any]:
        image_path, mask_path = self.pairs[i]
        return resize(open_image(image_path, self.channels), self.size, crop=False), \
            resize_mask(self.mask(i), self.size)

    def mask(self, i: int) -> np.ndarray:
        path = self.pairs[i][1]
        with pil().open(path) as image:
            mask = np.asarray(image)
        if mask.ndim != 2:
            raise ConfigError("data_path", f"{path} is not a mask of class indices (a one-channel or palette PNG)")
        return mask if self.table is None else self.table[mask]


def _segmentation(dataset: Dataset, reader: Reader, counts: dict[str, int], num_classes: int, class_names,
                  seed: int, stream: str = "memory", workers: int = 0, resize: str | None = None,
                  ignore_index: int = IGNORE_INDEX) -> ImageData:
    at = split_positions(counts, seed, dataset.options.val_fraction or dataset.val_fraction,
                         dataset.options.max_train)
    return image_data(dataset.name, SEGMENTATION, reader, at, num_classes,
                      class_names or [str(k) for k in range(num_classes)], seed=seed, stream=stream,
                      workers=workers, resize=resize, ignore_index=ignore_index)


@dataclass(frozen=True)
class SegFolderOptions(StreamOptions):
    image_size: int | None = option(None, "side of the square images and masks the network sees (default: the first "
                                          "training image's own size, which every image is resized to)", most=4096)
    num_classes: int | None = option(None, "classes, 0..K-1 (default: classes.txt's lines, else the largest label "
                                           "found plus one)", most=4096)
    ignore_index: int = option(IGNORE_INDEX, "mask value of unlabelled pixels, left out of loss and mIoU", most=65535)


@register_dataset
class SegmentationFolder(Dataset):
    name = "seg-folder"
    task = SEGMENTATION
    summary = "your own segmentation set: images/ and masks/ (PNG class indices), optionally under train/ val/ test/"
    layout = ("a folder with images/ (.png, .jpg, ...) and masks/ (a PNG of class indices per image, same file "
              "stem), or train/ (and optionally val/ and test/) holding both; classes.txt optional")
    Options = SegFolderOptions
    val_fraction = VAL_FRACTION

    def load(self, seed: int = 0) -> ImageData:
        root = self.root()
        if not root.is_dir():
            raise ConfigError("data_path", f"{root} is not a folder; expected {self.layout}")
        folders = split_folders(root) or {"train": root}
        pairs = {split: self._pairs(folder) for split, folder in folders.items()}
        options = self.options
        first = pairs["train"][0][0]
        with pil().open(first) as image:
            width, height = image.size
        size = (options.image_size, options.image_size) if options.image_size else (height, width)
        names = list(pairs)
        flat = [p for s in names for p in pairs[s]]
        reader = PairReader(flat, size)
        class_names = self._class_names(root)
        num_classes = options.num_classes or (len(class_names) if class_names else None)
        if num_classes is None:
            labels = [reader.mask(i) for i in range(len(flat))]
            num_classes = int(max(int(m[m != options.ignore_index].max(initial=0)) for m in labels)) + 1
        return _segmentation(self, reader, {s: len(pairs[s]) for s in names}, num_classes, class_names, seed,
                             options.stream, options.loader_workers,
                             resize=f"to {size[0]}x{size[1]} (bilinear, antialiased; masks nearest)",
                             ignore_index=options.ignore_index)

    def _pairs(self, folder: Path) -> list[tuple[str, str]]:
        images, masks = folder / "images", folder / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise ConfigError("data_path", f"{folder} lacks images/ or masks/; expected {self.layout}")
        found = {p.stem: p for p in masks.glob("*.png")}
        pairs = []
        for image in sorted(images.iterdir()):
            if image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if image.stem not in found:
                raise ConfigError("data_path", f"{image} has no mask {masks / (image.stem + '.png')}")
            pairs.append((str(image), str(found[image.stem])))
        if not pairs:
            raise ConfigError("data_path", f"{images} holds no images; expected {self.layout}")
        return pairs

    def _class_names(self, root: Path) -> list[str] | None:
        file = root / "classes.txt"
        if not file.is_file():
            return None
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if self.options.num_classes is not None and len(names) != self.options.num_classes:
            raise ConfigError("dataset_options.num_classes", f"{self.options.num_classes} differs from the "
                              f"{len(names)} names of {file}", (len(names),))
        return names


@register_dataset
class DigitsSegmentation(Dataset):
    name = "digits-seg"
    task = SEGMENTATION
    summary = "segmentation composed from the bundled digits: 1-3 digits on a 32x32 canvas, 11 classes"
    val_fraction = VAL_FRACTION

    def load(self, seed: int = 0) -> ImageData:
        train, test = compose_digits()
        reader = ArrayReader([train, test])
        return _segmentation(self, reader, {"train": len(train[1]), "test": len(test[1])}, 11,
                             ["background", *(str(d) for d in range(10))], seed)


def _grown(strong: np.ndarray) -> np.ndarray:
    """`strong` grown by one pixel in each direction (a 3x3 maximum filter)."""
    padded = np.pad(strong, 1)
    h, w = strong.shape
    return np.any([padded[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def paint(canvas: np.ndarray, mask: np.ndarray, image: np.ndarray, digit: int, top: int, left: int) -> None:
    """Place one digit (`image`, ink 0..16, 8x8) scaled x2 at (top, left) of `canvas` [H, W] and
    `mask` [H, W]: ink by maximum, the label over whatever was there."""
    scale = np.ones((DIGIT_SCALE, DIGIT_SCALE), dtype=np.float32)
    side = image.shape[-1] * DIGIT_SCALE
    window = (slice(top, top + side), slice(left, left + side))
    canvas[window] = np.maximum(canvas[window], np.kron(image, scale))
    body = _grown(image >= INK)
    region = mask[window]
    region[np.kron(_grown(body) & ~body, scale) > 0] = IGNORE_INDEX
    region[np.kron(body, scale) > 0] = 1 + digit


def compose(images: np.ndarray, digits: np.ndarray, count: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """`count` canvases of 1..MAX_DIGITS of `images` (ink 0..16, [N, 8, 8]) with their masks."""
    side = images.shape[-1] * DIGIT_SCALE
    x = np.zeros((count, 1, CANVAS, CANVAS), dtype=np.float32)
    y = np.zeros((count, CANVAS, CANVAS), dtype=np.int64)
    for n in range(count):
        for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
            i = int(rng.integers(len(images)))
            top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
            paint(x[n, 0], y[n], images[i], int(digits[i]), top, left)
    return x, y


def compose_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(training canvases, test canvases), from disjoint digits, the same on every call."""
    images, digits = load_digits()
    rng = np.random.default_rng(COMPOSE_SEED)
    order = rng.permutation(len(digits))
    cut = int(len(order) * TRAIN_CANVASES / (TRAIN_CANVASES + TEST_CANVASES))
    train, test = order[:cut], order[cut:]
    return (compose(images[train], digits[train], TRAIN_CANVASES, rng),
            compose(images[test], digits[test], TEST_CANVASES, rng))


class OfficialSegmentation(Dataset):
    """A segmentation set in its publisher's layout: its official validation images are the test
    split; images are resized to `size` (masks by nearest neighbour)."""

    task = SEGMENTATION
    Options = StreamOptions
    val_fraction = VAL_FRACTION
    size: tuple[int, int] = (0, 0)

    @abstractmethod
    def pairs(self) -> tuple[dict[str, list[tuple[str, str]]], np.ndarray | None, list[str]]:
        """(image and mask files of the train and test splits, the table from label ids to classes
        or None, the class names)."""

    def load(self, seed: int = 0) -> ImageData:
        pairs, table, names = self.pairs()
        reader = PairReader(pairs["train"] + pairs["test"], self.size, table=table)
        return _segmentation(self, reader, {s: len(p) for s, p in pairs.items()}, len(names), names, seed,
                             self.options.stream, self.options.loader_workers,
                             resize=f"to {self.size[0]}x{self.size[1]} (bilinear, antialiased; masks nearest)")


@register_dataset
class Cityscapes(OfficialSegmentation):
    name = "cityscapes"
    summary = "Cityscapes (--data: the official leftImg8bit/ and gtFine/ folders), 19 classes at 64x128"
    layout = ("a Cityscapes folder with leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
              "gtFine/{train,val}/<city>/*_gtFine_labelIds.png")
    size = (64, 128)

    def pairs(self) -> tuple[dict[str, list[tuple[str, str]]], np.ndarray | None, list[str]]:
        root = self.root()
        table, names = cityscapes_train_ids()
        pairs = {}
        for split, ours in (("train", "train"), ("val", "test")):
            folder = root / "leftImg8bit" / split
            found = []
            for image_path in sorted(folder.glob("*/*_leftImg8bit.png")):
                label_path = (root / "gtFine" / split / image_path.parent.name /
                              image_path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
                if not label_path.is_file():
                    raise ConfigError("data_path", f"{image_path} has no label file {label_path}", self.layout)
                found.append((str(image_path), str(label_path)))
            if not found:
                raise ConfigError("data_path", f"no cityscapes images in {folder}; expected {self.layout}")
            pairs[ours] = found
        return pairs, table, names


def cityscapes_train_ids() -> tuple[np.ndarray, list[str]]:
    """A 256-entry table from Cityscapes label ids to train ids (0..18, else the ignore label), and
    the train ids' names, from the official `cityscapesscripts` definitions."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise ConfigError("dataset", "cityscapes maps its label ids with the official cityscapesscripts "
                          "package: pip install 'raynas[segmentation]'") from None
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    names: dict[int, str] = {}
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < IGNORE_INDEX:
            table[label.id] = label.trainId
            names.setdefault(label.trainId, label.name)
    return table, [names[k] for k in sorted(names)]


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


@register_dataset
class VOC(OfficialSegmentation):
    name = "voc"
    summary = "PASCAL VOC 2012 segmentation (--data: VOCdevkit/VOC2012), 21 classes at 128x128"
    layout = ("VOCdevkit/VOC2012 (or a folder holding VOCdevkit) with JPEGImages/, SegmentationClass/ and "
              "ImageSets/Segmentation/{train,val}.txt")
    size = (128, 128)

    def pairs(self) -> tuple[dict[str, list[tuple[str, str]]], np.ndarray | None, list[str]]:
        root = self.root()
        if (root / "VOCdevkit" / "VOC2012").is_dir():
            root = root / "VOCdevkit" / "VOC2012"
        pairs = {}
        for split, ours in (("train", "train"), ("val", "test")):
            listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not listing.is_file():
                raise ConfigError("data_path", f"not found: {listing}", self.layout)
            stems = listing.read_text().split()
            if not stems:
                raise ConfigError("data_path", f"no voc images in {listing}; expected {self.layout}")
            pairs[ours] = [(str(root / "JPEGImages" / f"{s}.jpg"), str(root / "SegmentationClass" / f"{s}.png"))
                           for s in stems]
        return pairs, None, list(VOC_CLASSES)
