"""The Ray worker pool when several workers die at once, as they do with a lost node: a child
whose worker died is re-sent only to a worker that answers, so its retries are not spent on the
node's other, idle but equally dead, workers."""

from __future__ import annotations

import functools
import sys
import time
import uuid

import pytest

from raynas.controller import cluster
from raynas.workers.evaluation import OK, EvalResult, Evaluator, Fidelity
from raynas.workers.execution import Task

pytestmark = pytest.mark.usefixtures("ray_cluster")


class Slow(Evaluator):
    name = "slow"
    fidelity = Fidelity(maximum=1, default=1)

    def _evaluate(self, arch, seed, budget, report, checkpoint):
        time.sleep(1.0)
        return EvalResult(str(arch), reward=0.5)


def test_a_retry_skips_idle_workers_that_died_with_the_busy_one():
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    busy, *idle = workers = cluster.start_workers(functools.partial(Slow), 3, f"pool-{uuid.uuid4().hex[:8]}", 0.1, 0)
    try:
        ray.get([w.ping.remote() for w in workers])
        executor = cluster.worker_executor(workers, max_retries=1)
        executor.submit(Task("0", "a", 0, None, None))
        time.sleep(0.3)
        # The node goes: its idle workers for good, the busy one comes back (Ray restarts it).
        for w in idle:
            ray.kill(w, no_restart=True)
        ray.kill(busy, no_restart=False)
        [(task, result)] = executor.wait(timeout=60)
        assert result.status == OK, result.reason
        assert executor.retries == 1
    finally:
        for w in workers:
            cluster.kill(w)
