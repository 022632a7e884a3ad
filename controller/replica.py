"""Zoph & Le's controller replica, as plain Python.

A replica loops: claim m evaluations from the ledger, pull every shard's slice
of the policy, sample m architectures, have them evaluated, record the results,
then push the REINFORCE gradient to each shard with the version it pulled (the
shard's answer to a push is its new slice: the next cycle's pull).
Replicas never wait for each other; the shards apply whatever arrives. The Ray
actor in controller/cluster.py only wires this loop to remote handles.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence

import numpy as np
import torch

from param_server import ShardMap
from param_server.atomic import atomic_save
from search_spaces import ConfigError, SearchSpace
from workers.evaluator import EvalResult
from workers.executor import Task

from .ledger import Claim
from search_spaces.errors import check_int, check_number

from .policy import LSTMPolicy
from .reinforce import EmaBaseline, gradients, reinforce_loss

_DEPTH_OPTIONS = ("start_depth", "depth_step", "depth_every", "max_depth")


class DepthSchedule:
    """Zoph & Le's growing depth: `start` layers, `step` more every `every` samples, up to `maximum`.

    For spaces with a depth (macro: `num_layers`, `max_layers`, `with_depth`).
    """

    def __init__(self, space: SearchSpace, start: int | None, step: int | None, every: int | None,
                 maximum: int | None):
        self.maximum = check_int("max_depth", space.max_layers if maximum is None else maximum, 1)
        if self.maximum > space.max_layers:
            raise ConfigError("max_depth", f"{self.maximum} exceeds the space's max_layers", f"1..{space.max_layers}")
        self.start = check_int("start_depth", space.num_layers if start is None else start, 1)
        if self.start > self.maximum:
            raise ConfigError("start_depth", f"{self.start} exceeds max_depth", f"1..{self.maximum}")
        self.step = check_int("depth_step", 2 if step is None else step, 0)
        self.every = check_int("depth_every", 1600 if every is None else every, 1)

    def depth(self, sample: int) -> int:
        """The depth of the `sample`-th proposal (0-based)."""
        return min(self.maximum, self.start + self.step * (sample // self.every))

    def samples_left(self, sample: int) -> int | None:
        """How many proposals from `sample` on keep its depth (None: all of them)."""
        if self.depth(sample) == self.maximum or self.step == 0:
            return None
        return self.every - sample % self.every


def depth_schedule_for(space: SearchSpace, start: int | None, step: int | None, every: int | None,
                       maximum: int | None) -> DepthSchedule | None:
    """The schedule for a space with a depth (macro); None for the others, which reject the options."""
    if hasattr(space, "with_depth"):
        return DepthSchedule(space, start, step, every, maximum)
    given = [name for name, value in zip(_DEPTH_OPTIONS, (start, step, every, maximum)) if value is not None]
    if given:
        raise ConfigError(given[0], f"the {space.name} space has no depth to schedule")
    return None


class PolicyCore:
    """The controller's policy with its depth schedule, baseline and sampling RNG.

    The single-process `rl` strategy and every distributed replica hold one;
    they differ only in where the weights are updated (a local Adam, or the
    parameter shards).
    """

    def __init__(self, space: SearchSpace, seed: int, baseline_decay: float = 0.95, entropy_weight: float = 0.0,
                 temperature: float | None = None, tanh_constant: float | None = None,
                 start_depth: int | None = None, depth_step: int | None = None, depth_every: int | None = None,
                 max_depth: int | None = None):
        self.space = space
        self.depths: DepthSchedule | None = depth_schedule_for(space, start_depth, depth_step, depth_every, max_depth)
        # The deepest space has every decision group the schedule will ever use,
        # so the policy's parameters never change shape as the network grows.
        widest = space if self.depths is None else space.with_depth(self.depths.maximum)
        self.generator = torch.Generator().manual_seed(seed)
        self.policy = LSTMPolicy(widest.decisions(), temperature=temperature, tanh_constant=tanh_constant,
                                 generator=self.generator)
        self.baseline = EmaBaseline(baseline_decay)
        self.entropy_weight = check_number("entropy_weight", entropy_weight, 0)
        self._depth_space: SearchSpace | None = None
        self._depth: int | None = None

    def space_at(self, sample: int) -> SearchSpace:
        """The space (at its scheduled depth) of the `sample`-th architecture, and make the policy speak it."""
        depth = None if self.depths is None else self.depths.depth(sample)
        if self._depth_space is None or depth != self._depth:
            self._depth = depth
            self._depth_space = self.space if depth is None else self.space.with_depth(depth)
            self.policy.set_decisions(self._depth_space.decisions())
        return self._depth_space

    def sample(self, n: int, first: int) -> list[tuple[Hashable, tuple]]:
        """`n` architectures (with their decision values) as samples `first`, `first + 1`, ...

        One batch shares the depth of its first sample."""
        space = self.space_at(first)
        with torch.no_grad():
            values, _, _ = self.policy.sample(n, self.generator)
        return [(space.from_values(v), v) for v in values]

    def gradients(self, values_batch: Sequence[tuple], rewards: Sequence[float]) -> dict[str, torch.Tensor]:
        """The REINFORCE gradient of a batch against the baseline, which then absorbs the rewards."""
        loss = reinforce_loss(self.policy, values_batch, rewards, self.baseline.value, self.entropy_weight)
        grads = gradients(self.policy, loss)
        self.baseline.update(rewards)
        return grads

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.policy.named_parameters()}

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                p.copy_(weights[name])

    def state_dict(self) -> dict[str, Any]:
        """Baseline and RNG: the replica's own state (the weights live on the shards)."""
        return {"baseline": self.baseline.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baseline.load_state_dict(state["baseline"])
        self.generator.set_state(state["generator"])


DEFAULT_LR = 6e-4  # Zoph & Le's Adam learning rate


def distributed_rl_options(options: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """Split the rl strategy's options into the shards' learning rate and the replicas' PolicyCore options."""
    if "batch_size" in options:
        raise ConfigError("strategy_options.batch_size", "in the distributed scheme the batch is --children (m)")
    return options.get("lr", DEFAULT_LR), {k: v for k, v in options.items() if k != "lr"}


def replica_seed(seed: int, k: int) -> int:
    """Replica k's own sampling seed, derived from the job's."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def reward_of(result: EvalResult) -> float:
    """A failed child gets the worst reward, so the controller learns to avoid crashes."""
    return result.reward if result.ok and result.reward is not None else 0.0


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

    def __init__(self, name: str, core: PolicyCore, children: int, checkpoint_path: str | None = None):
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

    def begin(self, claims: list[Claim], shards: Shards) -> "Batch":
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

    def finish(self, batch: "Batch", results: list[EvalResult], shards: Shards, ledger: LedgerClient) -> list[Claim]:
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
