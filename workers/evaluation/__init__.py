"""Evaluators: the multi-fidelity interface (`base`) and its implementations by name, as specs
and the command line refer to them.

`get_evaluator("table", space, dataset="cifar10")` looks NB201 cells up;
`get_evaluator("train", space, dataset="digits", data_path=None, seed=0, **train_options)`
loads the dataset once and trains every child (options are `TrainConfig` fields
plus the dataset options `max_train`, `val_fraction`, `augment`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raynas.common import ConfigError
from raynas.search_spaces import SearchSpace, get_space
from raynas.workers.evaluation.base import (
    CANCELLED,
    FAILED,
    OK,
    Cancelled,
    EvalResult,
    Evaluator,
    Fidelity,
    Report,
    resolve_arch,
)
from raynas.workers.evaluation.table import TableEvaluator

DATASET_OPTIONS = ("max_train", "val_fraction", "augment")
TABLE_OPTIONS = ("dataset", "sleep")


def _table(space: SearchSpace, **options: Any) -> Evaluator:
    _reject_unknown("table", options, TABLE_OPTIONS)
    return TableEvaluator(space, **options)


def _train(space: SearchSpace, dataset: str = "digits", data_path: str | None = None, seed: int = 0,
           **options: Any) -> Evaluator:
    """`seed` fixes the train/validation split; each evaluation brings its own training seed."""
    # Imported here so that table-only processes (e.g. `nas bench`) never import torch.
    from raynas.workers.datasets import load_dataset
    from raynas.workers.evaluation.train import TrainEvaluator
    from raynas.workers.training import TrainConfig

    _reject_unknown("train", options, TrainConfig.field_names() + DATASET_OPTIONS)
    config = TrainConfig(**{k: v for k, v in options.items() if k not in DATASET_OPTIONS})
    data = load_dataset(dataset, data_path, seed, **{k: v for k, v in options.items() if k in DATASET_OPTIONS})
    return TrainEvaluator(space, data, config)


_FACTORIES: dict[str, Callable[..., Evaluator]] = {"train": _train, "table": _table}
EVALUATORS = tuple(_FACTORIES)


def get_evaluator(name: str, space: SearchSpace | str, **options: Any) -> Evaluator:
    """The evaluator called `name` for `space` (a SearchSpace or its name).

    Raises ConfigError for an unknown name, an unknown option, or a space the
    evaluator cannot score (the table covers nb201 only).
    """
    if name not in _FACTORIES:
        raise ConfigError("evaluator", f"unknown evaluator {name!r}", EVALUATORS)
    if isinstance(space, str):
        space = get_space(space)
    return _FACTORIES[name](space, **options)


def _reject_unknown(prefix: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", "unknown option", sorted(allowed))


__all__ = ["CANCELLED", "EVALUATORS", "FAILED", "OK", "Cancelled", "EvalResult", "Evaluator", "Fidelity", "Report",
           "TableEvaluator", "get_evaluator", "resolve_arch"]
