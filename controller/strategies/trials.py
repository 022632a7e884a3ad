"""A strategy driven by someone else's trial loop (Ray Tune's searcher interface, in
controller/cluster/tune.py): one configuration per trial, the trial's results as they come,
its end. The book keeps which architecture each trial runs, turns a trial's last result into
the `EvalResult` the strategy observes (with the budget it reached), and holds everything in
a state dict that survives `torch.save`/`torch.load(weights_only=True)`.

Plain Python: the runtime extends it to claim evaluation ids from the ledger and record
every trial in the run directory (controller/runtime/tuning.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from typing import Any

from raynas.common import ConfigError, check_choice
from raynas.controller.strategies.base import Strategy
from raynas.workers.evaluation import EvalResult

#: `suggest`'s answer once the book will hand out no more trials.
FINISHED = "FINISHED"
#: The result key of raynas's own trainable: the trial's evaluation (an `EvalResult`) as JSON.
EVALUATION = "evaluation"
MODES = ("max", "min")


class TrialBook:
    """The trials of one strategy.

    `metric` and `mode` say what a user's trainable reports (a "min" metric is negated into a
    reward: strategies maximise); `budget_attr` is the result key that counts the budget a
    trial reached (Tune's `training_iteration` by default), and `max_budget` the budget of a
    whole trial, if a scheduler may stop trials before it (the strategy then weighs early-stopped
    results by the share they reached, see `Strategy.fidelity`). Results of raynas's own
    trainable carry the whole evaluation, which is used as it is.
    """

    def __init__(self, strategy: Strategy, metric: str | None = None, mode: str | None = None,
                 budget_attr: str = "training_iteration", max_budget: int | None = None):
        self.strategy = strategy
        self.metric = metric
        self.mode = mode
        self.budget_attr = budget_attr
        self.max_budget = max_budget
        strategy.full_budget = max_budget
        if mode is not None:
            check_choice("mode", mode, MODES)
        #: trial id -> {"arch": text, "curve": [metric per result], "budget": last budget seen}.
        self.trials: dict[str, dict[str, Any]] = {}

    def configure(self, metric: str | None, mode: str | None) -> bool:
        """Take the tuner's metric and mode where the book was given none; False if it has its own."""
        if (self.metric and metric) or (self.mode and mode):
            return False
        if mode is not None:
            check_choice("mode", mode, MODES)
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    # -- the loop's calls -----------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The configuration of a new trial: `{"arch": <the architecture's text>}`."""
        (arch,) = self.strategy.propose(1)
        text = self.strategy.space.format(arch)
        self.trials[trial_id] = {"arch": text, "curve": [], "budget": None}
        return {"arch": text}

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        """An intermediate result of a live trial: its curve grows."""
        trial = self.trials.get(trial_id)
        if trial is not None:
            self._take(trial, result)

    def complete(self, trial_id: str, result: dict[str, Any] | None, error: bool = False
                 ) -> tuple[Hashable, EvalResult] | None:
        """A trial ended (finished, stopped by the scheduler, failed, or removed before it ran):
        the strategy observes it, once. None for a trial this book does not hold."""
        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return None
        arch = self.strategy.space.parse(trial["arch"])
        evaluation = self.evaluation(trial, result, error)
        self.settle(trial, arch, evaluation)
        self.strategy.observe(arch, evaluation)
        return arch, evaluation

    def settle(self, trial: dict[str, Any], arch: Hashable, evaluation: EvalResult) -> None:
        """What happens to an ended trial before the strategy learns from it (the runtime records it)."""

    def evaluation(self, trial: dict[str, Any], result: dict[str, Any] | None, error: bool) -> EvalResult:
        """The EvalResult a trial's last result stands for."""
        if result and isinstance(result.get(EVALUATION), str):
            return EvalResult.from_dict(json.loads(result[EVALUATION]))
        if result:
            self._take(trial, result)
        metrics = {"budget": trial["budget"], "curve": trial["curve"]}
        if error:
            return EvalResult.failure(trial["arch"], "the trial raised an error", **metrics)
        if not result:
            return EvalResult.cancelled(trial["arch"], "the trial was removed before it reported", **metrics)
        value = result.get(self.metric) if self.metric else None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return EvalResult.failure(trial["arch"], f"the trial reported no finite {self.metric!r}", **metrics)
        return EvalResult(trial["arch"], float(value) if self.mode != "min" else -float(value), metrics=metrics)

    def _take(self, trial: dict[str, Any], result: dict[str, Any]) -> None:
        """One result into the trial's curve; a result at the budget already taken is the same one
        again (Tune repeats the last result when a trial ends)."""
        budget = result.get(self.budget_attr)
        if budget is not None and budget == trial["budget"]:
            return
        value = result.get(self.metric) if self.metric else None
        if isinstance(value, (int, float)):
            trial["curve"].append(float(value))
        trial["budget"] = budget

    def live(self) -> list[str]:
        """Trials suggested and not yet complete."""
        return list(self.trials)

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy.state_dict(), "trials": json.loads(json.dumps(self.trials)),
                "metric": self.metric, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "strategy" not in state:
            raise ConfigError("searcher", "the saved searcher state is not a raynas trial book's")
        self.strategy.load_state_dict(state["strategy"])
        self.trials = {k: dict(v) for k, v in state["trials"].items()}
        self.metric = self.metric or state["metric"]
        self.mode = self.mode or state["mode"]
