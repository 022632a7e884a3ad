"""A one-shot search as an evaluation: search the supernet with the task's seed, report each
epoch's monitors, derive the genotype, then score it with the ordinary evaluator.

DARTS' own selection protocol (run the search several times, train each derived cell,
keep the best) is then just R evaluations of this kind, run in parallel like any others.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from raynas.common import ConfigError
from raynas.search_spaces import SearchSpace
from raynas.workers.data import Dataset
from raynas.workers.evaluation.base import Cancelled, EvalResult, Evaluator, Fidelity, Report
from raynas.workers.oneshot.search import OneShotConfig, search_epochs

#: Per-epoch figures repeated in the evaluation's metrics (every report goes to the run's oneshot.jsonl).
SUMMARY = ("skip_count", "val_acc", "val_loss", "genotype")


class OneShotSearch(Evaluator):
    """Evaluates nothing given: each evaluation derives its own architecture (`arch` must be None).

    Its budget is the search's epochs; the cosine schedule spans them all, so only the
    full search is offered.
    """

    name = "one-shot"

    def __init__(self, space: SearchSpace, dataset: Dataset, config: OneShotConfig, evaluator: Evaluator):
        self.space, self.dataset, self.config, self.evaluator = space, dataset, config, evaluator
        self.fidelity = Fidelity(maximum=config.epochs, default=config.epochs, choices=(config.epochs,))

    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        if arch is not None:
            raise ConfigError("arch", "a one-shot search derives its architecture; submit its task with arch None")
        history: list[dict[str, Any]] = []
        try:
            for epoch in search_epochs(self.space, self.dataset, self.config, seed):
                history.append(epoch)
                report({**epoch, "epoch": epoch["epoch"] + 1})
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed search is a failed evaluation, not a dead job
            genotype = history[-1]["genotype"] if history else ""
            return EvalResult.failure(genotype, f"one-shot search failed: {type(exc).__name__}: {exc}",
                                      epochs=len(history))
        result = self.evaluator.evaluate(history[-1]["genotype"], seed)
        # This evaluation's budget is the search's epochs; the genotype's own evaluation keeps its budget here.
        result.metrics["one_shot"] = {
            "algorithm": self.config.algorithm, "epochs": len(history),
            "evaluation_budget": result.metrics.pop("budget", None),
            "search_time_s": sum(r.get("wall_time_s", 0.0) for r in history),
            **{k: history[-1].get(k) for k in SUMMARY},
            "skip_count_per_epoch": [r.get("skip_count") for r in history],
        }
        return result


def search_evaluator(config: OneShotConfig, space: SearchSpace, dataset: Dataset, evaluator: Evaluator) -> Evaluator:
    """What a supernet strategy's evaluations are: this config's search in front of `evaluator`."""
    return OneShotSearch(space, dataset, config, evaluator)
