"""Tiny datasets written at test time in every layout the datasets read, from real images (600
CIFAR-10 images in tests/data, scikit-learn's digits) where the layout holds images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR = Path(__file__).parent / "data" / "cifar10_600.npz"


def cifar(n_train: int = 500, n_test: int = 100) -> dict[str, np.ndarray]:
    """`n_train` training and `n_test` test images of the bundled CIFAR-10 subset (at most 500 and 100)."""
    with np.load(CIFAR, allow_pickle=False) as archive:
        data = {k: archive[k] for k in archive.files}
    picked = {}
    for split, n in (("train", n_train), ("test", n_test)):
        # Classes in turn (each class's images in their order), so that any few images hold every class.
        y = data[f"y_{split}"]
        rank = np.empty(len(y), dtype=np.int64)
        for k in np.unique(y):
            rank[y == k] = np.arange((y == k).sum())
        order = np.lexsort((y, rank))[:n]
        picked[f"x_{split}"], picked[f"y_{split}"] = data[f"x_{split}"][order], y[order]
    return {**picked, "class_names": data["class_names"]}


def png(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    # Palette masks keep the class indices of 8-bit grey as their palette indices.
    (image.convert("P") if palette else image).save(path)
    return path


def image_folder(root: Path, n_train: int = 200, n_test: int = 50, split: bool = True, suffix: str = ".png",
                 val: int = 0) -> Path:
    """CIFAR-10 images as an image folder: train/<class>/ and test/<class>/ (and val/ with `val` of
    the training images), or a subfolder per class at the top (`split` False)."""
    data = cifar(n_train + val, n_test)
    names = [str(c) for c in data["class_names"]]
    parts = {"train": (data["x_train"][:n_train], data["y_train"][:n_train])}
    if split:
        parts["test"] = (data["x_test"], data["y_test"])
        if val:
            parts["val"] = (data["x_train"][n_train:], data["y_train"][n_train:])
    for part, (x, y) in parts.items():
        base = root / part if split else root
        for i, (image, label) in enumerate(zip(x, y)):
            png(base / names[label] / f"{part}_{i:05d}{suffix}", image)
    return root


def arrays_npz(path: Path, n_train: int = 200, n_test: int = 50) -> Path:
    data = cifar(n_train, n_test)
    np.savez(path, **data)
    return path


def arrays_npy(folder: Path, n_train: int = 200, n_test: int = 50) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in cifar(n_train, n_test).items():
        np.save(folder / f"{name}.npy", array)
    return folder


def seg_folder(root: Path, n_train: int = 40, n_test: int = 10) -> Path:
    """digits-seg canvases (real digits composed on 32x32) as images/ and masks/ PNGs."""
    from raynas.workers.datasets.segmentation import compose_digits

    (x_train, y_train), (x_test, y_test) = compose_digits()
    for part, x, y in (("train", x_train[:n_train], y_train[:n_train]), ("test", x_test[:n_test], y_test[:n_test])):
        for i, (image, mask) in enumerate(zip(x, y)):
            png(root / part / "images" / f"{i:04d}.png", (image[0] * 255 / 16).astype(np.uint8))
            png(root / part / "masks" / f"{i:04d}.png", mask.astype(np.uint8))
    (root / "classes.txt").write_text("\n".join(["background", *map(str, range(10))]) + "\n")
    return root


def mnist_npz(path: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), y_train=np.arange(n_train) % 10,
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), y_test=np.arange(n_test) % 10)
    return path


def cifar_npz(path: Path, n_train: int = 30, n_test: int = 10) -> Path:
    data = cifar(n_train, n_test)
    np.savez(path, x_train=data["x_train"], y_train=data["y_train"], x_test=data["x_test"], y_test=data["y_test"])
    return path


def cifar_batches(folder: Path, per_batch: int = 6) -> Path:
    """CIFAR-10's python batches (data_batch_1..5, test_batch) of real images."""
    data = cifar(6 * per_batch, per_batch)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        x, y = (data["x_test"], data["y_test"]) if name == "test_batch" else (
            data["x_train"][k * per_batch:(k + 1) * per_batch], data["y_train"][k * per_batch:(k + 1) * per_batch])
        batch = {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": [int(v) for v in y]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def text_folder(folder: Path, names: tuple[str, str, str] = ("train.txt", "valid.txt", "test.txt"),
                lines: tuple[int, int, int] = (300, 40, 40)) -> Path:
    """A corpus of a 40-word language made by a fixed first-order Markov chain, so that a model can
    learn something in a few steps."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    follow = {w: rng.sample(words, 3) for w in words}
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in zip(names, lines):
        text, word = [], words[0]
        for _ in range(count):
            line = []
            for _ in range(12):
                word = rng.choice(follow[word])
                line.append(word)
            text.append(" " + " ".join(line) + " ")
        (folder / name).write_text("\n".join(text) + "\n")
    return folder


def ptb_folder(folder: Path) -> Path:
    return text_folder(folder, ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"))


def cityscapes_folder(root: Path) -> Path:
    """Cityscapes' layout: label ids 7 (road, train id 0), 26 (car, 13), 0 (unlabelled, ignored)."""
    rng = np.random.default_rng(0)
    ids = np.zeros((64, 128), dtype=np.uint8)
    ids[:32], ids[32:, :64] = 7, 26
    for split, cities in (("train", ("aachen", "bonn")), ("val", ("lindau",))):
        for city in cities:
            for frame in range(3):
                stem = f"{city}_000000_{frame:06d}"
                png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                    rng.integers(0, 255, (128, 256, 3), dtype=np.uint8))
                png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                    np.kron(ids, np.ones((2, 2), dtype=np.uint8)))
    return root


def voc_folder(root: Path) -> Path:
    """VOCdevkit/VOC2012 with a person (15) and the boundary band (255) in every mask."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    mask = np.zeros((100, 120), dtype=np.uint8)
    mask[10:50, 20:80], mask[50:52] = 15, 255
    rng = np.random.default_rng(0)
    for split, stems in (("train", ["2007_000032", "2007_000039"]), ("val", ["2007_000033"])):
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for stem in stems:
            (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(voc / "JPEGImages" /
                                                                                      f"{stem}.jpg")
            png(voc / "SegmentationClass" / f"{stem}.png", mask, palette=True)
    return root
