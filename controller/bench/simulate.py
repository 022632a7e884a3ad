"""Zoph & Le's asynchronous scheme in simulated time.

The real replicas, shards and ledger (plain Python, no Ray), driven by an event
queue: every child runs on its own worker, as in the paper (K x m GPUs), and
takes the training time the evaluator reports (`simulated_time_s` for the
NB201 table). A replica's batch finishes when its slowest child does; its
gradient then reaches the shards, which may have moved on (staleness). This
gives the search quality and wall time of the scheme at any K, m, S without a
cluster, and the barrier-synchronous baseline as K = 1 with K x m children.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from raynas.common import ConfigError
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.strategies import strategy_class, strategy_names
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import Evaluator


def simulate_scheme(space: SearchSpace, evaluator: Evaluator, budget: int, seed: int, controllers: int,
                    children: int, ps_shards: int, strategy: str = "rl", strategy_options: dict[str, Any] | None = None,
                    shard_config: dict[str, Any] | None = None) -> tuple[Ledger, dict[str, Any]]:
    """Run the scheme of a strategy with a shared policy to `budget` evaluations; returns the
    ledger (with `finished_at` in simulated seconds) and figures: simulated wall time,
    staleness, shard versions."""
    cls = strategy_class(strategy)
    if not cls.needs.shared_policy:
        raise ConfigError("controllers", f"the distributed scheme runs strategies with a shared policy, not {strategy}",
                          [n for n in strategy_names() if strategy_class(n).needs.shared_policy])
    options = cls.parse_options(space, strategy_options or {})
    initial = cls.shared_policy(space, seed, options).weights()
    shard_map = ShardMap.build(initial, ps_shards)
    config = ShardConfig(lr=cls.policy_lr(options), **(shard_config or {}))
    shards = LocalShards([ParameterShard(i, part, config) for i, part in enumerate(shard_map.split(initial))],
                         shard_map)
    ledger = Ledger(None, budget, seed)
    replicas = [ControllerReplica(f"controller-{k}", cls.shared_policy(space, replica_seed(seed, k), options),
                                  children) for k in range(controllers)]
    events: list = []
    order = itertools.count()
    clock = 0.0

    def launch(k: int, now: float, claims) -> None:
        if not claims:
            return
        batch = replicas[k].begin(claims, shards)
        results = [evaluator.evaluate(t.arch, seed=t.seed) for t in batch.tasks]
        finish = now + max(r.metrics.get("simulated_time_s", 0.0) for r in results)
        heapq.heappush(events, (finish, next(order), k, batch, results))

    for k in range(controllers):
        launch(k, 0.0, ledger.claim(replicas[k].name, children))
    while events:
        clock, _, k, batch, results = heapq.heappop(events)
        claims = replicas[k].finish(batch, results, shards, ledger)
        for record in ledger.records[-len(results):]:
            record["finished_at"] = clock
        launch(k, clock, claims)
    staleness = [s for r in replicas for s in r.staleness]
    return ledger, {
        "simulated_wall_time_s": clock,
        "staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness_max": max(staleness, default=0),
        "shard_versions": [s.version for s in shards.shards],
    }
