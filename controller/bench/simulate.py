"""Zoph & Le's asynchronous scheme in simulated time.

The real replicas, shards and ledger (plain Python, no Ray), driven by an event
queue: each child takes the training time the evaluator reports (`simulated_time_s`
for the NB201 table) on a worker placed as the runtime places it: with W >= K x m
workers each replica owns m (the paper's layout), with fewer every child waits in
one queue for the next free worker (the dispatcher's rule). A replica's batch
finishes when its slowest child does; its gradient then reaches the shards, which
may have moved on (staleness). This gives the search quality, wall time and worker
utilisation of the scheme at any K, m, S, W without a cluster, and the
barrier-synchronous baseline as K = 1 with K x m children. With rolling batches
(`batching="rolling"`, own workers only) a replica's worker gets its next child the
moment it frees up, and every m results make one gradient.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from raynas.common import ConfigError, check_choice, check_int
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.runtime.spec import BATCHING
from raynas.controller.strategies import strategy_class, strategy_names
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import Evaluator


class SimulatedWorkers:
    """W workers on a virtual clock, assigned like the runtime assigns them; counts busy time."""

    def __init__(self, workers: int, controllers: int, children: int):
        self.dedicated = workers >= controllers * children
        self.size = controllers * children if self.dedicated else workers
        self._free = [0.0] * self.size  # a heap of the times the shared workers come free
        self.spans: list[tuple[float, float]] = []

    def run(self, now: float, durations: list[float]) -> float:
        """Start a replica's children at `now`; returns when the last of them ends."""
        if self.dedicated:
            # The replica's own workers for these children are free: it waited for them.
            self.spans += [(now, now + d) for d in durations]
            return now + max(durations)
        end = now
        for duration in durations:
            start = max(now, heapq.heappop(self._free))
            heapq.heappush(self._free, start + duration)
            self.spans.append((start, start + duration))
            end = max(end, start + duration)
        return end

    def utilization(self, until: float | None = None) -> float:
        """Busy worker-time over available worker-time from 0 to `until` (default: the last end)."""
        until = max((e for _, e in self.spans), default=0.0) if until is None else until
        if until <= 0:
            return 0.0
        busy = sum(max(0.0, min(e, until) - min(s, until)) for s, e in self.spans)
        return busy / (self.size * until)

    def steady_utilization(self) -> float:
        """Utilisation until the last child started: the running search without the budget's
        tail, when workers free up with nothing left to run."""
        return self.utilization(max((s for s, _ in self.spans), default=0.0))


def simulate_scheme(space: SearchSpace, evaluator: Evaluator, budget: int, seed: int, controllers: int,
                    children: int, ps_shards: int, strategy: str = "rl", strategy_options: dict[str, Any] | None = None,
                    shard_config: dict[str, Any] | None = None, workers: int | None = None,
                    batching: str = "barrier") -> tuple[Ledger, dict[str, Any]]:
    """Run the scheme of a strategy with a shared policy to `budget` evaluations; returns the
    ledger (with `finished_at` in simulated seconds) and figures: simulated wall time, worker
    utilisation, updates per simulated hour, staleness, shard versions. `workers` None gives
    every child its own worker."""
    cls = strategy_class(strategy)
    if not cls.needs.shared_policy:
        raise ConfigError("controllers", f"the distributed scheme runs strategies with a shared policy, not {strategy}",
                          [n for n in strategy_names() if strategy_class(n).needs.shared_policy])
    check_int("workers", workers, optional=True)
    options = cls.parse_options(space, strategy_options or {})
    settings = cls.scheme(options)
    initial = cls.shared_policy(space, seed, options).weights()
    shard_map = ShardMap.build(initial, ps_shards)
    config = ShardConfig(lr=settings.lr, **(shard_config or {}))
    shards = LocalShards([ParameterShard(i, part, config) for i, part in enumerate(shard_map.split(initial))],
                         shard_map)
    ledger = Ledger(None, budget, seed, baseline_decay=settings.baseline_decay)
    replicas = [ControllerReplica(f"controller-{k}", cls.shared_policy(space, replica_seed(seed, k), options),
                                  children) for k in range(controllers)]
    pool = SimulatedWorkers(controllers * children if workers is None else workers, controllers, children)
    check_choice("replica_batch", batching, BATCHING)
    if batching == "rolling" and not pool.dedicated:
        raise ConfigError("replica_batch", "rolling batches keep each replica's own workers busy: give --workers "
                          f"{controllers * children} (K x m) or more")
    run = _rolling if batching == "rolling" else _barrier
    clock = run(replicas, shards, ledger, evaluator, pool)
    staleness = [s for r in replicas for s in r.staleness]
    return ledger, {
        "replica_batch": batching,
        "simulated_wall_time_s": clock,
        "workers": pool.size,
        "dispatch": "dedicated" if pool.dedicated else "shared",
        "worker_utilization": pool.utilization(),
        "worker_utilization_steady": pool.steady_utilization(),
        "updates_per_simulated_hour": ledger.updates / (clock / 3600) if clock else 0.0,
        "staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness_max": max(staleness, default=0),
        "shard_versions": [s.version for s in shards.shards],
    }


def _simulated(result) -> float:
    return result.metrics.get("simulated_time_s", 0.0)


def _stamp(ledger: Ledger, recorded_before: int, clock: float) -> None:
    for record in ledger.records[recorded_before:]:
        record["finished_at"] = clock


def _barrier(replicas, shards, ledger, evaluator, pool) -> float:
    """Each replica samples m, waits for its slowest child, pushes; returns the simulated end."""
    events: list = []
    order = itertools.count()
    clock = 0.0

    def launch(k: int, now: float, claims) -> None:
        if not claims:
            return
        batch = replicas[k].begin(claims, shards)
        results = [evaluator.evaluate(t.arch, seed=t.seed) for t in batch.tasks]
        heapq.heappush(events, (pool.run(now, [_simulated(r) for r in results]), next(order), k, batch, results))

    for k, replica in enumerate(replicas):
        launch(k, 0.0, replica.resume(ledger.start(replica.name, replica.children), shards))
    while events:
        clock, _, k, batch, results = heapq.heappop(events)
        before = len(ledger.records)
        claims = replicas[k].finish(batch, results, shards, ledger)
        _stamp(ledger, before, clock)
        launch(k, clock, claims)
    return clock


def _rolling(replicas, shards, ledger, evaluator, pool) -> float:
    """Each replica's m workers take its next child the moment they free up; returns the simulated end."""
    events: list = []
    order = itertools.count()
    in_flight = [0] * len(replicas)
    clock = 0.0

    def refill(k: int, now: float) -> None:
        batch = replicas[k].refill(shards, ledger, replicas[k].children - in_flight[k])
        for task, values, versions in zip(batch.tasks, batch.values, batch.versions):
            result = evaluator.evaluate(task.arch, seed=task.seed)
            heapq.heappush(events, (pool.run(now, [_simulated(result)]), next(order), k, task, values, versions,
                                    result))
            in_flight[k] += 1

    for k, replica in enumerate(replicas):
        replica.start_rolling(shards, ledger)
        refill(k, 0.0)
    while events:
        clock, _, k, task, values, versions, result = heapq.heappop(events)
        in_flight[k] -= 1
        before = len(ledger.records)
        replicas[k].child_done(task, values, versions, result, shards, ledger)
        refill(k, clock)
        if not in_flight[k]:
            replicas[k].flush(shards, ledger)
        _stamp(ledger, before, clock)
    return clock
