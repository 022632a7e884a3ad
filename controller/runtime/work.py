"""What each evaluation of a search runs: the spec's evaluator, behind the strategy's
weight-sharing search when the strategy declares one. Built wherever the work runs (this
process, or each Ray worker from a pickled `EvaluatorFactory`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raynas.controller.runtime.spec import SearchSpec
from raynas.search_spaces import get_space
from raynas.workers.evaluation import Evaluator, get_evaluator


def base_evaluator(spec: SearchSpec, one_shot: bool = False) -> Evaluator:
    """The spec's evaluator (training or table lookup) for its space. What a one-shot search
    derives is trained as DARTS' selection protocol trains it: the space's `nas train` recipe,
    shortened (workers/retrain.py `selection_recipe`); the spec's training options override it."""
    space = get_space(spec.space, **spec.space_options)
    if spec.evaluator == "table":
        return get_evaluator("table", space, **spec.table)
    train = dict(spec.train)
    if one_shot:
        from raynas.workers.retrain import selection_recipe  # torch: not for table-only processes

        train = {**selection_recipe(spec.space, spec.dataset), **train}
    if spec.scheduler != "none":
        # Under a scheduler a child's schedule spans R epochs, wherever it is stopped.
        train["epochs"] = spec.ladder().maximum
    if spec.runtime == "ray":
        # A worker's share of the machine: more intra-op threads than reserved CPUs
        # only makes concurrent children fight over cores.
        train.setdefault("num_threads", max(1, int(spec.cpus_per_child)))
    return get_evaluator("train", space, dataset=spec.dataset, data_path=spec.data_path, seed=spec.seed, **train)


@dataclass(frozen=True)
class EvaluatorFactory:
    """Builds a search's evaluator; picklable, so each Ray worker builds its own.

    `search` and `options` come from the strategy (`Needs.search` and its typed options),
    resolved by the driver, so a worker never needs the strategy registry.
    """

    spec: SearchSpec
    search: Callable[..., Evaluator] | None = None
    options: Any = None

    @classmethod
    def for_spec(cls, spec: SearchSpec) -> EvaluatorFactory:
        strategy, options = spec.strategy_config()
        return cls(spec, strategy.needs.search, options) if strategy.needs.search else cls(spec)

    def __call__(self) -> Evaluator:
        evaluator = base_evaluator(self.spec, one_shot=self.search is not None)
        if self.search is None:
            return evaluator
        from raynas.workers.datasets import load_dataset

        spec = self.spec
        space = get_space(spec.space, **spec.space_options)
        return self.search(self.options, space, load_dataset(spec.dataset, spec.data_path, seed=spec.seed), evaluator)
