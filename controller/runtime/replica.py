"""Zoph & Le's controller replica, as plain Python.

A replica loops: claim m evaluations from the ledger, take the policy's weights from
the shards, sample m architectures, have them evaluated, compute the REINFORCE
gradient against the shared baseline, record the results together with that gradient
(the ledger numbers it, counts its staleness and keeps it in the replica's checkpoint),
then push it to every shard (whose answer is its new slice: the next cycle's weights).
Replicas never wait for each other; the shards apply whatever arrives, each gradient at
most once. A replica that dies mid-push pushes its gradient again when it comes back.
The actor host (controller/runtime/hosts.py) only wires this loop to remote handles.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from raynas.common import ConfigError
from raynas.controller.cluster import call_all
from raynas.controller.runtime.ledger import Claim, Receipt, Start
from raynas.controller.strategies import SharedPolicy
from raynas.controller.strategies.reinforce import reward_of
from raynas.param_server import ShardMap
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Executor, Task


class Shards(Protocol):
    def pull(self) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def push_pull(self, grads: dict[str, torch.Tensor], staleness: int, replica: str, cycle: int
                  ) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]: ...


class LedgerClient(Protocol):
    def start(self, replica: str, n: int) -> Start: ...

    def claim(self, claimant: str, n: int) -> list[Claim]: ...

    def record_update(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], replica: str, n: int,
                      cycle: int, synced: int, state: dict[str, Any]) -> Receipt: ...

    def lose(self, replica: str, cycle: int, reason: str) -> None: ...


@dataclass
class Batch:
    """Sampled architectures in flight: their tasks, decision values and the shard versions each
    was sampled at."""

    tasks: list[Task]
    values: list[tuple]
    versions: list[list[int]]


class ControllerReplica:
    """One of K replicas. `children` is Zoph & Le's m."""

    def __init__(self, name: str, core: SharedPolicy, children: int):
        if children < 1:
            raise ConfigError("children", f"must be a positive integer, got {children}")
        self.name = name
        self.core = core
        self.children = children
        self.cycle = 0
        #: The last gradient (by number) the weights this replica holds include; -1: none yet.
        self.synced = -1
        self.baseline: float | None = None
        self.staleness: list[int] = []
        self.timings: dict[str, float] = {}
        #: Weights the shards answered with, not yet loaded into the policy.
        self._pulled: tuple[list[int], dict[str, torch.Tensor]] | None = None
        self._versions: list[int] | None = None
        # Rolling batches: claims not yet sampled, and finished children not yet learned from.
        self._stock: list[Claim] = []
        self._done: list[tuple[Task, tuple, list[int], EvalResult]] = []

    def run(self, shards: Shards, ledger: LedgerClient,
            evaluate: Callable[[list[Task]], list[EvalResult]]) -> int:
        """The paper's barrier: cycle until the ledger hands out no more work; returns the cycles
        this replica ran in all its lives."""
        claims = self.resume(ledger.start(self.name, self.children), shards)
        while claims:
            batch = self.begin(claims, shards)
            with self._timed("evaluate"):
                results = evaluate(batch.tasks)
            claims = self.finish(batch, results, shards, ledger)
        return self.cycle

    def run_rolling(self, shards: Shards, ledger: LedgerClient, executor: Executor) -> int:
        """Rolling batches over the replica's own workers (`executor`, capacity m): a worker that
        frees up gets the next child at once, sampled from the latest weights; every m results
        make one gradient. The last results of the budget make a smaller one."""
        self.start_rolling(shards, ledger)
        in_flight: dict[str, tuple[Task, tuple, list[int]]] = {}
        while True:
            batch = self.refill(shards, ledger, self.children - len(in_flight))
            for task, values in zip(batch.tasks, batch.values):
                executor.submit(task)
                in_flight[task.id] = (task, values, batch.versions[0])
            if not in_flight:
                self.flush(shards, ledger)
                return self.cycle
            with self._timed("evaluate"):
                finished = executor.wait()
            for task, result in finished:
                _, values, versions = in_flight.pop(task.id)
                self.child_done(task, values, versions, result, shards, ledger)

    def resume(self, start: Start, shards: Shards) -> list[Claim]:
        """Take up where a previous life left off: its counters and RNG, and the gradient it may
        not have handed to every shard (pushed again; a shard that has it ignores it)."""
        self.baseline = start.baseline
        if start.state is not None:
            state = copy.deepcopy(start.state)
            self.core.load_state_dict(state["core"])
            self.cycle, self.synced = state["cycle"] + 1, state["synced"]
            self.staleness = state["staleness"]
            pending = state.get("pending")
            if pending is not None:
                self._push(pending["grads"], pending["staleness"], state["cycle"], pending["number"], shards)
        return start.claims

    def begin(self, claims: list[Claim], shards: Shards) -> Batch:
        """Sample one architecture per claim from the freshest policy."""
        if self._pulled is None:
            with self._timed("pull"):
                self._pulled = shards.pull()
        self._load()
        return self._sample(claims)

    def _load(self) -> None:
        """Load the weights the shards last answered with, if they are new."""
        if self._pulled is not None:
            self._versions, weights = self._pulled
            self._pulled = None
            with self._timed("sample"):
                self.core.load_weights(weights)

    def _sample(self, claims: list[Claim]) -> Batch:
        with self._timed("sample"):
            sampled = self.core.sample(len(claims), claims[0].index)
        return Batch([c.task(arch) for c, (arch, _) in zip(claims, sampled)], [v for _, v in sampled],
                     [list(self._versions)] * len(claims))

    def start_rolling(self, shards: Shards, ledger: LedgerClient) -> None:
        """(Re)start with rolling batches: the first claims wait to be sampled by `refill`."""
        self._stock = self.resume(ledger.start(self.name, self.children), shards)

    def refill(self, shards: Shards, ledger: LedgerClient, free: int) -> Batch:
        """Children for `free` idle workers, sampled from the latest weights (rolling batches)."""
        if len(self._stock) < free:
            with self._timed("record"):
                self._stock += ledger.claim(self.name, free - len(self._stock))
        claims, self._stock = self._stock[:free], self._stock[free:]
        if not claims:
            return Batch([], [], [])
        if self._versions is None and self._pulled is None:
            with self._timed("pull"):
                self._pulled = shards.pull()
        self._load()
        return self._sample(claims)

    def child_done(self, task: Task, values: tuple, versions: list[int], result: EvalResult, shards: Shards,
                   ledger: LedgerClient) -> None:
        """A rolling batch's child finished: learn once m of them are in."""
        self._done.append((task, values, versions, result))
        if len(self._done) >= self.children:
            self.flush(shards, ledger)

    def flush(self, shards: Shards, ledger: LedgerClient) -> None:
        """Learn from the finished children not learned from yet (at most m at a time)."""
        while self._done:
            done, self._done = self._done[:self.children], self._done[self.children:]
            tasks, values, versions, results = (list(x) for x in zip(*done))
            self._update(Batch(tasks, values, versions), results, shards, ledger, claim=0)

    def finish(self, batch: Batch, results: list[EvalResult], shards: Shards, ledger: LedgerClient) -> list[Claim]:
        """Compute the batch's gradient, record the results with it (and claim the next batch),
        then push it; returns the next claims."""
        return self._update(batch, results, shards, ledger, claim=self.children)

    def _update(self, batch: Batch, results: list[EvalResult], shards: Shards, ledger: LedgerClient,
                claim: int) -> list[Claim]:
        with self._timed("gradient"):
            # Taken at the policy's current weights: in a barrier batch, those it was sampled with;
            # a rolling batch may hold children sampled one push earlier (slightly off-policy, as any
            # asynchronous sample is). Against the shared baseline as the ledger last gave it.
            grads = self.core.gradients(batch.values, [reward_of(r) for r in results], self.baseline)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        state = {"core": self.core.state_dict(), "synced": self.synced, "staleness": list(self.staleness),
                 "pending": {"grads": grads} if finite else None}
        with self._timed("record"):
            # Durable before anything learns from it; the ledger keeps the gradient until it is applied.
            receipt = ledger.record_update([(t, r, {"policy_versions": v})
                                            for t, r, v in zip(batch.tasks, results, batch.versions)],
                                           self.name, claim, self.cycle, self.synced, state)
        self.baseline = receipt.baseline
        if finite:
            self._push(grads, receipt.staleness, self.cycle, receipt.number, shards)
        else:
            ledger.lose(self.name, self.cycle, "the gradient is not finite")
        self.cycle += 1
        return receipt.claims

    def _push(self, grads: dict[str, torch.Tensor], staleness: int, cycle: int, number: int, shards: Shards) -> None:
        with self._timed("push"):
            # The shards answer a push with their new weights: the next batch's pull, one round trip saved.
            receipts, versions, weights = shards.push_pull(grads, staleness, self.name, cycle)
        self._pulled = (versions, weights)
        self.synced = max(self.synced, number)
        self.staleness.append(staleness)

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Seconds spent per phase of the loop: where a replica's time goes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start


class LocalShards:
    """The shards as in-process objects (tests and the single-node fallback)."""

    def __init__(self, shards, shard_map: ShardMap):
        self.shards = shards
        self.map = shard_map

    def pull(self):
        versions, weights = [], {}
        for s in self.shards:
            v, part = s.pull()
            versions.append(v)
            weights.update(part)
        return versions, weights

    def push_pull(self, grads, staleness, replica, cycle):
        parts = self.map.split(grads)
        receipts = [vars(s.push(part, staleness, replica, cycle)) for s, part in zip(self.shards, parts)]
        return (receipts, *self.pull())


class RemoteShards:
    """A replica's view of the S shard actors: pulls and pushes go out in parallel."""

    def __init__(self, handles: list, shard_map: ShardMap):
        self.handles = handles
        self.map = shard_map

    def pull(self):
        versions, weights = [], {}
        for v, part in call_all((h, "pull", ()) for h in self.handles):
            versions.append(v)
            weights.update(part)
        return versions, weights

    def push_pull(self, grads, staleness, replica, cycle):
        parts = self.map.split(grads)
        answers = call_all((h, "push_pull", (p, staleness, replica, cycle)) for h, p in zip(self.handles, parts))
        weights: dict = {}
        for _, (_, part) in answers:
            weights.update(part)
        return [receipt for receipt, _ in answers], [v for _, (v, _) in answers], weights
