"""The dashboard's metrics after known events, without a Ray cluster: the metrics are stand-ins that
keep every value they are given (tests/gauges.py), and the code that reports runs in this process
(a shard's host, an executor). The watchers' gauge is tested with the service (test_service.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gauges import record

from raynas.controller.cluster import metrics
from raynas.controller.runtime.policy_hosts import ShardHost
from raynas.param_server import ShardConfig
from raynas.search_spaces import get_space
from raynas.workers.evaluation import get_evaluator
from raynas.workers.execution import InProcessExecutor, Task


@pytest.fixture
def recorded(monkeypatch):
    return record(monkeypatch)


def test_one_shot_reports_reach_their_gauges(recorded):
    metrics.report_oneshot_epoch("job", 0, {"skip_count": 2, "val_acc": 0.5})
    metrics.report_oneshot_epoch("job", 1, {"val_miou": 0.25, "path": [0, 1]})
    metrics.report_oneshot_epoch("job", 2, {"val_ppl": 120.0, "stage": "train"})
    seen = {name: [(v, t["run"]) for v, t in recorded[name].values] for name in metrics.ONE_SHOT_GAUGES.values()}
    assert seen == {"skips": [(2, "0")], "supernet_acc": [(0.5, "0")], "supernet_miou": [(0.25, "1")],
                    "supernet_ppl": [(120.0, "2")]}


def test_children_in_flight_follow_every_hand_out_and_return(recorded):
    space = get_space("nb201")
    rng = np.random.default_rng(0)
    executor = metrics.InFlight(InProcessExecutor(get_evaluator("table", space), capacity=3), "job", "controller-2")
    assert executor.capacity == 3  # the rest is the executor's own
    for i in range(3):
        executor.submit(Task(f"e{i}", space.sample(rng), i))
    while executor.in_flight:
        executor.wait()
    gauge = recorded["in_flight"]
    assert [v for v, _ in gauge.values] == [1, 2, 3, 2, 1, 0]
    assert all(tags == {"job": "job", "holder": "controller-2"} for _, tags in gauge.values)


def test_a_shards_version_is_reported_at_start_after_each_push_and_after_a_restart(recorded, tmp_path):
    initial = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    path = str(tmp_path / "ps-1.pt")
    host = ShardHost("job", 1, initial, ShardConfig(accumulate=2), path, 1)
    for cycle in range(3):
        host.push({"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)}, 0, "controller-0", cycle)
    host.push({"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)}, 0, "controller-0", 2)  # a retry
    ShardHost("job", 1, initial, ShardConfig(accumulate=2), path, 1)  # Ray restarted it
    gauge = recorded["shard_version"]
    # 0 at the start; 0, 1, 1 after the pushes (2 gradients a step); nothing for the retry; 1 after the restart.
    assert [v for v, _ in gauge.values] == [0, 0, 1, 1, 1]
    assert all(tags == {"job": "job", "shard": "1"} for _, tags in gauge.values)
    assert [v for v, _ in recorded["ps_updates"].values] == [1]  # one update applied, the duplicate not counted


def test_every_gauge_is_sent_again_until_its_series_ends(recorded):
    """Ray's agent drops a gauge series not set for two report intervals: each is sent again
    (`refresh`, every REFRESH_S), but for a search's watchers once the last stream closed."""
    metrics.report_watchers("a", 2)
    metrics.report_watchers("b", 1)
    metrics.report_watchers("b", 0)
    metrics.report_in_flight("a", "proposer", 3)
    metrics.refresh(recorded)
    assert recorded["watchers"].values == [(2, {"job": "a"}), (1, {"job": "b"}), (0, {"job": "b"}), (2, {"job": "a"})]
    assert recorded["in_flight"].values == [(3, {"job": "a", "holder": "proposer"})] * 2
