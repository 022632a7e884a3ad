"""The job's actors that hold the policy's tensors: a parameter shard and a controller replica
(the recorder and the dispatcher, which need no torch, are in controller/runtime/hosts.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raynas.controller.cluster import Remote, call, find_actor, metrics, queue_executor, result, send, worker_executor
from raynas.controller.runtime.plan import Plan
from raynas.controller.runtime.replica import ControllerReplica, RemoteShards, child_costs, to_numpy, to_torch
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap, ShardStore


class ShardHost:
    """One parameter shard. Every gradient it accepts is in its update log before the push that
    brought it is answered, and snapshots are written off the push path (param_server/store.py):
    a shard that Ray restarts comes back with all it acknowledged, and the push it was answering
    when it died is retried by Ray and applied once. Weights and gradients travel as numpy arrays."""

    def __init__(self, job: str, shard_id: int, initial: dict, config: ShardConfig, path: str, fsync_every: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        self.job = job
        self.store = ShardStore(path, fsync_every)
        self.shard = self.store.open(lambda: ParameterShard(shard_id, to_torch(initial), config))
        metrics.report_shard_version(job, shard_id, self.shard.version)

    def pull(self):
        version, weights = self.shard.pull()
        return version, to_numpy(weights)

    def push(self, gradients: dict, staleness: int, replica: str, cycle: int) -> dict[str, Any]:
        receipt = self.shard.push(gradients, staleness, replica, cycle)
        if receipt.outcome != "duplicate":
            self.store.append(gradients, staleness, replica, cycle, self.shard)
            metrics.report_push(self.job, self.shard.shard_id, receipt.outcome == "applied", receipt.staleness,
                                receipt.version)
        return vars(receipt)

    def push_pull(self, gradients: dict, staleness: int, replica: str, cycle: int):
        return self.push(gradients, staleness, replica, cycle), self.pull()

    def checkpoint(self) -> int:
        self.store.snapshot(self.shard, wait=True)
        return self.shard.version

    def stats(self) -> dict[str, Any]:
        return {**self.shard.stats(), "version": self.shard.version}


class RecorderClient(Remote):
    """The recorder as a replica's ledger. Children are recorded without waiting for the answer: the
    recorder runs one caller's calls in the order sent (retried in that order after a restart), so
    they are in the log before the gradient that learns from them, whose call waits for them all
    (and raises what any of them raised)."""

    def __init__(self, handle: Any, figures: Callable[[], dict[str, float]]):
        super().__init__(handle)
        #: The figures of the replica's last gradient (`PolicyCore.last_update`), sent with it.
        self.figures = figures
        self._sent: list[Any] = []

    def record_children(self, entries, replica: str, cycle: int) -> None:
        self._sent.append(send(self.handle, "record_children", entries, replica, cycle))

    def record_update(self, *args):
        sent, self._sent = self._sent, []
        for future in sent:
            result(future)
        return call(self.handle, "record_update", *args, self.figures())


class ReplicaHost:
    """Controller replica k: its copy of the shared policy and its loop, its children sent straight
    to its own workers (W >= K x m, the paper's layout) or to the shared dispatcher."""

    def __init__(self, job: str, k: int, plan: Plan, shard_map: dict, namespace: str, shards: int,
                 workers: list[str] | None, max_retries: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        spec = plan.spec
        policy = plan.strategy.shared_policy(plan.space, replica_seed(spec.seed, k), plan.strategy_options)
        self.replica = ControllerReplica(f"controller-{k}", policy, spec.children, spec.replica_batch == "rolling",
                                         child_costs(plan))
        self.shards = RemoteShards([find_actor(f"ps-{i}", namespace) for i in range(shards)],
                                   ShardMap.from_dict(shard_map))
        self.ledger = RecorderClient(find_actor("recorder", namespace), lambda: self.replica.core.last_update)
        executor = (queue_executor(find_actor("dispatcher", namespace), spec.children) if workers is None
                    else worker_executor([find_actor(w, namespace) for w in workers], max_retries,
                                         on_retry=lambda task, reason: metrics.report_retry(job)))
        self.executor = metrics.InFlight(executor, job, self.replica.name)

    def ready(self) -> bool:
        return True

    def run(self) -> dict[str, Any]:
        cycles = self.replica.run(self.shards, self.ledger, self.executor)
        return {"cycles": cycles, "staleness": self.replica.staleness, "timings_s": self.replica.timings,
                "retries": getattr(self.executor, "retries", 0)}
