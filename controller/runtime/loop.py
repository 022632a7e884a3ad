"""The proposer loop for every strategy that runs in one place (random, evolution, the
single-process rl, one-shot searches, budgeted strategies): keep the executor busy with
proposals, record each result durably, then let the strategy learn from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from raynas.controller.runtime.ledger import Claim, Ledger
from raynas.controller.strategies import Proposal, Strategy
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Executor, Task

PROPOSER = "proposer"


def task_to_dict(task: Task) -> dict[str, Any]:
    """A task as plain data (checkpoints of in-flight work)."""
    return {"id": task.id, "arch": None if task.arch is None else str(task.arch), "seed": task.seed,
            "budget": task.budget, "checkpoint": task.checkpoint}


def task_from_dict(data: dict[str, Any], space) -> Task:
    arch = None if data["arch"] is None else space.parse(data["arch"])
    return Task(data["id"], arch, data["seed"], data.get("budget"), data.get("checkpoint"))


class _Tasks:
    """Turns a strategy's proposals into tasks: budgets, and a checkpoint file per line of
    evaluations (a promotion continues the file of the evaluation it resumes; an evaluation
    run again after a stop or a worker's death continues its own)."""

    def __init__(self, ledger: Ledger, checkpoints: Path | None):
        self.checkpoints = checkpoints
        self.files = {r["id"]: r["checkpoint"] for r in ledger.records if r.get("checkpoint")}

    def make(self, claim: Claim, proposal: Any) -> Task:
        if not isinstance(proposal, Proposal):
            if self.checkpoints is None:
                return claim.task(proposal)
            proposal = Proposal(proposal)
        checkpoint = None
        if self.checkpoints is not None:
            checkpoint = self.files.get(proposal.resume) or str(self.checkpoints / f"{claim.id}.ckpt")
            self.files[claim.id] = checkpoint
        return claim.task(proposal.arch, proposal.budget, checkpoint)


def run_loop(
    strategy: Strategy,
    executor: Executor,
    ledger: Ledger,
    on_record: Callable[[dict], None] = lambda record: None,
    checkpoint: Callable[[list[Task]], None] | None = None,
    resume_in_flight: Iterable[Task] = (),
    checkpoints: Path | None = None,
) -> None:
    """Evaluate until the ledger's budget is spent or it is told to stop.

    A new proposal goes out as soon as a slot frees (asynchronous dispatch).
    Each result is appended to the ledger before `strategy.observe`, so the log
    never lacks what the strategy learned. `checkpoint(in_flight)` runs after
    every step, when the strategy's state and the in-flight tasks agree, so a
    resumed loop (passing those tasks as `resume_in_flight`) repeats nothing:
    a task that finished meanwhile is observed from the log, the rest re-run.
    `checkpoints` is the folder for the evaluations' own checkpoints (strategies
    that propose budgets continue an evaluation from them; a weight-sharing search, a
    day-long evaluation, continues from its last epoch).
    """
    needs = strategy.needs
    tasks = _Tasks(ledger, checkpoints if needs.budgets or needs.search is not None else None)
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
            claims = ledger.claim(PROPOSER, 1, in_flight)
            if not claims:
                break
            (proposal,) = strategy.propose(1)
            task = tasks.make(claims[0], proposal)
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
