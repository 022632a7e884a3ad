"""Where evaluations run. Every search loop (proposers, RL replicas, one-shot searches)
submits its work through this interface, so the same loop drives an evaluator in this
process (tests, `--runtime local`) or a pool of Ray worker actors."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from raynas.common import NotReady
from raynas.workers.evaluation.base import Cancelled, EvalResult, Evaluator


@dataclass(frozen=True)
class Task:
    """One evaluation to run: a unique id, the architecture, its seed and budget.

    `arch` None: the work derives the architecture itself (a one-shot search).
    `budget` None: the evaluator's default. `checkpoint`: the file the evaluation keeps
    its state in, so that a later task with the same id-line (a promotion) continues it.
    `cost`: its estimated cost (workers/execution/cost.py), by which a pool of waiting
    children is ordered; None where nobody estimated it.
    """

    id: str
    arch: Hashable | None
    seed: int
    budget: int | None = None
    checkpoint: str | None = None
    cost: float | None = None


#: Called with each intermediate report of a running task (one per epoch).
OnReport = Callable[[Task, dict[str, Any]], None]


def _ignore(task: Task, report: dict[str, Any]) -> None:
    """The report hook of an executor nobody listens to."""


class Executor(ABC):
    """Runs tasks; every submitted task comes back from `wait` exactly once: ok, failed,
    or cancelled."""

    #: How many tasks may be in flight at once.
    capacity: int = 1

    def __init__(self, on_report: OnReport | None = None):
        self.on_report: OnReport = on_report or _ignore

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Start `task`; its result comes back from a later `wait`."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[tuple[Task, EvalResult]]:
        """Block until at least one submitted task has finished and return the finished ones
        (an empty list only when `timeout` seconds passed first). Intermediate reports reach
        `on_report` from inside this call. Raises NotReady when nothing is in flight."""

    @abstractmethod
    def cancel(self, task_id: str, force: bool = False) -> bool:
        """Stop a submitted task: a queued one at once, a running one at the end of its current
        epoch (`force`: now, by restarting its worker where the executor can). Its result, status
        cancelled, still comes from `wait`. False if the task is not in flight."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Tasks submitted and not yet returned by `wait`."""

    @property
    def queued(self) -> int:
        """Tasks waiting for a free worker (the `nas_queue_length` gauge)."""
        return 0

    def run_all(self, tasks: list[Task]) -> list[EvalResult]:
        """Evaluate `tasks` and return their results in the same order (an RL replica's batch)."""
        for task in tasks:
            self.submit(task)
        results: dict[str, EvalResult] = {}
        while len(results) < len(tasks):
            results.update((t.id, r) for t, r in self.wait())
        return [results[t.id] for t in tasks]

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release workers."""


class InProcessExecutor(Executor):
    """Runs tasks one at a time in this process, in submission order, inside `wait`.

    `capacity` > 1 lets a loop keep several proposals in flight (asynchronous strategies
    see the same interleaving as on a cluster) though they still run one after another.
    """

    def __init__(self, evaluator: Evaluator, capacity: int = 1, on_report: OnReport | None = None):
        super().__init__(on_report)
        self.evaluator = evaluator
        self.capacity = capacity
        self._queue: deque[Task] = deque()
        self._running: Task | None = None
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    @property
    def in_flight(self) -> int:
        return len(self._queue) + (self._running is not None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def cancel(self, task_id: str, force: bool = False) -> bool:
        # A running evaluation is in this very thread (or the caller is another thread):
        # it stops at its next report either way, so `force` changes nothing here.
        with self._lock:
            running = self._running is not None and self._running.id == task_id
            if running or any(t.id == task_id for t in self._queue):
                self._cancelled.add(task_id)
                return True
            return False

    def wait(self, timeout: float | None = None) -> list[tuple[Task, EvalResult]]:
        with self._lock:
            if not self._queue:
                raise NotReady("wait() called with no task in flight")
            task = self._running = self._queue.popleft()
        try:
            if task.id in self._cancelled:
                return [(task, EvalResult.cancelled(str(task.arch), "cancelled before it started"))]

            def report(data: dict[str, Any]) -> None:
                if task.id in self._cancelled:
                    raise Cancelled("cancelled")
                self.on_report(task, data)
                if task.id in self._cancelled:  # cancelled by the listener itself (e.g. a scheduler)
                    raise Cancelled("cancelled")

            return [(task, self.evaluator.evaluate(task.arch, task.seed, task.budget, report, task.checkpoint))]
        finally:
            with self._lock:
                self._running = None
                self._cancelled.discard(task.id)
