"""Semantic segmentation data: the sources (the composed set, Cityscapes and VOC folders), the
ignore label, mean IoU. workers/data.py holds the dataset type (`SegmentationDataset`) and loads
these through `load_dataset`.

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

The official training images are split into train and validation (`val_fraction`), and the
official validation images are the test split, as the classification datasets do with their
test sets. Reading the image files needs Pillow (`pip install raynas[segmentation]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raynas.common import ConfigError

IGNORE_INDEX = 255
DEFAULT_VAL_FRACTION = 0.2
EXPECTED_LAYOUT = {
    "cityscapes": "a Cityscapes folder with leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
                  "gtFine/{train,val}/<city>/*_gtFine_labelIds.png",
    "voc": "VOCdevkit/VOC2012 (or a folder holding VOCdevkit) with JPEGImages/, SegmentationClass/ and "
           "ImageSets/Segmentation/{train,val}.txt",
}
#: (height, width) the images of each folder dataset are resized to: small enough to hold in memory.
SIZES = {"cityscapes": (64, 128), "voc": (128, 128)}
VOC_CLASSES = 21

# The composed set.
CANVAS = 32
DIGIT_SCALE = 2
MAX_DIGITS = 3
#: Ink (of scikit-learn's 16) from which a pixel is a stroke of its digit.
INK = 8
TRAIN_CANVASES = 1200
TEST_CANVASES = 300
COMPOSE_SEED = 0


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


# -- the composed set --------------------------------------------------------------------------------


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


def read_segmentation(name: str, path: Path | None) -> tuple[tuple, tuple, int]:
    """(training images and masks, test images and masks, number of classes) of `name`."""
    if name == "digits-seg":
        return (*compose_digits(), 11)
    read = _read_cityscapes if name == "cityscapes" else _read_voc
    return read(path, SIZES[name])


def compose_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(training canvases, test canvases), from disjoint digits, the same on every call."""
    from sklearn.datasets import load_digits  # about 2 s to import; only this set needs it

    bunch = load_digits()
    images, digits = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    rng = np.random.default_rng(COMPOSE_SEED)
    order = rng.permutation(len(digits))
    cut = int(len(order) * TRAIN_CANVASES / (TRAIN_CANVASES + TEST_CANVASES))
    train, test = order[:cut], order[cut:]
    return (compose(images[train], digits[train], TRAIN_CANVASES, rng),
            compose(images[test], digits[test], TEST_CANVASES, rng))


# -- folders in the official layouts ------------------------------------------------------------------


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("dataset", "reading Cityscapes or VOC images needs Pillow: "
                          "pip install 'raynas[segmentation]'") from None
    return Image


def _resized(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An HxWx3 uint8 image (bilinear) and its HxW label map (nearest) at `size`."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    y = F.interpolate(torch.from_numpy(label.astype(np.int64))[None, None].float(), size=size, mode="nearest")
    return x.round().clamp(0, 255).to(torch.uint8).numpy(), y[0, 0].long().numpy()


def _stack(pairs: list[tuple[np.ndarray, np.ndarray]], name: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        raise ConfigError("data_path", f"no {name} images in {where}; expected {EXPECTED_LAYOUT[name]}")
    return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])


def cityscapes_train_ids() -> np.ndarray:
    """A 256-entry table from Cityscapes label ids to train ids (0..18, else the ignore label),
    built from the official `cityscapesscripts` definitions."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise ConfigError("dataset", "cityscapes maps its label ids with the official cityscapesscripts "
                          "package: pip install 'raynas[segmentation]'") from None
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < IGNORE_INDEX:
            table[label.id] = label.trainId
    return table


def _read_cityscapes(root: Path, size: tuple[int, int]):
    image_lib = _pil()
    table = cityscapes_train_ids()
    splits = []
    for split in ("train", "val"):
        folder = root / "leftImg8bit" / split
        pairs = []
        for image_path in sorted(folder.glob("*/*_leftImg8bit.png")):
            label_path = (root / "gtFine" / split / image_path.parent.name /
                          image_path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
            if not label_path.is_file():
                raise ConfigError("data_path", f"{image_path} has no label file {label_path}",
                                  EXPECTED_LAYOUT["cityscapes"])
            image = np.asarray(image_lib.open(image_path).convert("RGB"))
            pairs.append(_resized(image, table[np.asarray(image_lib.open(label_path))], size))
        splits.append(_stack(pairs, "cityscapes", folder))
    return splits[0], splits[1], int(table[table != IGNORE_INDEX].max()) + 1


def _read_voc(root: Path, size: tuple[int, int]):
    image_lib = _pil()
    if (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    splits = []
    for split in ("train", "val"):
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise ConfigError("data_path", f"not found: {listing}", EXPECTED_LAYOUT["voc"])
        pairs = []
        for stem in listing.read_text().split():
            image = np.asarray(image_lib.open(root / "JPEGImages" / f"{stem}.jpg").convert("RGB"))
            label = np.asarray(image_lib.open(root / "SegmentationClass" / f"{stem}.png"))
            if label.ndim != 2:
                raise ConfigError("data_path", f"{stem}.png is not a palette (class index) image",
                                  EXPECTED_LAYOUT["voc"])
            pairs.append(_resized(image, label, size))
        splits.append(_stack(pairs, "voc", listing))
    return splits[0], splits[1], VOC_CLASSES
