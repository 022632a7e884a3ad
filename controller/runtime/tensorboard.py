"""TensorBoard event files in a run directory, beside its JSON logs.

The run directory's logs are the record; these files are a view of them for `tensorboard
--logdir runs/`, where each run directory under runs/ is one run and several searches show side
by side. The logs are written first (fsynced) and this view after, so it can never cost a
record: a writer that fails (a full disk, a broken protobuf) logs one warning and stops, and
the search goes on.

Each process that appends to a run directory (the recorder, the driver) has its own event
file there; TensorBoard merges the files of one directory into one run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raynas.controller.runtime.event_file import Event, EventFile, Summary, histogram, scalar

log = logging.getLogger(__name__)

#: An evaluation's metrics shown per evaluation (where it has them): the scoring accuracy of each
#: kind of evaluator, its size and cost, and the budget (epochs) it reached.
EVALUATION_SCALARS = ("val_acc_best", "val_miou_best", "val_ppl_best", "test_acc_200ep", "valid_acc_12ep",
                      "params", "flops", "train_time_s", "wall_time_s", "simulated_time_s", "budget")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flat(value: Any) -> list[float] | None:
    """The numbers of a (nested) list, or None when it holds anything else."""
    if _number(value):
        return [float(value)]
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        numbers = _flat(item)
        if numbers is None:
            return None
        out += numbers
    return out


class RunBoard:
    """The TensorBoard view of one run directory: `write(view, records)` after each append. `history`
    reads the evaluations already logged (a resumed search's); `rank` orders successful ones, as
    the search's result does (under a scheduler, the budget reached first: a child stopped at a
    rung never shows as the best so far above one trained to the full budget)."""

    def __init__(self, path: str | Path, history: Callable[[], list[dict[str, Any]]],
                 rank: Callable[[dict[str, Any]], tuple]):
        self.path = Path(path)
        self.history, self.rank = history, rank
        self.best: dict[str, Any] | None = None
        self.failed = 0
        self.decisions = 0
        self._counted = False
        self._writer = None
        self._broken = False

    def write(self, view: str, records: list[dict[str, Any]]) -> None:
        """Add `records` through the view of their log (rundir's VIEWS names it)."""
        if self._broken or not records:
            return
        try:
            if self._writer is None:
                self._writer = EventFile(self.path)
            getattr(self, view)(records)
            self._writer.flush()
        except Exception as exc:  # noqa: BLE001 - any failure of the view must leave the search running
            self._broken = True
            log.warning("TensorBoard files in %s stop here (%s: %s); the JSON logs keep every record",
                        self.path, type(exc).__name__, exc)

    def _event(self, step: int, values: list[Any], wall: float | None = None) -> None:
        """One event of all the values a record has at its step (one frame, one checksum)."""
        if values:
            self._writer.write(Event(summary=Summary(value=values), step=step, wall_time=wall or time.time()))

    def evaluations(self, records: list[dict[str, Any]]) -> None:
        if not self._counted:
            # A resumed search goes on from the best and the failures its log already holds.
            self._counted = True
            fresh = {r["id"] for r in records}
            prior = [r for r in self.history() if r["id"] not in fresh]
            self.failed = sum(r.get("reward") is None for r in prior)
            self.best = max((r for r in prior if r.get("reward") is not None), key=self.rank, default=None)
        for r in records:
            metrics = r.get("metrics") or {}
            if r.get("reward") is None:
                self.failed += 1
                values = [scalar("evaluation/failed", self.failed)]
            else:
                if self.best is None or self.rank(r) > self.rank(self.best):
                    self.best = r
                values = [scalar("evaluation/reward", r["reward"]),
                          scalar("evaluation/best_so_far", self.best["reward"])]
            values += [scalar(f"evaluation/{key}", metrics[key]) for key in EVALUATION_SCALARS
                       if _number(metrics.get(key))]
            self._event(r["index"], values, r.get("finished_at"))

    def one_shot_epochs(self, records: list[dict[str, Any]]) -> None:
        """Each weight-sharing search (`run`) and stage apart; numbers as scalars, lists of numbers
        (alphas, betas, per-edge entropies) as histograms of their values."""
        for r in records:
            prefix = f"oneshot/run{r.get('run', 0)}" + (f"/{r['stage']}" if r.get("stage") else "")
            values = []
            for key, value in r.items():
                if key in ("run", "stage", "epoch"):
                    continue
                if _number(value):
                    values.append(scalar(f"{prefix}/{key}", value))
                elif (numbers := _flat(value)) is not None:
                    values.append(histogram(f"{prefix}/{key}", np.asarray(numbers)))
            self._event(r.get("epoch", 0), values)

    def strategy_rounds(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self._event(r["iteration"], [scalar(f"strategy/{key}", value) for key, value in r.items()
                                        if key != "iteration" and _number(value)])

    def rungs(self, records: list[dict[str, Any]]) -> None:
        """ASHA's bar at each rung, stepped by its decisions in this process (the log's order)."""
        for r in records:
            self.decisions += 1
            if _number(r.get("cutoff")):
                self._event(self.decisions, [scalar(f"rung/{r['rung']:g}/cutoff", r["cutoff"])])
