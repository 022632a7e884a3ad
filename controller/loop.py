"""The one search loop: keep the executor busy with proposals, record each
result durably, then let the strategy learn from it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from workers.evaluator import EvalResult
from workers.executor import Executor, Task

from .strategy import Strategy


def evaluation_seed(search_seed: int, index: int) -> int:
    """A per-evaluation seed that depends only on the search seed and the
    evaluation's position, so a resumed search reproduces the same children."""
    return int(np.random.SeedSequence([search_seed, index]).generate_state(1)[0])


def evaluation_id(index: int) -> str:
    return f"e{index:06d}"


def run_loop(
    strategy: Strategy,
    executor: Executor,
    budget: int,
    seed: int,
    on_result: Callable[[int, Task, EvalResult], None],
    start: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Evaluate until `budget` evaluations are done (counting `start` already done).

    A new proposal goes out as soon as a slot frees (asynchronous dispatch).
    `on_result` runs before `strategy.observe`, so the record is durable before
    anything learned from it. Returns the number of evaluations completed.
    """
    in_flight: dict[str, int] = {}
    next_index = done = start
    while done < budget and not (should_stop() and not in_flight):
        while not should_stop() and len(in_flight) < executor.capacity and next_index < budget:
            (arch,) = strategy.propose(1)
            task = Task(evaluation_id(next_index), arch, evaluation_seed(seed, next_index))
            executor.submit(task)
            in_flight[task.id] = next_index
            next_index += 1
        if not in_flight:
            break
        for task, result in executor.wait():
            on_result(in_flight.pop(task.id), task, result)
            strategy.observe(task.arch, result)
            done += 1
    return done
