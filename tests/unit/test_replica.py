"""The controller replica and the distributed scheme without Ray: the same
REINFORCE math as the single-process strategy, sharded."""

import torch

from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.reinforce import PolicyCore
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import get_space
from raynas.workers.evaluation import get_evaluator


def table():
    return get_evaluator("table", get_space("nb201"))


def test_one_replica_on_shards_learns_exactly_like_the_single_process_strategy():
    space = get_space("nb201")
    strategy = get_strategy("rl", space, seed=5, batch_size=4, lr=0.01)
    core = PolicyCore(space, seed=5)
    weights = core.weights()
    shard_map = ShardMap.build(weights, 3)
    shards = LocalShards([ParameterShard(i, p, ShardConfig(lr=0.01)) for i, p in
                          enumerate(shard_map.split(weights))], shard_map)
    replica = ControllerReplica("controller-0", core, children=4)
    ledger = Ledger(None, 12, seed=5)
    evaluator = table()
    replica.run(shards, ledger, lambda tasks: [evaluator.evaluate(t.arch, t.seed) for t in tasks])
    proposed = []
    for _ in range(3):
        archs = strategy.propose(4)
        proposed += archs
        for arch in archs:
            strategy.observe(arch, evaluator.evaluate(arch))
    # Same seed, same samples: the two controllers walked the same path.
    assert [r["arch"] for r in ledger.records] == [str(a) for a in proposed]
    _, sharded = shards.pull()
    for name, p in strategy.policy.named_parameters():
        torch.testing.assert_close(sharded[name], p.detach())
    assert replica.cycles == 3 and replica.staleness == [0] * 9


def test_simulated_scheme_spends_the_budget_with_stale_gradients():
    space = get_space("nb201")
    ledger, figures = simulate_scheme(space, table(), budget=64, seed=0, controllers=4, children=4, ps_shards=2)
    assert len(ledger.records) == 64 and len({r["id"] for r in ledger.records}) == 64
    assert figures["shard_versions"] == [16, 16]
    assert figures["staleness_max"] > 0
    again, _ = simulate_scheme(space, table(), budget=64, seed=0, controllers=4, children=4, ps_shards=2)
    assert [r["arch"] for r in again.records] == [r["arch"] for r in ledger.records]


def test_one_replica_is_never_stale():
    _, figures = simulate_scheme(get_space("nb201"), table(), budget=24, seed=1, controllers=1, children=8, ps_shards=3)
    assert figures["staleness_max"] == 0 and figures["shard_versions"] == [3, 3, 3]


def test_replica_checkpoint_restores_baseline_and_rng(tmp_path):
    space = get_space("nb201")
    path = tmp_path / "controller-0.pt"
    core = PolicyCore(space, seed=2)
    weights = core.weights()
    shard_map = ShardMap.build(weights, 1)
    shards = LocalShards([ParameterShard(0, weights, ShardConfig())], shard_map)
    replica = ControllerReplica("controller-0", core, children=2, checkpoint_path=str(path))
    evaluator = table()
    replica.run(shards, Ledger(None, 4, seed=2), lambda ts: [evaluator.evaluate(t.arch, t.seed) for t in ts])
    back = ControllerReplica("controller-0", PolicyCore(space, seed=99), children=2, checkpoint_path=str(path))
    assert back.cycles == 2 and back.core.baseline.value == core.baseline.value
    assert torch.equal(back.core.generator.get_state(), core.generator.get_state())
