"""The proposer loop for strategies that run in one place (random, evolution,
the single-process rl): keep the executor busy with proposals, record each
result durably, then let the strategy learn from it."""

from __future__ import annotations

from typing import Callable, Iterable

from workers.evaluator import EvalResult
from workers.executor import Executor, Task

from .ledger import Ledger
from .strategy import Strategy

PROPOSER = "proposer"


def run_loop(
    strategy: Strategy,
    executor: Executor,
    ledger: Ledger,
    on_record: Callable[[dict], None] = lambda record: None,
    checkpoint: Callable[[list[Task]], None] | None = None,
    resume_in_flight: Iterable[Task] = (),
) -> None:
    """Evaluate until the ledger's budget is spent or it is told to stop.

    A new proposal goes out as soon as a slot frees (asynchronous dispatch).
    Each result is appended to the ledger before `strategy.observe`, so the log
    never lacks what the strategy learned. `checkpoint(in_flight)` runs after
    every step, when the strategy's state and the in-flight tasks agree, so a
    resumed loop (passing those tasks as `resume_in_flight`) repeats nothing:
    a task that finished meanwhile is observed from the log, the rest re-run.
    """
    in_flight: dict[str, Task] = {}
    logged = {r["id"]: r for r in ledger.records}
    resumed = list(resume_in_flight)
    ledger.reclaim(PROPOSER, [t.id for t in resumed])
    for task in resumed:
        if task.id in logged:
            strategy.observe(task.arch, EvalResult.from_dict(logged[task.id]))
        else:
            executor.submit(task)
            in_flight[task.id] = task
    while True:
        while len(in_flight) < executor.capacity:
            claims = ledger.claim(PROPOSER, 1)
            if not claims:
                break
            (arch,) = strategy.propose(1)
            task = claims[0].task(arch)
            executor.submit(task)
            in_flight[task.id] = task
        if checkpoint:
            checkpoint(list(in_flight.values()))
        if not in_flight:
            return
        for task, result in executor.wait():
            del in_flight[task.id]
            if ledger.record(task, result):
                on_record(ledger.records[-1])
            strategy.observe(task.arch, result)
