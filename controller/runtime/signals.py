"""A strategy's own per-iteration figures (`Strategy.signals()`, e.g. NAO's predictor error)
written where people watch: the run's strategy.jsonl, one line per iteration, which the
service streams to watchers, and the `nas_strategy_signal` gauges."""

from __future__ import annotations

from typing import Any

from raynas.controller.cluster import metrics
from raynas.controller.runtime.rundir import STRATEGY_LOG, RunDirectory


class SignalLog:
    """Appends the signals a strategy has that the log lacks. A resumed strategy holds every
    signal of its checkpoint, and the log may hold more (written before a crash that lost the
    checkpoint after them): those come again, identical, from the repeated iterations, so only
    what is beyond the log is written."""

    def __init__(self, run: RunDirectory, job: str):
        self.run, self.job = run, job
        run.repair_log(STRATEGY_LOG)
        self.written = len(run.records(STRATEGY_LOG))

    def update(self, signals: list[dict[str, Any]]) -> None:
        fresh = signals[self.written:]
        if not fresh:
            return
        self.run.append_many([{"iteration": self.written + i + 1, **s} for i, s in enumerate(fresh)], STRATEGY_LOG)
        self.written = len(signals)
        metrics.report_strategy_signals(self.job, fresh[-1])
