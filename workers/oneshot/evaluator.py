"""A one-shot search as an evaluation: search the supernet with the task's seed, report its
progress (each epoch's monitors), then score the architecture(s) it names with the ordinary
evaluator.

DARTS' selection protocol (Liu et al., sec. 3.3: four searches with different seeds, each derived
cell trained from scratch for a short while, the best by validation accuracy kept) is a job of R
of these evaluations whose ordinary evaluator is that short training (controller/runtime/work.py
gives one-shot strategies the space's `nas train` recipe, shortened, as their child training);
the final training of the kept cell over several seeds is `nas train --seeds N`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from raynas.common import ConfigError
from raynas.search_spaces import SearchSpace
from raynas.workers.datasets import Data, require_task
from raynas.workers.evaluation.base import Cancelled, EvalResult, Evaluator, Fidelity, Report
from raynas.workers.oneshot.registry import supernet_for
from raynas.workers.oneshot.search import SupernetConfig, search_epochs

#: Figures of the search's last epoch repeated in the evaluation's metrics (every report goes to
#: the run's oneshot.jsonl).
SUMMARY = ("skip_count", "val_acc", "val_loss", "alpha_entropy_fraction")
#: Figures only some searches report (Auto-DeepLab's, the recurrent cell's), repeated in the metrics where present.
EXTRA_SUMMARY = ("val_miou", "path", "beta_entropy_fraction", "val_ppl")


class OneShotSearch(Evaluator):
    """Evaluates nothing given: each evaluation derives its own architecture (`arch` must be None).

    Its budget is the search's epochs; the cosine schedule spans them all, so only the
    full search is offered. Given a checkpoint file, the search keeps its state there after
    every epoch and the candidates' evaluations keep theirs beside it (`<file>.child<i>`), so
    an evaluation run again on the same file (a resumed job, a retried task) continues.
    """

    name = "one-shot"

    def __init__(self, space: SearchSpace, dataset: Data, config: SupernetConfig, evaluator: Evaluator):
        require_task(dataset, supernet_for(space.name).task, f"one-shot searches on the {space.name} space")
        self.space, self.dataset, self.evaluator = space, dataset, evaluator
        self.config = config.resolved(space.name)
        epochs = self.config.epochs
        self.fidelity = Fidelity(maximum=epochs, default=epochs, choices=(epochs,))

    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        if arch is not None:
            raise ConfigError("arch", "a one-shot search derives its architecture; submit its task with arch None")
        history: list[dict[str, Any]] = []
        try:
            for epoch in search_epochs(self.space, self.dataset, self.config, seed, checkpoint):
                history.append(epoch)
                report(dict(epoch))
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed search is a failed evaluation, not a dead job
            genotype = next((r["genotype"] for r in reversed(history) if "genotype" in r), "")
            return EvalResult.failure(genotype, f"one-shot search failed: {type(exc).__name__}: {exc}",
                                      epochs=len(history))
        candidates = history[-1]["candidates"]
        results = [self.evaluator.evaluate(c, seed, checkpoint=f"{checkpoint}.child{i}" if checkpoint else None)
                   for i, c in enumerate(candidates)]
        scored = [r for r in results if r.ok]
        result = max(scored, key=lambda r: r.reward) if scored else results[0]
        searched = [r for r in history if r.get("stage", "train") == "train"]
        last = next((r for r in reversed(history) if "genotype" in r), {})
        # This evaluation's budget is the search's epochs; the genotype's own evaluation keeps its budget here.
        result.metrics["one_shot"] = {
            "algorithm": self.config.algorithm, "epochs": len(searched),
            "evaluation_budget": result.metrics.pop("budget", None),
            "search_time_s": sum(r.get("wall_time_s", 0.0) for r in history),
            "genotype": result.arch, **{k: last.get(k) for k in SUMMARY},
            **{k: last[k] for k in EXTRA_SUMMARY if k in last}, **self.config.search_class().summary(history),
            "skip_count_per_epoch": [r.get("skip_count") for r in searched],
            "stopped_early": history[-1].get("stopped_early"),
            "candidates": [{"arch": r.arch, "reward": r.reward, "status": r.status} for r in results],
        }
        return result


def search_evaluator(config: SupernetConfig, space: SearchSpace, dataset: Data, evaluator: Evaluator) -> Evaluator:
    """What a one-shot strategy's evaluations are: the search its settings drive in front of `evaluator`."""
    return OneShotSearch(space, dataset, config, evaluator)
