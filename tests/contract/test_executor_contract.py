"""The contract every executor keeps (workers/execution/base.py), run on the in-process one
and on the Ray worker pool: each submitted task comes back exactly once, reports reach the
listener before their task's result, `run_all` keeps order, and `cancel` stops a queued or
running task with a cancelled result."""

from __future__ import annotations

import functools
import sys
import time
import uuid
import zlib

import pytest

from raynas.common import NotReady
from raynas.workers.evaluation import CANCELLED, OK, EvalResult, Evaluator, Fidelity
from raynas.workers.execution import InProcessExecutor, Task


class Epochs(Evaluator):
    """Sleeps `delay` per epoch and reports each; the reward follows from the architecture."""

    name = "epochs"
    fidelity = Fidelity(maximum=20, default=3)

    def __init__(self, delay: float = 0.02):
        self.delay = delay

    def _evaluate(self, arch, seed, budget, report, checkpoint):
        for epoch in range(1, budget + 1):
            time.sleep(self.delay)
            report({"epoch": epoch, "val_acc": epoch / budget})
        return EvalResult(str(arch), reward=zlib.crc32(str(arch).encode()) % 1000 / 1000)


def _in_process(on_report, capacity):
    return InProcessExecutor(Epochs(), capacity=capacity, on_report=on_report), []


def _ray(on_report, capacity):
    import ray

    from raynas.controller import cluster

    # Ray's workers cannot import this test module by name: ship its classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    workers = cluster.start_workers(functools.partial(Epochs), capacity, f"contract-{uuid.uuid4().hex[:8]}", 0.5, 0)
    return cluster.worker_executor(workers, max_retries=1, on_report=on_report), workers


@pytest.fixture(params=["in-process", "ray"])
def make(request):
    made = []
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")

    def build(on_report=None, capacity=2):
        executor, actors = (_ray if request.param == "ray" else _in_process)(on_report, capacity)
        made.extend(actors)
        return executor

    yield build
    if made:
        from raynas.controller import cluster

        for actor in made:
            cluster.kill(actor)


def drain(executor) -> dict[str, EvalResult]:
    results: dict[str, EvalResult] = {}
    while executor.in_flight:
        for task, result in executor.wait():
            assert task.id not in results, f"{task.id} came back twice"
            results[task.id] = result
    return results


def test_every_submitted_task_comes_back_exactly_once(make):
    executor = make(capacity=2)
    tasks = [Task(f"e{i}", f"arch-{i}", seed=i) for i in range(5)]
    for task in tasks:
        executor.submit(task)
    results = drain(executor)
    assert set(results) == {t.id for t in tasks} and all(r.status == OK for r in results.values())
    assert all(results[t.id].metrics["budget"] == 3 for t in tasks)
    with pytest.raises(NotReady):
        executor.wait()


def test_run_all_keeps_the_order_and_honours_budgets(make):
    executor = make(capacity=2)
    tasks = [Task(f"e{i}", f"arch-{i}", seed=i, budget=1 + i % 3) for i in range(4)]
    results = executor.run_all(tasks)
    assert [r.arch for r in results] == [t.arch for t in tasks]
    assert [r.metrics["budget"] for r in results] == [t.budget for t in tasks]


def test_reports_reach_the_listener_before_their_result(make):
    seen: list[tuple[str, int]] = []
    executor = make(on_report=lambda task, report: seen.append((task.id, report["epoch"])), capacity=2)
    for i in range(3):
        executor.submit(Task(f"e{i}", f"arch-{i}", seed=i, budget=3))
    finished = []
    while executor.in_flight:
        for task, _ in executor.wait():
            assert [e for t, e in seen if t == task.id] == [1, 2, 3]
            finished.append(task.id)
    assert sorted(finished) == ["e0", "e1", "e2"]


def test_cancel_stops_queued_and_running_tasks(make):
    executor = make(capacity=1)

    def on_report(task, report):
        if task.id == "e0" and report["epoch"] == 2:
            assert executor.cancel("e0")

    executor.on_report = on_report
    executor.submit(Task("e0", "arch-0", seed=0, budget=20))
    executor.submit(Task("e1", "arch-1", seed=1))
    # One worker: e1 waits in the queue and is cancelled before it starts.
    assert executor.cancel("e1")
    assert not executor.cancel("nope")
    results = drain(executor)
    assert results["e1"].status == CANCELLED
    assert results["e0"].status == CANCELLED
    assert results["e0"].metrics.get("budget", 0) < 20
