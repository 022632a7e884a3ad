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
from raynas.workers.execution import Task


class Shards(Protocol):
    def pull(self) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def push_pull(self, grads: dict[str, torch.Tensor], staleness: int, replica: str, cycle: int
                  ) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]: ...


class LedgerClient(Protocol):
    def start(self, replica: str, n: int) -> Start: ...

    def record_update(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], replica: str, n: int,
                      cycle: int, synced: int, state: dict[str, Any]) -> Receipt: ...

    def lose(self, replica: str, cycle: int, reason: str) -> None: ...


@dataclass
class Batch:
    """m sampled architectures in flight: their tasks, decision values and the shard versions they came from."""

    tasks: list[Task]
    values: list[tuple]
    versions: list[int]


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
        self._pulled: tuple[list[int], dict[str, torch.Tensor]] | None = None

    def run(self, shards: Shards, ledger: LedgerClient,
            evaluate: Callable[[list[Task]], list[EvalResult]]) -> int:
        """Cycle until the ledger hands out no more work; returns the cycles this replica ran
        in all its lives."""
        claims = self.resume(ledger.start(self.name, self.children), shards)
        while claims:
            batch = self.begin(claims, shards)
            with self._timed("evaluate"):
                results = evaluate(batch.tasks)
            claims = self.finish(batch, results, shards, ledger)
        return self.cycle

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
        versions, weights = self._pulled
        self._pulled = None
        with self._timed("sample"):
            self.core.load_weights(weights)
            sampled = self.core.sample(len(claims), claims[0].index)
        return Batch([c.task(arch) for c, (arch, _) in zip(claims, sampled)], [v for _, v in sampled], versions)

    def finish(self, batch: Batch, results: list[EvalResult], shards: Shards, ledger: LedgerClient) -> list[Claim]:
        """Compute the batch's gradient, record the results with it (and claim the next batch),
        then push it; returns the next claims."""
        with self._timed("gradient"):
            # This replica's policy still holds the weights the batch was sampled with: the
            # gradient is taken there, against the shared baseline as the ledger last gave it.
            grads = self.core.gradients(batch.values, [reward_of(r) for r in results], self.baseline)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        state = {"core": self.core.state_dict(), "synced": self.synced, "staleness": list(self.staleness),
                 "pending": {"grads": grads} if finite else None}
        with self._timed("record"):
            # Durable before anything learns from it; the ledger keeps the gradient until it is applied.
            receipt = ledger.record_update([(t, r, {"policy_versions": batch.versions})
                                            for t, r in zip(batch.tasks, results)],
                                           self.name, self.children, self.cycle, self.synced, state)
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
