"""Datasets: one interface (`Dataset` plug-ins loading `Data`), one registry, the built-ins and
your own data.

Built in: digits (bundled), mnist, cifar10, ptb, digits-seg (bundled), cityscapes, voc. Yours:
image-folder, arrays, text-folder, seg-folder. A new dataset is one module with a `@register_dataset`
subclass of `Dataset`, imported here or named as a plug-in (common/plugins.py).

    data = get_dataset("image-folder", "/data/flowers", {"image_size": 64}).load(seed=0)
    for x, y in data.train_batches(64, torch.Generator().manual_seed(0)): ...

The search service reads datasets only under the roots its operator allows (`check_data_root`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from raynas.common import ConfigError
from raynas.common.plugins import load_plugins
from raynas.workers.datasets.base import (
    CLASSIFICATION,
    LANGUAGE_MODEL,
    SEGMENTATION,
    TASKS,
    Data,
    Dataset,
    ImageOptions,
    StreamOptions,
    TextOptions,
)

_REGISTRY: dict[str, type[Dataset]] = {}
_BUILT_IN = ("arrays", "files", "text", "segmentation")


def register_dataset(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator: make a dataset available under `cls.name`."""
    if not cls.name or cls.task not in TASKS:
        raise ConfigError("dataset", f"{cls.__name__} needs a name and a task", TASKS)
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in _BUILT_IN:
        importlib.import_module(f"{__name__}.{module}")
    load_plugins()


def dataset_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def dataset_class(name: str) -> type[Dataset]:
    """The registered dataset called `name`; a ConfigError listing the others if none is."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError("dataset", f"unknown dataset {name!r}", list(_REGISTRY))
    return _REGISTRY[name]


def get_dataset(name: str, path: str | os.PathLike | None = None, options: Mapping[str, Any] | None = None
                ) -> Dataset:
    """The dataset `name` at `path` with its `options`, checked without reading anything."""
    return dataset_class(name)(path, options)


def load_dataset(name: str = "digits", path: str | os.PathLike | None = None, seed: int = 0, **options: Any) -> Data:
    """Read `name` (at `path`) with its options: `get_dataset(name, path, options).load(seed)`."""
    return get_dataset(name, path, options).load(seed)


def require_task(data: Dataset | Data, task: str, who: str) -> None:
    """Refuse data of another task than `task`, which `who` (e.g. "the nb201 space's networks") needs,
    naming the datasets that would do."""
    if data.task != task:
        fitting = [name for name in dataset_names() if _REGISTRY[name].task == task]
        raise ConfigError("dataset", f"{who} need {task.replace('_', ' ')} data; {data.name} is a "
                          f"{data.task.replace('_', ' ')} dataset", fitting)


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


__all__ = ["CLASSIFICATION", "LANGUAGE_MODEL", "SEGMENTATION", "TASKS", "Data", "Dataset", "ImageOptions",
           "StreamOptions", "TextOptions", "check_data_root", "dataset_class", "dataset_names", "get_dataset",
           "load_dataset", "register_dataset", "require_task"]
