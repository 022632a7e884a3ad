"""Zoph & Le's controller replica, as plain Python.

A replica loops: claim m evaluations from the ledger, pull every shard's slice
of the policy, sample m architectures, have them evaluated, record the results,
then push the REINFORCE gradient to each shard with the version it pulled (the
shard's answer to a push is its new slice: the next cycle's pull).
Replicas never wait for each other; the shards apply whatever arrives. The
actor host (controller/runtime/hosts.py) only wires this loop to remote handles.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from raynas.common import ConfigError
from raynas.common.files import atomic_save
from raynas.controller.cluster import call_all
from raynas.controller.runtime.ledger import Claim
from raynas.controller.strategies import SharedPolicy
from raynas.controller.strategies.reinforce import reward_of
from raynas.param_server import ShardMap
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Task


class Shards(Protocol):
    def pull(self) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def push_pull(self, grads: dict[str, torch.Tensor], versions: list[int], replica: str
                  ) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]: ...


class LedgerClient(Protocol):
    def claim(self, claimant: str, n: int) -> list[Claim]: ...

    def record_and_claim(self, entries: list[tuple[Task, EvalResult, dict[str, Any]]], claimant: str,
                         n: int) -> list[Claim]: ...


@dataclass
class Batch:
    """m sampled architectures in flight: their tasks, decision values and the shard versions they came from."""

    tasks: list[Task]
    values: list[tuple]
    versions: list[int]


class ControllerReplica:
    """One of K replicas. `children` is Zoph & Le's m."""

    def __init__(self, name: str, core: SharedPolicy, children: int, checkpoint_path: str | None = None):
        if children < 1:
            raise ConfigError("children", f"must be a positive integer, got {children}")
        self.name = name
        self.core = core
        self.children = children
        self.checkpoint_path = checkpoint_path
        self.cycles = 0
        self.staleness: list[int] = []
        self.timings: dict[str, float] = {}
        self._pulled: tuple[list[int], dict[str, torch.Tensor]] | None = None
        if checkpoint_path and os.path.exists(checkpoint_path):
            self.load_state_dict(torch.load(checkpoint_path, weights_only=False))

    def run(self, shards: Shards, ledger: LedgerClient,
            evaluate: Callable[[list[Task]], list[EvalResult]]) -> int:
        """Cycle until the ledger hands out no more work; returns the cycles run."""
        claims = ledger.claim(self.name, self.children)
        while claims:
            batch = self.begin(claims, shards)
            with self._timed("evaluate"):
                results = evaluate(batch.tasks)
            claims = self.finish(batch, results, shards, ledger)
        return self.cycles

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
        """Record the batch's results (and claim the next batch), then push its gradient
        with the versions it was sampled at; returns the next claims."""
        with self._timed("record"):
            # Durable before anything learns from it.
            claims = ledger.record_and_claim([(t, r, {"replica": self.name, "policy_versions": batch.versions})
                                              for t, r in zip(batch.tasks, results)], self.name, self.children)
        with self._timed("gradient"):
            # This replica's policy still holds the weights the batch was sampled with:
            # the gradient is taken there, and the shards judge its staleness.
            grads = self.core.gradients(batch.values, [reward_of(r) for r in results])
        with self._timed("push"):
            # The shards answer a push with their new weights: the next batch's pull, one round trip saved.
            receipts, versions, weights = shards.push_pull(grads, batch.versions, self.name)
        self._pulled = (versions, weights)
        self.staleness.extend(r["staleness"] for r in receipts)
        self.cycles += 1
        with self._timed("checkpoint"):
            self.save()
        return claims

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Seconds spent per phase of the loop: where a replica's time goes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        return {"core": self.core.state_dict(), "cycles": self.cycles, "staleness": list(self.staleness)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = copy.deepcopy(state)
        self.core.load_state_dict(state["core"])
        self.cycles = state["cycles"]
        self.staleness = state["staleness"]

    def save(self) -> None:
        if self.checkpoint_path:
            atomic_save(self.state_dict(), self.checkpoint_path, durable=False)


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

    def push_pull(self, grads, versions, replica):
        parts = self.map.split(grads)
        receipts = [vars(s.push(part, v, replica)) for s, part, v in zip(self.shards, parts, versions)]
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

    def push_pull(self, grads, versions, replica):
        parts = self.map.split(grads)
        answers = call_all((h, "push_pull", (p, v, replica)) for h, p, v in zip(self.handles, parts, versions))
        weights: dict = {}
        for _, (_, part) in answers:
            weights.update(part)
        return [receipt for receipt, _ in answers], [v for _, (v, _) in answers], weights
