"""What a terminal user sees while a search or a benchmark runs: a line per step of the start-up
(Ray starting, actors coming up), then a live progress line (plain lines for logs).

Code that starts things (controller/cluster) says so through `cluster.phase(...)`, a log record
on the `raynas.phases` logger, whatever runs it; a job that shows progress prints them while it
runs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from raynas.controller.cluster.launch import PHASES

#: Seconds between the reminders that a search is still waiting for its first result.
WAITING_EVERY_S = 15.0


def one_shot_epoch(run: int, epoch: int, monitors: dict) -> str:
    """A one-shot search's epoch in one line, as `nas search` and `nas watch` show it."""
    def shown(value):
        return f"{value:.4g}" if isinstance(value, float) else value

    stage = monitors.get("stage", "epoch")
    if stage == "train":
        said = f"train loss {shown(monitors.get('train_loss'))}"
    else:
        score = "val_miou" if "val_miou" in monitors else "val_acc"
        said = (f"skip-connections {monitors.get('skip_count')}, {score} {shown(monitors.get(score))}, "
                f"{monitors.get('genotype')}")
    return f"one-shot run {run} {stage} {epoch}: {said}"


def evaluations_line(done: int, failed: int, added: int | None, seconds: float) -> str:
    """What a finished run holds, as `nas search` and `nas result` end with it. The time is this
    run's alone, so a resumed one says what it added in it (`added` None: a result from before
    results counted it)."""
    if added is None or added == done:
        return f"{done} evaluations ({failed} failed) in {seconds:.1f} s"
    return f"{done} evaluations ({failed} failed); this run added {added} in {seconds:.1f} s"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = 0
        self.failed = 0
        self.best: float | None = None
        self._first = threading.Event()

    def update(self, record: dict) -> None:
        """A finished evaluation."""
        self._first.set()
        reward = record.get("reward")
        if reward is None:
            self.failed += 1
        elif self.best is None or reward > self.best:
            self.best = reward
        best = "-" if self.best is None else f"{self.best:.4f}"
        last = f"failed ({record.get('reason')})" if reward is None else f"{reward:.4f}"
        self.step(f"best {best} last {last}", str(record.get("arch")))

    def step(self, text: str, tail: str = "") -> None:
        """One of `total` steps done: the bar, the count, `text`, the time so far, and `tail`."""
        self.done += 1
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {text} {self.elapsed():.0f}s  {tail}".rstrip()
        if self.live:
            self.stream.write("\r\x1b[2K" + line[:200])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        """A line of its own, stamped with the time since the start (a live bar is redrawn below it)."""
        if not self.enabled:
            return
        self.stream.write(("\r\x1b[2K" if self.live else "") + f"[{self.elapsed():6.1f}s] {message}\n")
        self.stream.flush()

    @contextmanager
    def announcing(self, waiting: str) -> Iterator[None]:
        """While the block runs: each start-up phase on a line, and every WAITING_EVERY_S seconds
        until the first result a reminder of what it is `waiting` for (workers importing torch and
        building their evaluator say nothing themselves)."""
        if not self.enabled:
            yield
            return
        handler = _PhaseHandler(self, waiting)
        PHASES.addHandler(handler)
        PHASES.setLevel(logging.INFO)
        ended = threading.Event()

        def remind() -> None:
            while not ended.wait(WAITING_EVERY_S) and not self._first.is_set():
                self.say(f"no result yet, {self.elapsed() - handler.since:.0f} s after the last step: "
                         f"{handler.waiting}")

        reminder = threading.Thread(target=remind, name="progress-waiting", daemon=True)
        reminder.start()
        try:
            yield
        finally:
            ended.set()
            reminder.join()
            PHASES.removeHandler(handler)


class _PhaseHandler(logging.Handler):
    """Shows each phase, and keeps what the search waits for after the latest."""

    def __init__(self, progress: Progress, waiting: str):
        super().__init__(logging.INFO)
        self.progress, self.waiting, self.since = progress, waiting, progress.elapsed()

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.say(record.getMessage())
        self.since = self.progress.elapsed()
        self.waiting = getattr(record, "waiting", None) or self.waiting
