"""The controller replica and the distributed scheme without Ray: the same
REINFORCE math as the single-process strategy, sharded."""

import pickle

import pytest
import torch
from events import scalars
from imports import imported

from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.hosts import RecorderHost
from raynas.controller.runtime.ledger import Ledger, Tail
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.runtime.rundir import EVALUATIONS, STRATEGY_LOG, RunDirectory
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.ppo import PPOCore
from raynas.controller.strategies.reinforce import PolicyCore
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import get_space
from raynas.workers.evaluation import get_evaluator
from raynas.workers.execution import InProcessExecutor


def table():
    return get_evaluator("table", get_space("nb201"))


def strategy_beside_shards(shards: int):
    """REINFORCE in one process, and the same policy (same seed) split over `shards` shards."""
    space = get_space("nb201")
    strategy = get_strategy("rl", space, seed=5, batch_size=4, lr=0.01)
    core = PolicyCore(space, seed=5)
    weights = core.weights()
    shard_map = ShardMap.build(weights, shards)
    return strategy, core, LocalShards([ParameterShard(i, p, ShardConfig(lr=0.01)) for i, p in
                                        enumerate(shard_map.split(weights))], shard_map)


def test_one_replica_on_shards_learns_exactly_like_the_single_process_strategy():
    strategy, core, shards = strategy_beside_shards(3)
    replica = ControllerReplica("controller-0", core, children=4)
    ledger = Ledger(None, 12, seed=5, baseline_decay=0.95)
    evaluator = table()
    replica.run(shards, ledger, InProcessExecutor(evaluator, 4))
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
    assert replica.cycle == 3 and replica.staleness == [0] * 3


class InProcessRecorder:
    """The recorder's host as a replica's ledger in this process, as RecorderClient is over Ray:
    each gradient goes with the figures of the policy that computed it."""

    def __init__(self, host: RecorderHost, core: PolicyCore):
        self.host, self.core, self.updates = host, core, []

    def __getattr__(self, name):
        return getattr(self.host, name)

    def record_update(self, *args):
        self.updates.append((*args, self.core.last_update))
        return self.host.record_update(*self.updates[-1])


def test_the_schemes_updates_are_the_strategys_signals_in_its_log_and_tensorboard(tmp_path):
    """Each gradient's baseline, batch reward and entropy reach strategy.jsonl (numbered as the
    gradients are) and TensorBoard, written by the recorder; with one replica they are the figures
    the single-process strategy reports for the same batches."""
    strategy, core, shards = strategy_beside_shards(2)
    run = RunDirectory.create(tmp_path / "run", {})
    (run.path / "checkpoint").mkdir()
    host = RecorderHost("job", str(run.path), 12, 5, None, 0.95, str(run.path / "checkpoint"), Tail())
    recorder = InProcessRecorder(host, core)
    evaluator = table()
    ControllerReplica("controller-0", core, children=4).run(shards, recorder, InProcessExecutor(evaluator, 4))
    for _ in range(3):
        for arch in strategy.propose(4):
            strategy.observe(arch, evaluator.evaluate(arch))
    logged = run.records(STRATEGY_LOG)
    assert [r.pop("iteration") for r in logged] == [1, 2, 3]
    assert [r.pop("replica") for r in logged] == ["controller-0"] * 3
    assert logged == [pytest.approx(s) for s in strategy.signals()]
    # Ray retries a call to a restarted recorder: the gradient keeps its number and its line is not written again.
    again = RecorderHost("job", str(run.path), 12, 5, None, 0.95, str(run.path / "checkpoint"), Tail())
    again.record_update(*recorder.updates[-1])
    assert len(run.records(STRATEGY_LOG)) == 3
    board = scalars(run.path)
    for name in ("baseline", "entropy", "reward"):
        assert [step for step, _ in board[f"strategy/{name}"]] == [1, 2, 3]
    assert board["strategy/entropy"][0][1] == pytest.approx(strategy.signals()[0]["entropy"])


def test_simulated_scheme_spends_the_budget_with_stale_gradients():
    space = get_space("nb201")
    ledger, figures = simulate_scheme(space, table(), budget=64, seed=0, controllers=4, children=4, ps_shards=2,
                                      batching="barrier")
    assert len(ledger.records) == 64 and len({r["id"] for r in ledger.records}) == 64
    assert figures["shard_versions"] == [16, 16]
    assert figures["staleness_max"] > 0
    again, _ = simulate_scheme(space, table(), budget=64, seed=0, controllers=4, children=4, ps_shards=2,
                               batching="barrier")
    assert [r["arch"] for r in again.records] == [r["arch"] for r in ledger.records]


def test_one_replica_is_never_stale():
    _, figures = simulate_scheme(get_space("nb201"), table(), budget=24, seed=1, controllers=1, children=8, ps_shards=3,
                                 batching="barrier")
    assert figures["staleness_max"] == 0 and figures["shard_versions"] == [3, 3, 3]


class DiesMidPush(LocalShards):
    """Shards whose replica dies after its push of `cycle` reached only the first shard."""

    def __init__(self, shards, shard_map, cycle):
        super().__init__(shards, shard_map)
        self.cycle = cycle

    def push_pull(self, grads, staleness, replica, cycle):
        if cycle == self.cycle:
            self.shards[0].push(self.map.split(grads)[0], staleness, replica, cycle)
            raise KeyboardInterrupt("the replica's process is killed")
        return super().push_pull(grads, staleness, replica, cycle)


def test_a_replica_killed_mid_push_comes_back_and_completes_that_push_once(tmp_path):
    space = get_space("nb201")
    run = RunDirectory.create(tmp_path / "run", {})
    checkpoints = tmp_path / "run" / "checkpoint"
    checkpoints.mkdir()
    core = PolicyCore(space, seed=2)
    weights = core.weights()
    shard_map = ShardMap.build(weights, 2)
    parameter_shards = [ParameterShard(i, p, ShardConfig()) for i, p in enumerate(shard_map.split(weights))]
    evaluator = table()

    def evaluate():
        return InProcessExecutor(evaluator, 2)

    replica = ControllerReplica("controller-0", core, children=2)
    with pytest.raises(KeyboardInterrupt):
        replica.run(DiesMidPush(parameter_shards, shard_map, cycle=1),
                    Ledger(run, 6, 2, baseline_decay=0.95, checkpoints=checkpoints), evaluate())
    assert [s.version for s in parameter_shards] == [2, 1]  # the shards disagree: the push was cut short
    # The recorder comes back from the run directory, the replica (another seed: its RNG must come back too).
    ledger = Ledger(run, 6, 2, baseline_decay=0.95, checkpoints=checkpoints)
    back = ControllerReplica("controller-0", PolicyCore(space, seed=99), children=2)
    back.run(LocalShards(parameter_shards, shard_map), ledger, evaluate())
    assert [s.version for s in parameter_shards] == [3, 3]
    assert parameter_shards[0].stats()["duplicates"] == 1 and ledger.lost == []
    records = run.evaluations()
    assert [r["id"] for r in records] == [f"e{i:06d}" for i in range(6)]
    assert [g["ids"] for g in run.records("gradients.jsonl")] == [[r["id"] for r in records[i:i + 2]]
                                                                  for i in (0, 2, 4)] and back.cycle == 3
    # Without the kill the same seed samples the same architectures: the RNG came back with the replica.
    straight_run = RunDirectory.create(tmp_path / "straight", {})
    straight = ControllerReplica("controller-0", PolicyCore(space, seed=2), children=2)
    straight_shards = [ParameterShard(i, p, ShardConfig()) for i, p in enumerate(shard_map.split(weights))]
    straight.run(LocalShards(straight_shards, shard_map), Ledger(straight_run, 6, 2, baseline_decay=0.95), evaluate())
    assert [r["arch"] for r in straight_run.evaluations()] == [r["arch"] for r in records]
    for a, b in zip(straight_shards, parameter_shards):
        torch.testing.assert_close(a.pull()[1], b.pull()[1])


class Wire(InProcessRecorder):
    """InProcessRecorder that keeps every call's arguments, as Ray would pickle them to the recorder."""

    def __init__(self, host: RecorderHost, core: PolicyCore):
        super().__init__(host, core)
        self.sent = []

    def __getattr__(self, name):
        method = getattr(self.host, name)

        def call(*args):
            self.sent.append((name, args))
            return method(*args)
        return call

    def record_update(self, *args):
        self.sent.append(("record_update", args))
        return super().record_update(*args)


@pytest.mark.parametrize("core", [PolicyCore, PPOCore])
def test_the_recorder_takes_all_a_replica_sends_and_restarts_without_torch(tmp_path, core):
    """The recorder's process never imports torch (a second and a half of CPU while every actor
    starts at once): what a replica sends it, pooled children included, and the checkpoints it
    keeps are plain Python and numpy."""
    space = get_space("nb201")
    policy = core(space, seed=5)
    weights = policy.weights()
    shard_map = ShardMap.build(weights, 2)
    shards = LocalShards([ParameterShard(i, p, ShardConfig(lr=0.01)) for i, p in
                          enumerate(shard_map.split(weights))], shard_map)
    run = RunDirectory.create(tmp_path / "run", {})
    (run.path / "checkpoint").mkdir()
    args = ("job", str(run.path), 12, 5, None, 0.95, str(run.path / "checkpoint"), Tail(8, 4))
    wire = Wire(RecorderHost(*args), policy)
    ControllerReplica("controller-0", policy, children=4, rolling=True).run(shards, wire, InProcessExecutor(table(), 4))
    assert {name for name, _ in wire.sent} >= {"start", "record_update", "take", "pool"}
    assert len(run.records(EVALUATIONS)) == 12
    sent = tmp_path / "sent.pkl"
    sent.write_bytes(pickle.dumps(wire.sent))
    restart = (f"import pickle; from raynas.controller.runtime.hosts import RecorderHost, DispatcherHost; "
               f"from raynas.controller.runtime.ledger import Tail; pickle.loads(open({str(sent)!r}, 'rb').read()); "
               f"assert RecorderHost{args!r}.start('controller-0', 0).state['cycle'] >= 0")
    assert not imported(restart, "torch")


def test_rolling_batches_keep_every_replica_worker_busy_until_the_budget_runs_out():
    space = get_space("nb201")
    ledger, figures = simulate_scheme(space, table(), budget=96, seed=0, controllers=4, children=4, ps_shards=2,
                                      workers=16)
    assert sorted(r["id"] for r in ledger.records) == [f"e{i:06d}" for i in range(96)]
    assert figures["worker_utilization_steady"] == pytest.approx(1.0)
    barrier = simulate_scheme(space, table(), budget=96, seed=0, controllers=4, children=4, ps_shards=2,
                              workers=16, batching="barrier")[1]
    assert barrier["worker_utilization_steady"] < 0.9 < figures["worker_utilization_steady"]
    # Every m results made one gradient and every shard applied each of them.
    # (The budget's last results make smaller batches: each replica learns from what it has.)
    assert figures["shard_versions"] == [ledger.updates] * 2 and 96 // 4 <= ledger.updates <= 96 // 4 + 4
    again, _ = simulate_scheme(space, table(), budget=96, seed=0, controllers=4, children=4, ps_shards=2,
                               workers=16)
    assert [r["arch"] for r in again.records] == [r["arch"] for r in ledger.records]


def test_rolling_batches_share_fewer_workers_through_one_queue():
    space = get_space("nb201")
    ledger, figures = simulate_scheme(space, table(), budget=32, seed=0, controllers=2, children=4, ps_shards=1,
                                      workers=4)
    assert figures["dispatch"] == "shared"
    assert sorted(r["id"] for r in ledger.records) == [f"e{i:06d}" for i in range(32)]
    plan = resolve(SearchSpec(space="nb201", evaluator="table", controllers=2, children=4, workers=4))
    assert plan.spec.replica_batch == "rolling"


class DiesAfterLogging(Ledger):
    """A recorder that goes down, with its replica (a power cut), after it wrote cycle `cycle`'s
    batch to the log and before it saved the replica's checkpoint."""

    def __init__(self, *args, cycle, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = cycle

    def _save_state(self, replica, state):
        if state["cycle"] == self.cycle:
            raise KeyboardInterrupt("the power goes")
        super()._save_state(replica, state)


def test_a_replica_and_its_recorder_dying_together_never_reuse_a_cycle(tmp_path):
    """The replica came back on the cycle the log already held: its new batch was silently not
    recorded while the shards applied its gradient (22 of 24 recorded, shards one version ahead)."""
    space = get_space("nb201")
    run = RunDirectory.create(tmp_path / "run", {})
    checkpoints = tmp_path / "run" / "checkpoint"
    checkpoints.mkdir()
    weights = PolicyCore(space, seed=2).weights()
    shard_map = ShardMap.build(weights, 2)
    parameter_shards = [ParameterShard(i, p, ShardConfig()) for i, p in enumerate(shard_map.split(weights))]
    shards = LocalShards(parameter_shards, shard_map)
    evaluator = table()

    with pytest.raises(KeyboardInterrupt):
        ControllerReplica("controller-0", PolicyCore(space, seed=2), children=2).run(
            shards, DiesAfterLogging(run, 8, 2, baseline_decay=0.95, checkpoints=checkpoints, cycle=1),
            InProcessExecutor(evaluator, 2))
    ledger = Ledger(run, 8, 2, baseline_decay=0.95, checkpoints=checkpoints)
    ControllerReplica("controller-0", PolicyCore(space, seed=2), children=2).run(shards, ledger,
                                                                                 InProcessExecutor(evaluator, 2))
    assert sorted(r["id"] for r in run.evaluations()) == [f"e{i:06d}" for i in range(8)]
    # The gradient numbered before the power cut never reached the shards: counted lost, none applied twice.
    assert len(ledger.lost) == 1
    assert [s.version for s in parameter_shards] == [ledger.updates - len(ledger.lost)] * 2


class OneByOne(InProcessExecutor):
    """Children that finish one at a time; before each wait it notes how many results it returned
    and how many records the log held then."""

    def __init__(self, evaluator, capacity, run):
        super().__init__(evaluator, capacity)
        self.run, self.returned, self.seen = run, 0, []

    def wait(self, timeout=None):
        self.seen.append((self.returned, len(self.run.evaluations())))
        done = super().wait(timeout)
        self.returned += len(done)
        return done


@pytest.mark.parametrize("rolling", [False, True])
def test_each_child_is_recorded_when_it_finishes_not_with_its_batch(tmp_path, rolling):
    """A replica recorded its children only when all m were in (one that finished at +86 s was logged
    at +103 s); only the gradient waits for the m."""
    space = get_space("nb201")
    run = RunDirectory.create(tmp_path / "run", {})
    core = PolicyCore(space, seed=2)
    weights = core.weights()
    shard_map = ShardMap.build(weights, 2)
    shards = LocalShards([ParameterShard(i, p, ShardConfig()) for i, p in enumerate(shard_map.split(weights))],
                         shard_map)
    executor = OneByOne(table(), 4, run)
    ControllerReplica("controller-0", core, children=4, rolling=rolling).run(
        shards, Ledger(run, 12, 2, baseline_decay=0.95), executor)
    assert executor.returned == 12
    assert all(logged == returned for returned, logged in executor.seen), executor.seen
