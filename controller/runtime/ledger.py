"""The ledger: the job's budget and its durable evaluation log.

Every evaluation index below the budget is handed out (claimed) at most once
per session, and every finished evaluation is appended to the run directory's
log exactly once, before anything learns from it. On resume the log is the
truth: recorded ids are done, everything else is claimable again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from raynas.controller.runtime.rundir import RunDirectory, summarize
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Task


def evaluation_seed(search_seed: int, index: int) -> int:
    """A per-evaluation seed that depends only on the search seed and the
    evaluation's position, so a resumed search trains the same children."""
    return int(np.random.SeedSequence([search_seed, index]).generate_state(1)[0])


def evaluation_id(index: int) -> str:
    return f"e{index:06d}"


@dataclass(frozen=True)
class Claim:
    """The right to run evaluation `index` (its id and seed are fixed by the index)."""

    id: str
    index: int
    seed: int

    def task(self, arch, budget: int | None = None, checkpoint: str | None = None) -> Task:
        return Task(self.id, arch, self.seed, budget, checkpoint)


class Ledger:
    def __init__(self, run: RunDirectory | None, budget: int, seed: int, deadline: float | None = None):
        """`run` None keeps the log in memory only (benchmarks)."""
        self.run = run
        self.budget = budget
        self.seed = seed
        self.deadline = deadline
        self.records: list[dict[str, Any]] = run.evaluations() if run else []
        self.recorded: set[str] = {r["id"] for r in self.records}
        self.claims: dict[str, str] = {}  # evaluation id -> claimant
        self.stopping = False
        self._next = 0

    def claim(self, claimant: str, n: int) -> list[Claim]:
        """Up to `n` unclaimed, unrecorded evaluations; none once stopping or out of budget."""
        if self.stopping or (self.deadline is not None and time.time() >= self.deadline):
            return []
        tasks = []
        while len(tasks) < n and self._next < self.budget:
            index, self._next = self._next, self._next + 1
            eid = evaluation_id(index)
            if eid in self.recorded or eid in self.claims:
                continue
            self.claims[eid] = claimant
            tasks.append(Claim(eid, index, evaluation_seed(self.seed, index)))
        return tasks

    def reclaim(self, claimant: str, ids: list[str]) -> None:
        """Claim specific evaluations again (in flight when a checkpoint was taken)."""
        for eid in ids:
            if eid not in self.recorded:
                self.claims[eid] = claimant

    def release(self, claimant: str) -> None:
        """Give back a claimant's unfinished claims (it restarted and lost them)."""
        lost = [eid for eid, who in self.claims.items() if who == claimant]
        for eid in lost:
            del self.claims[eid]
        if lost:
            self._next = min(self._next, min(int(eid[1:]) for eid in lost))

    def record(self, task: Task, result: EvalResult, **extra: Any) -> bool:
        """Append one finished evaluation unless its id is already in the log; True if new."""
        return self.record_many([(task, result, extra)])[0]

    def record_many(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]]) -> list[bool]:
        fresh = []
        for task, result, extra in entries:
            if task.id in self.recorded:
                fresh.append(False)
                continue
            # A task without an architecture (a one-shot search) is recorded with the one it derived.
            rec = {
                "id": task.id, "index": int(task.id[1:]), "seed": task.seed, "finished_at": time.time(),
                **result.to_dict(), "arch": result.arch if task.arch is None else str(task.arch), **extra,
            }
            if task.checkpoint:
                rec["checkpoint"] = task.checkpoint
            if self.run:
                self.run.append(rec)
            self.records.append(rec)
            self.recorded.add(task.id)
            self.claims.pop(task.id, None)
            fresh.append(True)
        return fresh

    def record_and_claim(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], claimant: str,
                         n: int) -> list[Claim]:
        """Record a finished batch and claim the next one (one round trip for a remote replica)."""
        self.record_many(entries)
        return self.claim(claimant, n)

    def stop(self) -> None:
        self.stopping = True

    @property
    def done(self) -> int:
        return len(self.recorded)

    def finished(self) -> bool:
        return self.done >= self.budget or (
            (self.stopping or (self.deadline is not None and time.time() >= self.deadline)) and not self.claims
        )

    def progress(self, since: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """The number of records and those from position `since` on (for a progress display)."""
        return len(self.records), self.records[since:]

    def summary(self) -> dict[str, Any]:
        return summarize(self.records)
