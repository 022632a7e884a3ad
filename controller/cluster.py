"""Ray wiring: thin actors around the core classes, named so that the
dashboard's actor list reads like the design picture (`ps-0`, `controller-3`,
`worker-12`, `recorder`, all in one namespace per job)."""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from param_server import ParameterShard, ShardConfig, ShardMap
from search_spaces import get_space
from workers.ray_pool import RayWorkerPool

from . import metrics
from .ledger import Ledger
from .replica import ControllerReplica, PolicyCore, distributed_rl_options, replica_seed
from .rundir import RunDirectory


class ShardService:
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
        self.restored_at = self.shard.version if os.path.exists(path) else None

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


class LedgerService:
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
        for (task, result, _), new in zip(entries, fresh):
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


class RayShards:
    """A replica's view of the S shards: pulls and pushes go out in parallel."""

    def __init__(self, handles: list, shard_map: ShardMap):
        self.handles = handles
        self.map = shard_map

    def pull(self):
        versions, weights = [], {}
        for v, part in ray.get([h.pull.remote() for h in self.handles]):
            versions.append(v)
            weights.update(part)
        return versions, weights

    def push_pull(self, grads, versions, replica):
        parts = self.map.split(grads)
        answers = ray.get([h.push_pull.remote(p, v, replica) for h, p, v in zip(self.handles, parts, versions)])
        weights: dict = {}
        for _, (_, part) in answers:
            weights.update(part)
        return [receipt for receipt, _ in answers], [v for _, (v, _) in answers], weights


class RayLedger:
    def __init__(self, handle):
        self.handle = handle

    def claim(self, claimant, n):
        return ray.get(self.handle.claim.remote(claimant, n))

    def record_and_claim(self, entries, claimant, n):
        return ray.get(self.handle.record_and_claim.remote(entries, claimant, n))


class ReplicaService:
    """Controller replica k: its policy copy, its baseline, and the loop."""

    def __init__(self, job: str, k: int, spec: dict, shard_map: dict, namespace: str, shards: int,
                 workers: int, checkpoint_path: str, max_retries: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        name = f"controller-{k}"
        space = get_space(spec["space"], **spec["space_options"])
        _, options = distributed_rl_options(spec["strategy_options"])
        core = PolicyCore(space, seed=replica_seed(spec["seed"], k), **options)
        self.replica = ControllerReplica(name, core, spec["children"], checkpoint_path)
        get = lambda n: ray.get_actor(n, namespace=namespace)  # noqa: E731
        self.shards = RayShards([get(f"ps-{i}") for i in range(shards)], ShardMap.from_dict(shard_map))
        self.ledger_handle = get("recorder")
        # Each replica starts its round-robin at its own worker, so K replicas spread over the pool.
        handles = [get(f"worker-{(k + j) % workers}") for j in range(workers)]
        self.pool = RayWorkerPool(handles, max_retries=max_retries, on_retry=lambda t, r: metrics.report_retry(job))
        # Claims held by this replica's previous life (before a crash) are void.
        ray.get(self.ledger_handle.release.remote(name))

    def ready(self) -> bool:
        return True

    def run(self) -> dict[str, Any]:
        cycles = self.replica.run(self.shards, RayLedger(self.ledger_handle), self.pool.run_all)
        return {"cycles": cycles, "staleness": self.replica.staleness, "timings_s": self.replica.timings}
