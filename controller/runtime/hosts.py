"""What the job's actors are, as plain classes: the cluster layer makes them remote at wiring
time under names that read like the design picture (`ps-0`, `controller-3`, `recorder`, in
one namespace per job), and a unit test can run each of them in-process."""

from __future__ import annotations

import os
from typing import Any

import torch

from raynas.controller.cluster import Remote, find_actor, metrics, worker_executor
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.replica import ControllerReplica, RemoteShards
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.strategies import strategy_class
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import get_space


class ShardHost:
    """One parameter shard. Restarted by Ray after a crash, it comes back from its checkpoint."""

    def __init__(self, job: str, shard_id: int, initial: dict, config: ShardConfig, path: str,
                 checkpoint_every: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        self.job, self.path, self.every = job, path, checkpoint_every
        if os.path.exists(path):
            self.shard = ParameterShard.restore(path)
        else:
            self.shard = ParameterShard(shard_id, initial, config)
            self.shard.save(path)

    def pull(self):
        return self.shard.pull()

    def push(self, gradients: dict, base_version: int, replica: str) -> dict[str, Any]:
        receipt = self.shard.push(gradients, base_version, replica)
        applied = receipt.outcome == "applied"
        metrics.report_push(self.job, self.shard.shard_id, applied, receipt.staleness)
        if applied and self.shard.version % self.every == 0:
            self.shard.save(self.path)
        return vars(receipt)

    def push_pull(self, gradients: dict, base_version: int, replica: str):
        return self.push(gradients, base_version, replica), self.shard.pull()

    def checkpoint(self) -> int:
        self.shard.save(self.path)
        return self.shard.version

    def stats(self) -> dict[str, Any]:
        return {**self.shard.stats(), "version": self.shard.version}


class RecorderHost:
    """The job's single writer of evaluations.jsonl, shared by all replicas."""

    def __init__(self, job: str, run_dir: str, budget: int, seed: int, deadline: float | None):
        self.job = job
        self.ledger = Ledger(RunDirectory(run_dir), budget, seed, deadline)
        self.best = max((r["reward"] for r in self.ledger.records if r.get("reward") is not None), default=None)

    def claim(self, claimant: str, n: int):
        return self.ledger.claim(claimant, n)

    def release(self, claimant: str) -> None:
        self.ledger.release(claimant)

    def record_and_claim(self, entries, claimant: str, n: int):
        self.record_many(entries)
        return self.ledger.claim(claimant, n)

    def record_many(self, entries) -> list[bool]:
        fresh = self.ledger.record_many(entries)
        for (_, result, _), new in zip(entries, fresh):
            if new:
                if result.reward is not None:
                    self.best = result.reward if self.best is None else max(self.best, result.reward)
                metrics.report_evaluation(self.job, result.status, result.reward,
                                          result.metrics.get("wall_time_s"), self.best)
        return fresh

    def progress(self, since: int):
        return self.ledger.progress(since)

    def stop(self) -> None:
        self.ledger.stop()

    def finished(self) -> bool:
        return self.ledger.finished()


class ReplicaHost:
    """Controller replica k: its copy of the shared policy, its baseline, its loop, and an
    executor over the workers it sends its children to."""

    def __init__(self, job: str, k: int, spec: dict, shard_map: dict, namespace: str, shards: int,
                 workers: list[str], checkpoint_path: str, max_retries: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        name = f"controller-{k}"
        space = get_space(spec["space"], **spec["space_options"])
        cls = strategy_class(spec["strategy"])
        policy = cls.shared_policy(space, replica_seed(spec["seed"], k),
                                   cls.parse_options(space, spec["strategy_options"]))
        self.replica = ControllerReplica(name, policy, spec["children"], checkpoint_path)
        self.shards = RemoteShards([find_actor(f"ps-{i}", namespace) for i in range(shards)],
                                   ShardMap.from_dict(shard_map))
        self.ledger = Remote(find_actor("recorder", namespace))
        self.executor = worker_executor([find_actor(w, namespace) for w in workers], max_retries,
                                        on_retry=lambda task, reason: metrics.report_retry(job))
        # Claims held by this replica's previous life (before a crash) are void.
        self.ledger.release(name)

    def ready(self) -> bool:
        return True

    def run(self) -> dict[str, Any]:
        cycles = self.replica.run(self.shards, self.ledger, self.executor.run_all)
        return {"cycles": cycles, "staleness": self.replica.staleness, "timings_s": self.replica.timings}
