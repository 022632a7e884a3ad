"""A strategy's own per-iteration figures (`Strategy.signals()`, e.g. NAO's predictor error,
REINFORCE's baseline and entropy per update; in Zoph & Le's scheme each replica's gradient's,
written by the recorder) where people watch: the run's strategy.jsonl, one line per iteration,
which the service streams to watchers and TensorBoard shows, and the `nas_strategy_signal` gauges."""

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
        records = run.records(STRATEGY_LOG)
        #: The last iteration in the log.
        self.last = records[-1]["iteration"] if records else 0

    def update(self, signals: list[dict[str, Any]]) -> None:
        """A strategy's signals, all of them, oldest first: iteration i is the i-th."""
        self._write([(self.last + i + 1, s) for i, s in enumerate(signals[self.last:])])

    def add(self, iteration: int, signal: dict[str, Any]) -> None:
        """One iteration's signals, numbered by their caller (Zoph & Le's scheme: the gradient's number,
        given by the recorder), written unless the log holds that iteration or a later one: a call Ray
        retries brings it again."""
        if iteration > self.last:
            self._write([(iteration, signal)])

    def _write(self, numbered: list[tuple[int, dict[str, Any]]]) -> None:
        if not numbered:
            return
        self.run.append_many([{"iteration": i, **s} for i, s in numbered], STRATEGY_LOG)
        self.last = numbered[-1][0]
        metrics.report_strategy_signals(self.job, numbered[-1][1])
