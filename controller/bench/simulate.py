"""Zoph & Le's asynchronous scheme in simulated time.

The real replicas, shards and ledger (plain Python, no Ray), driven by an event queue through the
replica's own steps (`open`, `refill`, `finished`, `close`, as the actor host drives them), on
workers placed as the runtime places them: with W >= K x m workers each replica owns m (the
paper's layout), with fewer every child waits in one queue for the next free worker (the
dispatcher's rule). The table gives each child its training time (`simulated_time_s`,
proportional to its FLOPs; other evaluators their measured wall time). The scheduler only ever
sees its estimate (workers/execution/cost.py: FLOPs x epochs, and each worker's measured seconds
per unit), and the simulation draws the actual duration around it with log-normal noise
(`noise`, 10 % by default), so that ordering children by cost is not credited with knowing their
durations. A replica's gradient waits for its m children (barrier batches: the whole batch); it
then reaches the shards, which may have moved on (staleness). This gives the search quality,
wall time and worker utilisation of the scheme at any K, m, S, W without a cluster, and the
barrier-synchronous baseline as K = 1 with K x m children.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any

import numpy as np

from raynas.common import ConfigError, check_choice, check_int, check_number
from raynas.common.threads import torch_threads
from raynas.controller.runtime.ledger import Ledger, Tail
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.runtime.spec import BATCHING
from raynas.controller.strategies import strategy_class, strategy_names
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import Evaluator
from raynas.workers.evaluation.table import TableEvaluator
from raynas.workers.execution.cost import CostModel, table_flops

#: The spread of actual child times around their estimate (the log-normal's sigma).
NOISE = 0.1


class SimulatedWorkers:
    """W workers on a virtual clock, assigned like the runtime assigns them; counts busy time.
    Owned: replica k's children run on its workers k*m .. k*m+m-1 (a replica never has more
    children running than m). Shared: one FIFO queue in front of all W."""

    def __init__(self, workers: int, controllers: int, children: int):
        self.dedicated = workers >= controllers * children
        self.children = children
        self.size = controllers * children if self.dedicated else workers
        self._idle = {k: deque(range(k * children, (k + 1) * children)) for k in range(controllers)}
        self._shared = deque(range(self.size))
        self._queue: deque[tuple[int, Any, float]] = deque()
        self.spans: list[tuple[float, float]] = []

    def submit(self, now: float, replica: int, task: Any, duration: float) -> list[tuple[float, int, int, Any]]:
        """A child of `replica` is ready at `now`; returns the (end, worker, replica, task) it started."""
        self._queue.append((replica, task, duration))
        return self._start(now)

    def free(self, now: float, worker: int, replica: int) -> list[tuple[float, int, int, Any]]:
        """`worker` ended its child at `now`; returns what started on it."""
        (self._idle[replica] if self.dedicated else self._shared).append(worker)
        return self._start(now)

    def _start(self, now: float) -> list[tuple[float, int, int, Any]]:
        started = []
        while self._queue:
            replica = self._queue[0][0]
            idle = self._idle[replica] if self.dedicated else self._shared
            if not idle:
                break
            _, task, duration = self._queue.popleft()
            worker = idle.popleft()
            self.spans.append((now, now + duration))
            started.append((now + duration, worker, replica, task))
        return started

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
                    batching: str = "rolling", noise: float = NOISE) -> tuple[Ledger, dict[str, Any]]:
    """Run the scheme of a strategy with a shared policy to `budget` evaluations; returns the
    ledger (with `finished_at` in simulated seconds) and figures: simulated wall time, worker
    utilisation, updates per simulated hour, staleness, shard versions, the estimates' error.
    `workers` None gives every child its own worker."""
    cls = strategy_class(strategy)
    if not cls.needs.shared_policy:
        raise ConfigError("controllers", f"the distributed scheme runs strategies with a shared policy, not {strategy}",
                          [n for n in strategy_names() if strategy_class(n).needs.shared_policy])
    check_int("workers", workers, optional=True)
    check_choice("replica_batch", batching, BATCHING)
    check_number("noise", noise, 0, 1)
    options = cls.parse_options(space, strategy_options or {})
    settings = cls.scheme(options)
    initial = cls.shared_policy(space, seed, options).weights()
    shard_map = ShardMap.build(initial, ps_shards)
    config = ShardConfig(lr=settings.lr, **(shard_config or {}))
    shards = LocalShards([ParameterShard(i, part, config) for i, part in enumerate(shard_map.split(initial))],
                         shard_map)
    pool = SimulatedWorkers(controllers * children if workers is None else workers, controllers, children)
    rolling = batching == "rolling"
    ledger = Ledger(None, budget, seed, baseline_decay=settings.baseline_decay,
                    tail=Tail.of(pool.size, controllers) if rolling else Tail())
    # Only the table knows a child's FLOPs without building it; other evaluators' children pool in claim order.
    costs = (CostModel(table_flops(evaluator.dataset), evaluator.fidelity.default)
             if isinstance(evaluator, TableEvaluator) else None)
    replicas = [ControllerReplica(f"controller-{k}", cls.shared_policy(space, replica_seed(seed, k), options),
                                  children, rolling, costs) for k in range(controllers)]
    with torch_threads(1):  # the policy's tensors are tiny: more threads only synchronise (common/threads.py)
        clock, errors = _run(replicas, shards, ledger, evaluator, pool, costs, np.random.default_rng([seed, 7]),
                             noise)
    staleness = [s for r in replicas for s in r.staleness]
    return ledger, {
        "replica_batch": batching,
        "simulated_wall_time_s": clock,
        "workers": pool.size,
        "dispatch": "dedicated" if pool.dedicated else "shared",
        "duration_noise": noise,
        "estimate_error": float(np.mean(errors)) if errors else None,
        "worker_utilization": pool.utilization(),
        "worker_utilization_steady": pool.steady_utilization(),
        "updates_per_simulated_hour": ledger.updates / (clock / 3600) if clock else 0.0,
        "staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness_max": max(staleness, default=0),
        "shard_versions": [s.version for s in shards.shards],
    }


def _run(replicas, shards, ledger, evaluator, pool, costs, rng, noise) -> tuple[float, list[float]]:
    """Every replica's steps on the event queue; returns the simulated end and the estimates' relative errors."""
    events: list = []
    order = itertools.count()
    clock = 0.0
    running: dict[str, tuple[Any, float]] = {}  # task id -> its result, its actual duration
    errors: list[float] = []

    def start(started) -> None:
        for end, worker, replica, task in started:
            heapq.heappush(events, (end, next(order), worker, replica, task))

    def refill(k: int, now: float) -> None:
        for task in replicas[k].refill(shards, ledger):
            result = evaluator.evaluate(task.arch, seed=task.seed)
            took = result.metrics.get("simulated_time_s", result.metrics.get("wall_time_s", 0.0))
            running[task.id] = result, took * float(np.exp(rng.normal(0.0, noise)))
            start(pool.submit(now, k, task, running[task.id][1]))

    for k, replica in enumerate(replicas):
        replica.open(shards, ledger)
        refill(k, 0.0)
    while events:
        clock, _, worker, k, task = heapq.heappop(events)
        result, duration = running.pop(task.id)
        estimate = None if costs is None else costs.seconds(task.cost, str(worker))
        if estimate is not None:
            errors.append(abs(estimate - duration) / duration)
        result.metrics.update(worker=str(worker), wall_time_s=duration)
        before = len(ledger.records)
        replicas[k].finished([(task, result)], shards, ledger)
        for record in ledger.records[before:]:
            record["finished_at"] = clock
        start(pool.free(clock, worker, k))
        refill(k, clock)
        if not replicas[k].in_flight:
            replicas[k].close(shards, ledger)
    return clock, errors
