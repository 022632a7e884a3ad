"""A dataset plug-in in one file, as a user writes one: concentric rings of 2-D points drawn as
16x16 grey images, the class being the ring. Loaded by name (RAYNAS_PLUGINS=toy_dataset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raynas.common.options import option
from raynas.workers.datasets import CLASSIFICATION, Dataset, ImageOptions, register_dataset
from raynas.workers.datasets.base import split_positions
from raynas.workers.datasets.images import ArrayReader, image_data


@dataclass(frozen=True)
class RingsOptions(ImageOptions):
    samples: int = option(600, "images to draw", most=100_000)
    rings: int = option(3, "classes: rings of growing radius", most=8)


@register_dataset
class Rings(Dataset):
    name = "toy-rings"
    task = CLASSIFICATION
    summary = "toy plug-in: rings of points drawn as 16x16 images"
    Options = RingsOptions

    def load(self, seed: int = 0):
        o = self.options
        rng = np.random.default_rng(1234)  # the set itself is fixed; `seed` draws the split
        labels = rng.integers(0, o.rings, o.samples)
        angle = rng.uniform(0, 2 * np.pi, o.samples)
        radius = (labels + 1) * 6.5 / o.rings + rng.normal(0, 0.4, o.samples)
        images = np.zeros((o.samples, 1, 16, 16), dtype=np.uint8)
        for i, (a, r) in enumerate(zip(angle, radius)):
            for t in np.linspace(0, 2 * np.pi, 24, endpoint=False):
                y, x = int(round(7.5 + r * np.sin(a + t))), int(round(7.5 + r * np.cos(a + t)))
                if 0 <= y < 16 and 0 <= x < 16:
                    images[i, 0, y, x] = 255
        at = split_positions({"train": o.samples}, seed, o.val_fraction or 0.2, o.max_train)
        return image_data(self.name, CLASSIFICATION, ArrayReader([(images, labels)]), at, o.rings,
                          [f"ring {k}" for k in range(o.rings)], seed=seed)
