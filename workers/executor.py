"""Where evaluations run. The search loop only talks to this interface, so the
same loop drives an in-process evaluator (tests, `--parallelism 1`) and, later,
a pool of Ray worker actors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Hashable

from .evaluator import EvalResult, Evaluator


@dataclass(frozen=True)
class Task:
    """One evaluation to run: a unique id, the architecture and its seed."""

    id: str
    arch: Hashable
    seed: int


class Executor(ABC):
    #: How many tasks may be in flight at once.
    capacity: int = 1

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Start `task`; its result comes back from a later `wait`."""

    @abstractmethod
    def wait(self) -> list[tuple[Task, EvalResult]]:
        """Block until at least one submitted task has finished; return the finished ones."""

    def close(self) -> None:
        """Release workers."""


class InProcessExecutor(Executor):
    """Runs tasks one at a time in this process, in submission order."""

    def __init__(self, evaluator: Evaluator, capacity: int = 1):
        self.evaluator = evaluator
        self.capacity = capacity
        self._queue: deque[Task] = deque()

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def wait(self) -> list[tuple[Task, EvalResult]]:
        if not self._queue:
            raise RuntimeError("wait() called with no task in flight")
        task = self._queue.popleft()
        return [(task, self.evaluator.evaluate(task.arch, seed=task.seed))]
