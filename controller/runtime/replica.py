"""Zoph & Le's controller replica, as plain Python.

A replica loops: claim evaluations from the ledger, take the policy's weights from the shards,
sample architectures, have them evaluated, record each child the moment it finishes, and once m
are in compute the REINFORCE gradient against the shared baseline, record it (the ledger numbers
it, counts its staleness and keeps it in the replica's checkpoint), then push it to every shard
(whose answer is its new slice: the next weights). Barrier batches (the paper's) sample m at once
and wait for all m; rolling batches give a worker its next child the moment it frees up and make a
gradient of every m results, and in the budget's tail take children sampled ahead from one pool,
the longest first (`Tail` in ledger.py). Replicas never wait for each other; the shards apply
whatever arrives, each gradient at most once. A replica that dies mid-push pushes its gradient
again when it comes back. The loop is a set of steps (`open`, `refill`, `finished`, `close`), so
that the actor host (controller/runtime/policy_hosts.py) drives it over Ray workers and the simulation
(controller/bench/simulate.py) over a virtual clock.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from raynas.common import ConfigError
from raynas.controller.cluster import call_all
from raynas.controller.runtime.ledger import Claim, Grant, Pooled, Receipt, Start
from raynas.controller.strategies import SharedPolicy
from raynas.controller.strategies.rewards import reward_of
from raynas.param_server import ShardMap
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Executor, Task
from raynas.workers.execution.cost import CostModel, network_flops, table_flops

if TYPE_CHECKING:
    from raynas.controller.runtime.plan import Plan

Entries = list[tuple[Task, EvalResult, dict[str, Any]]]


class Shards(Protocol):
    def pull(self) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def push_pull(self, grads: dict[str, torch.Tensor], staleness: int, replica: str, cycle: int
                  ) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]: ...


class LedgerClient(Protocol):
    def start(self, replica: str, n: int) -> Start: ...

    def take(self, claimant: str, n: int, holding: list[str]) -> Grant: ...

    def pool(self, claimant: str, children: list[Pooled], n: int) -> list[Pooled]: ...

    def record_children(self, entries: Entries, replica: str, cycle: int) -> None: ...

    def record_update(self, entries: Entries, replica: str, cycle: int, ids: list[str], synced: int,
                      state: dict[str, Any], n: int, holding: list[str]) -> Receipt: ...

    def lose(self, replica: str, cycle: int, reason: str) -> None: ...


class ControllerReplica:
    """One of K replicas. `children` is Zoph & Le's m; `rolling` picks rolling batches over the
    paper's barrier; `costs` estimates each sampled child's cost (the tail's pool is ordered by it)."""

    def __init__(self, name: str, core: SharedPolicy, children: int, rolling: bool = False,
                 costs: CostModel | None = None):
        if children < 1:
            raise ConfigError("children", f"must be a positive integer, got {children}")
        self.name = name
        self.core = core
        self.children = children
        self.rolling = rolling
        self.costs = costs
        self.cycle = 0
        #: The last gradient (by number) the weights this replica holds include; -1: none yet.
        self.synced = -1
        self.baseline: float | None = None
        self.staleness: list[int] = []
        self.timings: dict[str, float] = {}
        #: Weights the shards answered with, not yet loaded into the policy.
        self._pulled: tuple[list[int], dict[str, torch.Tensor]] | None = None
        self._versions: list[int] | None = None
        #: Claims not sampled yet; children running (id -> task, decision values, versions sampled at);
        #: children of this cycle recorded and waiting for the gradient.
        self._stock: list[Claim] = []
        self._running: dict[str, tuple[Task, tuple, list[int]]] = {}
        self._done: list[tuple[Task, tuple, list[int], EvalResult]] = []

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def run(self, shards: Shards, ledger: LedgerClient, executor: Executor) -> int:
        """Run until the ledger hands out no more work, children on `executor` (capacity m);
        returns the cycles this replica ran in all its lives."""
        self.open(shards, ledger)
        while True:
            for task in self.refill(shards, ledger):
                executor.submit(task)
            if not self._running:
                self.close(shards, ledger)
                return self.cycle
            with self._timed("evaluate"):
                finished = executor.wait()
            self.finished(finished, shards, ledger)

    def open(self, shards: Shards, ledger: LedgerClient) -> None:
        """(Re)start: take up where a previous life left off (its counters and RNG, and the
        gradient it may not have handed to every shard: pushed again, a shard that has it ignores
        it), its first claims waiting to be sampled."""
        with self._timed("record"):
            start = ledger.start(self.name, self.children)
        self.baseline = start.baseline
        self.cycle = start.cycle
        if start.state is not None:
            state = copy.deepcopy(start.state)
            self.core.load_state_dict(to_torch(state["core"]))
            self.synced, self.staleness = state["synced"], state["staleness"]
            pending = state.get("pending")
            if pending is not None:
                self._push(to_torch(pending["grads"]), pending["staleness"], state["cycle"], pending["number"],
                           shards)
        self._stock = list(start.claims)

    def refill(self, shards: Shards, ledger: LedgerClient) -> list[Task]:
        """The children to start now: with barrier batches the next m once the last batch is
        learned from, with rolling batches one per free worker."""
        if not self.rolling:
            if self._running:
                return []
            claims, self._stock = self._stock, []
            return self._start(self._sample(claims, shards))
        free = self.children - len(self._running)
        pooled: list[Pooled] = []
        if free > len(self._stock):
            holding = [c.id for c in self._stock] + list(self._running)
            with self._timed("record"):
                grant = ledger.take(self.name, free - len(self._stock), holding)
            if grant.ahead:
                ahead = self._sample(grant.claims, shards)
                with self._timed("record"):
                    pooled = ledger.pool(self.name, ahead, free - len(self._stock))
            else:
                self._stock += grant.claims
                pooled = grant.pooled
        claims, self._stock = self._stock[:free - len(pooled)], self._stock[free - len(pooled):]
        return self._start(pooled + self._sample(claims, shards))

    def finished(self, results: list[tuple[Task, EvalResult]], shards: Shards, ledger: LedgerClient) -> None:
        """Children came back: each is recorded now; a gradient once m are in (barrier: the whole batch)."""
        fresh: Entries = []
        for task, result in results:
            _, values, versions = self._running.pop(task.id)
            if self.costs is not None and task.cost and "worker" in result.metrics:
                self.costs.observe(result.metrics["worker"], task.cost, result.metrics.get("wall_time_s", 0.0))
            self._done.append((task, values, versions, result))
            fresh.append((task, result, {"policy_versions": versions}))
            if self.rolling and len(self._done) >= self.children:
                self._update(fresh, shards, ledger)
                fresh = []
        if not self.rolling and not self._running and self._done:
            self._update(fresh, shards, ledger)
        elif fresh:
            with self._timed("record"):
                ledger.record_children(fresh, self.name, self.cycle)

    def close(self, shards: Shards, ledger: LedgerClient) -> None:
        """The budget is spent: learn from the children of the last, smaller, rolling batch."""
        if self._done:
            self._update([], shards, ledger)

    def _sample(self, claims: list[Claim], shards: Shards) -> list[Pooled]:
        """One architecture per claim from the freshest policy."""
        if not claims:
            return []
        if self._pulled is None and self._versions is None:
            with self._timed("pull"):
                self._pulled = shards.pull()
        with self._timed("sample"):
            if self._pulled is not None:
                self._versions, weights = self._pulled
                self._pulled = None
                self.core.load_weights(weights)
            sampled = self.core.sample(len(claims), claims[0].index)
        return [Pooled(c.task(arch, cost=None if self.costs is None else self.costs(arch, None)), values,
                       list(self._versions))
                for c, (arch, values) in zip(claims, sampled)]

    def _start(self, children: list[Pooled]) -> list[Task]:
        for child in children:
            self._running[child.task.id] = (child.task, child.values, child.versions)
        return [child.task for child in children]

    def _update(self, fresh: Entries, shards: Shards, ledger: LedgerClient) -> None:
        """The gradient of this cycle's children, recorded with the last of them, then pushed."""
        done, self._done = self._done, []
        with self._timed("gradient"):
            # Taken at the policy's current weights: in a barrier batch, those it was sampled with;
            # a rolling batch may hold children sampled one push earlier (slightly off-policy, as any
            # asynchronous sample is). Against the shared baseline as the ledger last gave it.
            grads = self.core.gradients([v for _, v, _, _ in done], [reward_of(r) for *_, r in done], self.baseline)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        # As numpy: the recorder that keeps it never imports torch.
        state = {"core": to_numpy(self.core.state_dict()), "synced": self.synced, "staleness": list(self.staleness),
                 "pending": {"grads": to_numpy(grads)} if finite else None}
        claim = 0 if self.rolling else self.children
        holding = [c.id for c in self._stock] + list(self._running)
        with self._timed("record"):
            # Durable before anything learns from it; the ledger keeps the gradient until it is applied.
            receipt = ledger.record_update(fresh, self.name, self.cycle, [t.id for t, *_ in done], self.synced,
                                           state, claim, holding)
        self.baseline = receipt.baseline
        self._stock += receipt.claims
        if finite:
            self._push(grads, receipt.staleness, self.cycle, receipt.number, shards)
        else:
            ledger.lose(self.name, self.cycle, "the gradient is not finite")
        self.cycle += 1

    def _push(self, grads, staleness: int, cycle: int, number: int, shards: Shards) -> None:
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


def child_costs(plan: Plan) -> CostModel:
    """What the plan's children cost before they run: the table's FLOPs for table lookups, else the
    child network's at the search's sizes; times the epochs of the evaluator's budget."""
    from raynas.workers.evaluation.table import TableEvaluator

    options = plan.evaluator_options
    if issubclass(plan.evaluator, TableEvaluator):
        flops = table_flops(options.dataset)
    else:
        flops = network_flops(plan.space, getattr(options, "channels", None), getattr(options, "layers", None))
    return CostModel(flops, plan.evaluator.budgets(options).default)


def to_numpy(tensors: dict) -> dict[str, np.ndarray]:
    """Tensors as numpy arrays for the wire: Ray sends those without pickling (2-3 ms a torch
    tensor, 0.18 ms an array), and a shard takes them back without a copy."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def to_torch(arrays: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


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
    """A replica's view of the S shard actors: pulls and pushes go out in parallel, as numpy arrays."""

    def __init__(self, handles: list, shard_map: ShardMap):
        self.handles = handles
        self.map = shard_map

    def pull(self):
        versions, weights = [], {}
        for v, part in call_all((h, "pull", ()) for h in self.handles):
            versions.append(v)
            weights.update(to_torch(part))
        return versions, weights

    def push_pull(self, grads, staleness, replica, cycle):
        parts = self.map.split(to_numpy(grads))
        answers = call_all((h, "push_pull", (p, staleness, replica, cycle)) for h, p in zip(self.handles, parts))
        weights: dict = {}
        for _, (_, part) in answers:
            weights.update(to_torch(part))
        return [receipt for receipt, _ in answers], [v for _, (v, _) in answers], weights
