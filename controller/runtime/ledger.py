"""The ledger: the job's budget and its durable evaluation log; in Zoph & Le's scheme also
the order of the policy's gradients.

Every evaluation index below the budget is handed out (claimed) at most once at a time,
and every finished evaluation is appended to the run directory's log exactly once, before
anything learns from it. On resume the log is the truth: recorded ids are done, everything
else is claimable again; a torn last line is cut (and counted) before anything is appended.

In the scheme the ledger is the one place every replica passes through, so it also numbers
the gradients (a batch's records carry `update`: its gradient's place in the order), counts
their staleness once for every shard, keeps the shared reward baseline, and keeps each
replica's checkpoint with the gradient it is about to push, so that a replica that dies
mid-push pushes it again when it comes back. Everything it keeps is rebuilt from the run
directory when it restarts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raynas.common.files import atomic_save, write_json_atomic
from raynas.controller.runtime.rundir import RunDirectory, summarize
from raynas.controller.strategies.reinforce import EmaBaseline, reward_of
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Task

CLAIMS = "claims.json"


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


@dataclass
class Start:
    """What a (re)starting replica gets: its checkpoint, the shared baseline, its first claims."""

    claims: list[Claim]
    baseline: float | None
    state: dict[str, Any] | None


@dataclass
class Receipt:
    """The answer to a recorded batch: its gradient's number and staleness, the baseline after
    its rewards, and the next claims."""

    claims: list[Claim]
    number: int
    staleness: int
    baseline: float | None
    state: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(self, run: RunDirectory | None, budget: int, seed: int, deadline: float | None = None,
                 baseline_decay: float | None = None, checkpoints: str | Path | None = None):
        """`run` None keeps the log in memory only (benchmarks). `baseline_decay` (the scheme)
        keeps a shared moving-average baseline of the rewards; `checkpoints` is the folder for
        the claims in flight and the replicas' checkpoints (what a restarted ledger needs)."""
        self.run = run
        self.budget = budget
        self.seed = seed
        self.deadline = deadline
        self.torn_bytes = run.repair_log() if run else 0
        if self.torn_bytes:
            print(f"{run.path}: cut a torn last line ({self.torn_bytes} bytes) off the evaluation log; "
                  "that evaluation runs again", file=sys.stderr)
        self.records: list[dict[str, Any]] = run.evaluations() if run else []
        self.recorded: set[str] = {r["id"] for r in self.records}
        self.checkpoints = Path(checkpoints) if checkpoints else None
        self.claims: dict[str, str] = self._load_claims()  # evaluation id -> claimant
        self.stopping = False
        self._next = 0
        self.baseline = None if baseline_decay is None else EmaBaseline(baseline_decay)
        self.updates = 0
        #: (replica, cycle) of every recorded batch -> its gradient's number.
        self._numbers: dict[tuple[str, int], int] = {}
        self.lost: list[dict[str, Any]] = []
        #: Evaluations handed out again because the process holding them died (a replica that took
        #: its children down with it, e.g. on a lost node): retries no worker pool saw.
        self.resent = 0
        self._replay_updates()

    # -- claims ----------------------------------------------------------------------

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
        if tasks:
            self._save_claims()
        return tasks

    def reclaim(self, claimant: str, ids: list[str]) -> None:
        """Claim specific evaluations again (in flight when a checkpoint was taken)."""
        for eid in ids:
            if eid not in self.recorded:
                self.claims[eid] = claimant
        self._save_claims()

    def release(self, claimant: str) -> None:
        """Give back a claimant's unfinished claims (it restarted and lost them)."""
        lost = [eid for eid, who in self.claims.items() if who == claimant]
        for eid in lost:
            del self.claims[eid]
        self.resent += len(lost)
        if lost:
            self._next = min(self._next, min(int(eid[1:]) for eid in lost))
            self._save_claims()

    def _load_claims(self) -> dict[str, str]:
        """Claims in flight when a restarted ledger went down: they stay their holders', so no
        evaluation is handed out twice (a holder that is gone too releases them on its return)."""
        path = self.checkpoints / CLAIMS if self.checkpoints else None
        if path is None or not path.exists():
            return {}
        return {eid: who for eid, who in json.loads(path.read_text()).items() if eid not in self.recorded}

    def _save_claims(self) -> None:
        if self.checkpoints:
            # Not fsynced: after a power cut an evaluation may run twice, and the log keeps the first.
            write_json_atomic(self.checkpoints / CLAIMS, self.claims, durable=False)

    # -- the log ---------------------------------------------------------------------

    def record(self, task: Task, result: EvalResult, **extra: Any) -> bool:
        """Append one finished evaluation unless its id is already in the log; True if new."""
        return self.record_many([(task, result, extra)])[0]

    def record_many(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], save_claims: bool = True
                    ) -> list[bool]:
        fresh, new = [], []
        for task, result, extra in entries:
            if task.id in self.recorded or any(r["id"] == task.id for r in new):
                fresh.append(False)
                continue
            # A task without an architecture (a one-shot search) is recorded with the one it derived.
            rec = {
                "id": task.id, "index": int(task.id[1:]), "seed": task.seed, "finished_at": time.time(),
                **result.to_dict(), "arch": result.arch if task.arch is None else str(task.arch), **extra,
            }
            if task.checkpoint:
                rec["checkpoint"] = task.checkpoint
            new.append(rec)
            fresh.append(True)
        if self.run:
            self.run.append_many(new)  # on disk before anything learns from them
        for rec in new:
            self.records.append(rec)
            self.recorded.add(rec["id"])
            self.claims.pop(rec["id"], None)
        if new and save_claims:
            self._save_claims()
        return fresh

    def record_and_claim(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], claimant: str,
                         n: int) -> list[Claim]:
        """Record a finished batch and claim the next one (one round trip for a remote caller)."""
        self.record_many(entries)
        return self.claim(claimant, n)

    # -- the scheme's gradients ---------------------------------------------------------

    def start(self, replica: str, n: int) -> Start:
        """A replica (re)starts: claims of its previous life are void; it gets back its
        checkpoint, the shared baseline and its first claims. A batch it recorded whose gradient
        it had not handed over (it died in between) is counted lost."""
        self.release(replica)
        state = self._load_state(replica)
        last = max((cycle for (who, cycle) in self._numbers if who == replica), default=-1)
        kept = -1 if state is None else state["cycle"]
        for cycle in range(kept + 1, last + 1):
            self._lose(replica, cycle, "its replica died before handing over the gradient")
        return Start(self.claim(replica, n), self._baseline(), state)

    def record_update(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], replica: str, n: int,
                      cycle: int, synced: int, state: dict[str, Any]) -> Receipt:
        """Record replica's batch of `cycle` as one gradient, keep `state` (its checkpoint,
        holding that gradient) and claim the next batch.

        The gradient's number is its place among all recorded gradients; its staleness the
        gradients recorded after update `synced` (the last one the replica's weights hold)
        and before it: counted here, once, so every shard treats the gradient alike.
        Idempotent: a retried call (after this ledger restarted) returns the same number.
        """
        number = self._numbers.get((replica, cycle))
        if number is None:
            number = self.updates
            self.updates += 1
            self._numbers[(replica, cycle)] = number
            rewards = [reward_of(result) for _, result, _ in entries]
            # The claims file is written once, by the claim below.
            self.record_many([(t, r, {**x, "replica": replica, "cycle": cycle, "update": number})
                              for t, r, x in entries], save_claims=False)
            if self.baseline is not None:
                self.baseline.update(rewards)
        staleness = max(0, number - synced - 1)
        state = {**state, "cycle": cycle}
        if state.get("pending") is not None:
            state["pending"] = {**state["pending"], "number": number, "staleness": staleness}
        self._save_state(replica, state)
        return Receipt(self.claim(replica, n), number, staleness, self._baseline(), state)

    def lose(self, replica: str, cycle: int, reason: str) -> None:
        """A recorded batch whose gradient will never reach the shards (e.g. not finite)."""
        self._lose(replica, cycle, reason)

    def _lose(self, replica: str, cycle: int, reason: str) -> None:
        if any(x["replica"] == replica and x["cycle"] == cycle for x in self.lost):
            return
        self.lost.append({"replica": replica, "cycle": cycle, "update": self._numbers.get((replica, cycle)),
                          "reason": reason})
        if self.checkpoints:
            write_json_atomic(self.checkpoints / "lost_gradients.json", self.lost)

    def _baseline(self) -> float | None:
        return None if self.baseline is None else self.baseline.value

    def _replay_updates(self) -> None:
        """Gradient numbers, the baseline and lost gradients as they were, from the run directory."""
        batches: dict[int, list[dict[str, Any]]] = {}
        for r in self.records:
            if "update" in r:
                batches.setdefault(r["update"], []).append(r)
                self._numbers[(r["replica"], r["cycle"])] = r["update"]
        for number in sorted(batches):
            if self.baseline is not None:
                self.baseline.update([reward_of(EvalResult.from_dict(r)) for r in batches[number]])
        self.updates = max(batches, default=-1) + 1
        path = self.checkpoints / "lost_gradients.json" if self.checkpoints else None
        if path is not None and path.exists():
            self.lost = json.loads(path.read_text())

    def _state_path(self, replica: str) -> Path | None:
        return self.checkpoints / f"{replica}.pt" if self.checkpoints else None

    def _save_state(self, replica: str, state: dict[str, Any]) -> None:
        path = self._state_path(replica)
        if path is not None:
            # Not fsynced: a power cut costs the pending gradient (counted lost), never a wrong one.
            atomic_save(state, path, durable=False)

    def _load_state(self, replica: str) -> dict[str, Any] | None:
        path = self._state_path(replica)
        if path is None or not path.exists():
            return None
        return torch.load(path, weights_only=False)

    # -- the end -----------------------------------------------------------------------

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

    def scheme_stats(self) -> dict[str, Any]:
        """What result.json says of the gradients: how many were recorded and which were lost."""
        return {"gradients": self.updates, "lost": len(self.lost), "lost_detail": self.lost,
                "torn_log_bytes_cut": self.torn_bytes, "resent": self.resent}
