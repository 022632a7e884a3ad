"""The ledger: the job's budget and its durable evaluation log; in Zoph & Le's scheme also
the order of the policy's gradients.

Every evaluation index below the budget is handed out (claimed) at most once at a time,
and every finished evaluation is appended to the run directory's log exactly once, before
anything learns from it. On resume the log is the truth: recorded ids are done, everything
else is claimable again; a torn last line is cut (and counted) before anything is appended.

In the scheme the ledger is the one place every replica passes through, so it also numbers
the gradients (gradients.jsonl: each one's place in the order, replica, cycle and the
evaluations it learned from), counts their staleness once for every shard, keeps the shared
reward baseline, keeps each replica's checkpoint with the gradient it is about to push (a
replica that dies mid-push pushes it again when it comes back), and pools the budget's last
children so that no worker idles while one is left (`Tail`). Everything but the pool is rebuilt
from the run directory when it restarts.
"""

from __future__ import annotations

import heapq
import json
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raynas.common.files import atomic_write, write_json_atomic
from raynas.controller.runtime.rundir import GRADIENTS, RunDirectory, summarize
from raynas.controller.strategies.rewards import EmaBaseline, reward_of
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Task

CLAIMS = "claims.json"
LOST = "lost_gradients.json"
#: The claimant of sampled children waiting in the tail's pool for a free worker.
POOL = "pool"


def evaluation_seed(search_seed: int, index: int) -> int:
    """A per-evaluation seed that depends only on the search seed and the evaluation's position,
    so a resumed search trains the same children."""
    return int(np.random.SeedSequence([search_seed, index]).generate_state(1)[0])


def evaluation_id(index: int) -> str:
    return f"e{index:06d}"


@dataclass(frozen=True)
class Claim:
    """The right to run evaluation `index` (its id and seed are fixed by the index)."""

    id: str
    index: int
    seed: int

    def task(self, arch, budget: int | None = None, checkpoint: str | None = None, cost: float | None = None) -> Task:
        return Task(self.id, arch, self.seed, budget, checkpoint, cost)


def claim_of(eid: str, search_seed: int) -> Claim:
    index = int(eid[1:])
    return Claim(eid, index, evaluation_seed(search_seed, index))


@dataclass(frozen=True)
class Pooled:
    """A child sampled ahead in the budget's tail, waiting for whichever replica's worker frees up
    first: that replica runs it and learns from it (its decision values travel with it)."""

    task: Task
    values: tuple
    versions: list[int]


@dataclass
class Start:
    """What a (re)starting replica gets: its checkpoint, the shared baseline, its first claims (those
    its previous life held first) and the cycle it goes on with (past every cycle the log holds of it)."""

    claims: list[Claim]
    baseline: float | None
    state: dict[str, Any] | None
    cycle: int


@dataclass
class Receipt:
    """The answer to a recorded gradient: its number and staleness, the baseline after every reward
    recorded so far, and the next claims."""

    claims: list[Claim]
    number: int
    staleness: int
    baseline: float | None


@dataclass
class Grant:
    """What a replica's free workers run next: claims to sample, and children sampled ahead (the tail)."""

    claims: list[Claim] = field(default_factory=list)
    pooled: list[Pooled] = field(default_factory=list)
    #: In the tail: sample every claim and hand them to `Ledger.pool`, which gives back the longest.
    ahead: bool = False


@dataclass(frozen=True)
class Tail:
    """How the budget ends without idling workers: once at most `start` evaluations are unclaimed,
    each replica that asks samples `share` of them at once into one pool, and every free worker takes
    the longest child pooled (by the estimated cost), so the long ones start first and the short ones
    fill the end."""

    start: int = 0
    share: int = 1

    #: Children per worker sampled ahead at the end. A long child sampled after the pool opens starts
    #: first; one sampled before it may start too late to end with the rest: 4 rather than 3 buys two
    #: points at 4,000 evaluations (K=100, m=8, W=800), costs half a point at 12,800, and leaves the
    #: best architecture found as it was (docs/benchmarks.md).
    PER_WORKER = 4

    @classmethod
    def of(cls, workers: int, replicas: int) -> Tail:
        start = cls.PER_WORKER * workers
        return cls(start, -(-start // replicas))


class Claims(dict):
    """Evaluation id -> claimant, indexed by claimant as well: every claim asks what its claimant holds."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        super().__init__()
        self.of: dict[str, set[str]] = defaultdict(set)
        for eid, who in items:
            self[eid] = who

    def __setitem__(self, eid: str, who: str) -> None:
        if eid in self:
            self.of[self[eid]].discard(eid)
        super().__setitem__(eid, who)
        self.of[who].add(eid)

    def __delitem__(self, eid: str) -> None:
        self.of[self[eid]].discard(eid)
        super().__delitem__(eid)

    def pop(self, eid: str, default: Any = None) -> Any:
        if eid not in self:
            return default
        who = self[eid]
        del self[eid]
        return who


class Ledger:
    def __init__(self, run: RunDirectory | None, budget: int, seed: int, deadline: float | None = None,
                 baseline_decay: float | None = None, checkpoints: str | Path | None = None, tail: Tail = Tail()):
        """`run` None keeps the logs in memory only (benchmarks). `baseline_decay` (the scheme)
        keeps a shared moving-average baseline of the rewards; `checkpoints` is the folder for
        the claims in flight and the replicas' checkpoints (what a restarted ledger needs); `tail`
        pools the budget's last children (rolling batches)."""
        self.run = run
        self.budget = budget
        self.seed = seed
        self.deadline = deadline
        self.tail = tail
        self.torn_bytes = run.repair_log() if run else 0
        if self.torn_bytes:
            print(f"{run.path}: cut a torn last line ({self.torn_bytes} bytes) off the evaluation log; "
                  "that evaluation runs again", file=sys.stderr)
        self.records: list[dict[str, Any]] = run.evaluations() if run else []
        self.recorded: set[str] = {r["id"] for r in self.records}
        self.checkpoints = Path(checkpoints) if checkpoints else None
        self.claims = Claims()
        #: Evaluations handed out again because the process holding them died (a replica that took
        #: its children down with it, e.g. on a lost node): retries no worker pool saw.
        self.resent: set[str] = set()
        self._load_claims()
        self.stopping = False
        self._next = 0
        self._pool: list[tuple[float, int, Pooled]] = []  # a heap, the longest estimate first
        self.baseline = None if baseline_decay is None else EmaBaseline(baseline_decay)
        #: The scheme's gradients in their order: replica, cycle, the evaluations it learned from.
        self.gradients: list[dict[str, Any]] = []
        #: (replica, cycle) of every numbered gradient -> its number.
        self._numbers: dict[tuple[str, int], int] = {}
        #: The last cycle each replica has in the logs (children recorded or a gradient numbered).
        self._cycles: dict[str, int] = {}
        self.lost: list[dict[str, Any]] = []
        self._replay()

    @property
    def updates(self) -> int:
        return len(self.gradients)

    # -- claims ----------------------------------------------------------------------

    def claim(self, claimant: str, n: int, holding: Iterable[str] = ()) -> list[Claim]:
        """Up to `n` evaluations for `claimant`, which holds `holding`: first those the ledger has it
        holding that it does not know of (the answer to a call that never reached it: Ray retries a
        call once a restarted recorder is back, and the retry must not hand out other ones), then
        unclaimed ones; none once stopping or out of time (and those it never got are released)."""
        held = set(holding)
        unknown = sorted(self.claims.of[claimant] - held)
        if self.stopping or (self.deadline is not None and time.time() >= self.deadline):
            for eid in unknown:
                del self.claims[eid]
            if unknown:
                self._save_claims()
            return []
        tasks = [claim_of(eid, self.seed) for eid in unknown[:n]]
        fresh = False
        while len(tasks) < n and self._next < self.budget:
            index, self._next = self._next, self._next + 1
            eid = evaluation_id(index)
            if eid in self.recorded or eid in self.claims:
                continue
            self.claims[eid] = claimant
            tasks.append(claim_of(eid, self.seed))
            fresh = True
        if fresh:
            self._save_claims()
        return tasks

    def reclaim(self, claimant: str, ids: list[str]) -> None:
        """Claim specific evaluations again (in flight when a checkpoint was taken)."""
        for eid in ids:
            if eid not in self.recorded:
                self.claims[eid] = claimant
        self._save_claims()

    def unclaimed(self) -> int:
        """Evaluations of the budget nobody holds or recorded."""
        return max(0, self.budget - len(self.recorded) - len(self.claims))  # claims hold no recorded id

    def _load_claims(self) -> None:
        """Claims in flight when a restarted ledger went down: they stay their holders', so no
        evaluation is handed out twice (a holder that is gone too gets them back when it returns).
        The pool's children were in memory: their evaluations are claimable again."""
        path = self.checkpoints / CLAIMS if self.checkpoints else None
        if path is None or not path.exists():
            return
        data = json.loads(path.read_text())
        self.claims = Claims((eid, who) for eid, who in data["claims"].items()
                             if eid not in self.recorded and who != POOL)
        self.resent = set(data["resent"])

    def _save_claims(self) -> None:
        if self.checkpoints:
            # Not fsynced: after a power cut an evaluation may run twice, and the log keeps the first.
            write_json_atomic(self.checkpoints / CLAIMS, {"claims": self.claims, "resent": sorted(self.resent)},
                              durable=False)

    # -- the tail --------------------------------------------------------------------

    def take(self, claimant: str, n: int, holding: Iterable[str] = ()) -> Grant:
        """What `n` free workers of `claimant` run next. Before the tail, claims to sample. In the
        tail, its share of the unclaimed evaluations to sample ahead (`Grant.ahead`) while any are
        left, else up to `n` pooled children, the longest first."""
        held = set(holding)
        if self.tail.start and self.unclaimed() <= self.tail.start and not self.stopping:
            if self.unclaimed() or self.claims.of[claimant] - held:
                return Grant(self.claim(claimant, max(n, self.tail.share), held), ahead=True)
            return Grant(pooled=self._from_pool(claimant, n))
        return Grant(self.claim(claimant, n, held))

    def pool(self, claimant: str, children: list[Pooled], n: int) -> list[Pooled]:
        """Children `claimant` sampled ahead join the pool; it gets up to `n` of the longest back."""
        for child in children:
            if child.task.id in self.recorded or self.claims.get(child.task.id) != claimant:
                continue  # a retried call: already pooled, or taken since
            self.claims[child.task.id] = POOL
            heapq.heappush(self._pool, (-(child.task.cost or 0.0), int(child.task.id[1:]), child))
        return self._from_pool(claimant, n)

    def _from_pool(self, claimant: str, n: int) -> list[Pooled]:
        out = []
        while self._pool and len(out) < n:
            _, _, child = heapq.heappop(self._pool)
            if self.claims.get(child.task.id) == POOL:
                self.claims[child.task.id] = claimant
                out.append(child)
        if out:
            self._save_claims()
        return out

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
            self._learn(rec)
            self.records.append(rec)
            self.recorded.add(rec["id"])
            self.claims.pop(rec["id"], None)
        if new and save_claims:
            self._save_claims()
        return fresh

    def _learn(self, record: dict[str, Any]) -> None:
        """What the scheme keeps of a record: the baseline moves with every reward in log order."""
        if self.baseline is not None:
            self.baseline.update([reward_of(EvalResult.from_dict(record))])
        if "cycle" in record:
            self._cycles[record["replica"]] = max(self._cycles.get(record["replica"], -1), record["cycle"])

    # -- the scheme's gradients ---------------------------------------------------------

    def start(self, replica: str, n: int) -> Start:
        """A replica (re)starts: it gets back its checkpoint, the shared baseline and first the claims
        its previous life held, and goes on past every cycle the logs hold of it (a cycle number is
        never used twice). A gradient numbered after its checkpoint was saved (it died in between, or
        the power went) never reaches the shards: counted lost."""
        state = self._load_state(replica)
        kept = -1 if state is None else state["cycle"]
        for who, cycle in self._numbers:
            if who == replica and cycle > kept:
                self._lose(replica, cycle, "its replica died before it kept the gradient")
        held = set(self.claims.of[replica])
        claims = self.claim(replica, n)
        again = held.intersection(c.id for c in claims) - self.resent
        if again:
            self.resent |= again
            self._save_claims()
        return Start(claims, self._baseline(), state, max(kept, self._cycles.get(replica, -1)) + 1)

    def record_children(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], replica: str,
                        cycle: int) -> None:
        """Record children of `replica`'s `cycle` as they finish, before any gradient learns from them."""
        self.record_many([(t, r, {**x, "replica": replica, "cycle": cycle}) for t, r, x in entries])

    def record_update(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], replica: str, cycle: int,
                      ids: list[str], synced: int, state: dict[str, Any], n: int = 0,
                      holding: Iterable[str] = ()) -> Receipt:
        """Record `replica`'s last children of `cycle`, then number the cycle's gradient (learned from
        the evaluations `ids`), keep `state` (its checkpoint, holding that gradient) and claim up to
        `n` more.

        The gradient's number is its place among all gradients; its staleness the gradients numbered
        after update `synced` (the last one the replica's weights hold) and before it: counted here,
        once, so every shard treats the gradient alike. Idempotent: a retried call (after this
        ledger restarted) gets the same number and the same claims.
        """
        self.record_children(entries, replica, cycle)
        number = self._numbers.get((replica, cycle))
        if number is None:
            number = self.updates
            gradient = {"update": number, "replica": replica, "cycle": cycle, "ids": list(ids), "synced": synced}
            if self.run:
                self.run.append(gradient, GRADIENTS)
            self._number(gradient)
        staleness = max(0, number - synced - 1)
        state = {**state, "cycle": cycle}
        if state.get("pending") is not None:
            state["pending"] = {**state["pending"], "number": number, "staleness": staleness}
        self._save_state(replica, state)
        return Receipt(self.claim(replica, n, holding) if n else [], number, staleness, self._baseline())

    def _number(self, gradient: dict[str, Any]) -> None:
        self.gradients.append(gradient)
        self._numbers[(gradient["replica"], gradient["cycle"])] = gradient["update"]
        self._cycles[gradient["replica"]] = max(self._cycles.get(gradient["replica"], -1), gradient["cycle"])

    def lose(self, replica: str, cycle: int, reason: str) -> None:
        """A numbered gradient that will never reach the shards (e.g. not finite)."""
        self._lose(replica, cycle, reason)

    def _lose(self, replica: str, cycle: int, reason: str) -> None:
        if any(x["replica"] == replica and x["cycle"] == cycle for x in self.lost):
            return
        self.lost.append({"replica": replica, "cycle": cycle, "update": self._numbers.get((replica, cycle)),
                          "reason": reason})
        if self.checkpoints:
            write_json_atomic(self.checkpoints / LOST, self.lost)

    def _baseline(self) -> float | None:
        return None if self.baseline is None else self.baseline.value

    def _replay(self) -> None:
        """The baseline, cycles, gradient numbers and lost gradients as they were, from the run directory."""
        for record in self.records:
            self._learn(record)
        if self.run:
            self.run.repair_log(GRADIENTS)
            for gradient in self.run.records(GRADIENTS):
                self._number(gradient)
        path = self.checkpoints / LOST if self.checkpoints else None
        if path is not None and path.exists():
            self.lost = json.loads(path.read_text())

    def _save_state(self, replica: str, state: dict[str, Any]) -> None:
        if self.checkpoints is not None:
            # Not fsynced: a power cut costs the pending gradient (counted lost), never a wrong one.
            # Pickled, not torch.save: a replica's state is numpy, and the recorder runs without torch.
            atomic_write(self.checkpoints / f"{replica}.pkl", lambda f: pickle.dump(state, f), durable=False)

    def _load_state(self, replica: str) -> dict[str, Any] | None:
        if self.checkpoints is None:
            return None
        path = self.checkpoints / f"{replica}.pkl"
        if path.exists():
            with path.open("rb") as f:
                return pickle.load(f)
        earlier = self.checkpoints / f"{replica}.pt"  # a run begun before the states were pickled
        if earlier.exists():
            import torch

            return torch.load(earlier, weights_only=False)
        return None

    # -- the end -----------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping = True

    @property
    def done(self) -> int:
        return len(self.recorded)

    def progress(self, since: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """The number of records and those from position `since` on (for a progress display)."""
        return len(self.records), self.records[since:]

    def summary(self) -> dict[str, Any]:
        return summarize(self.records)

    def scheme_stats(self) -> dict[str, Any]:
        """What result.json says of the gradients: how many were recorded and which were lost."""
        numbered = {(g["replica"], g["cycle"]) for g in self.gradients}
        return {"gradients": self.updates, "lost": len(self.lost), "lost_detail": self.lost,
                # Children of a cycle whose replica died before its m were in: recorded, learned by no gradient.
                "children_without_gradient": sum((r["replica"], r["cycle"]) not in numbered
                                                 for r in self.records if "cycle" in r),
                "torn_log_bytes_cut": self.torn_bytes, "resent": len(self.resent)}
