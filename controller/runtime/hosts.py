"""What the job's actors are, as plain classes: the cluster layer makes them remote at wiring
time under names that read like the design picture (`ps-0`, `controller-3`, `recorder`,
`dispatcher`, in one namespace per job), and a unit test can run each of them in-process."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import torch

from raynas.controller.cluster import Remote, find_actor, metrics, worker_executor
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.plan import Plan
from raynas.controller.runtime.replica import ControllerReplica, RemoteShards
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.strategies.reinforce import replica_seed
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Executor, Task


class ShardHost:
    """One parameter shard. Every update is on disk before the push that made it is answered,
    so a shard that Ray restarts comes back with all it acknowledged, and the push it was
    answering when it died is retried by Ray and applied once."""

    def __init__(self, job: str, shard_id: int, initial: dict, config: ShardConfig, path: str, fsync_every: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        self.job, self.path, self.fsync_every = job, path, fsync_every
        if os.path.exists(path):
            self.shard = ParameterShard.restore(path)
        else:
            self.shard = ParameterShard(shard_id, initial, config)
            self.shard.save(path)

    def pull(self):
        return self.shard.pull()

    def push(self, gradients: dict, staleness: int, replica: str, cycle: int) -> dict[str, Any]:
        receipt = self.shard.push(gradients, staleness, replica, cycle)
        if receipt.outcome != "duplicate":
            metrics.report_push(self.job, self.shard.shard_id, receipt.outcome == "applied", receipt.staleness)
            # Written before the answer; fsynced only every `fsync_every` updates (a power cut, unlike a
            # process crash, may then cost the last few updates of this shard).
            self.shard.save(self.path, durable=self.shard.version % self.fsync_every == 0)
        return vars(receipt)

    def push_pull(self, gradients: dict, staleness: int, replica: str, cycle: int):
        return self.push(gradients, staleness, replica, cycle), self.shard.pull()

    def checkpoint(self) -> int:
        self.shard.save(self.path)
        return self.shard.version

    def stats(self) -> dict[str, Any]:
        return {**self.shard.stats(), "version": self.shard.version}


class RecorderHost:
    """The job's single writer of evaluations.jsonl, shared by all replicas: the ledger, with the
    gradients' order, the shared baseline and the replicas' checkpoints. Restartable: everything
    it keeps is rebuilt from the run directory."""

    def __init__(self, job: str, run_dir: str, budget: int, seed: int, deadline: float | None,
                 baseline_decay: float | None, checkpoints: str):
        self.job = job
        self.ledger = Ledger(RunDirectory(run_dir), budget, seed, deadline, baseline_decay, checkpoints)
        self.best = max((r["reward"] for r in self.ledger.records if r.get("reward") is not None), default=None)

    def start(self, replica: str, n: int):
        return self.ledger.start(replica, n)

    def claim(self, claimant: str, n: int):
        return self.ledger.claim(claimant, n)

    def record_update(self, entries, replica: str, n: int, cycle: int, synced: int, state: dict):
        fresh = {task.id for task, _, _ in entries if task.id not in self.ledger.recorded}
        receipt = self.ledger.record_update(entries, replica, n, cycle, synced, state)
        for task, result, _ in entries:
            if task.id in fresh:
                if result.reward is not None:
                    self.best = result.reward if self.best is None else max(self.best, result.reward)
                metrics.report_evaluation(self.job, result.status, result.reward,
                                          result.metrics.get("wall_time_s"), self.best)
        return receipt

    def lose(self, replica: str, cycle: int, reason: str) -> None:
        self.ledger.lose(replica, cycle, reason)

    def progress(self, since: int):
        return self.ledger.progress(since)

    def stop(self) -> None:
        self.ledger.stop()

    def scheme_stats(self) -> dict[str, Any]:
        return self.ledger.scheme_stats()


class Dispatcher:
    """One queue in front of workers that several callers share (fewer workers than the
    scheme's K x m children): each child goes to the next free worker, in the order asked,
    and a busy worker never gets a second one. `run_all` may be called from many threads
    (one per replica); one pump thread alone drives the executor."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self._inbox: queue.Queue[Task] = queue.Queue()
        self._done: dict[str, EvalResult] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, name="dispatcher", daemon=True).start()

    def run_all(self, tasks: list[Task]) -> list[EvalResult]:
        for task in tasks:
            self._inbox.put(task)
        with self._changed:
            self._changed.wait_for(lambda: all(t.id in self._done for t in tasks))
            return [self._done.pop(t.id) for t in tasks]

    def _pump(self) -> None:
        while True:
            try:
                # Block only when nothing is running; otherwise look in between results.
                task = self._inbox.get(timeout=None if not self.executor.in_flight else 0)
                self.executor.submit(task)
                continue
            except queue.Empty:
                pass
            finished = self.executor.wait(timeout=0.05)
            if finished:
                with self._changed:
                    self._done.update((t.id, r) for t, r in finished)
                    self._changed.notify_all()


class DispatcherHost:
    """The dispatcher as an actor over the job's workers."""

    def __init__(self, job: str, namespace: str, workers: list[str], max_retries: int):
        executor = worker_executor([find_actor(w, namespace) for w in workers], max_retries,
                                   on_retry=lambda task, reason: metrics.report_retry(job))
        self.dispatcher = Dispatcher(executor)

    def run_all(self, tasks: list[Task]) -> list[EvalResult]:
        return self.dispatcher.run_all(tasks)

    def retries(self) -> int:
        return self.dispatcher.executor.retries


class ReplicaHost:
    """Controller replica k: its copy of the shared policy and its loop, its children sent to
    its own workers (W >= K x m, the paper's layout) or to the shared dispatcher."""

    def __init__(self, job: str, k: int, plan: Plan, shard_map: dict, namespace: str, shards: int,
                 workers: list[str] | None, max_retries: int):
        torch.set_num_threads(1)  # tiny tensors: more threads only fight the other actors for the cores
        name = f"controller-{k}"
        spec = plan.spec
        policy = plan.strategy.shared_policy(plan.space, replica_seed(spec.seed, k), plan.strategy_options)
        self.replica = ControllerReplica(name, policy, spec.children)
        self.shards = RemoteShards([find_actor(f"ps-{i}", namespace) for i in range(shards)],
                                   ShardMap.from_dict(shard_map))
        self.ledger = Remote(find_actor("recorder", namespace))
        self.rolling = spec.replica_batch == "rolling"
        self.executor = None if workers is None else worker_executor(
            [find_actor(w, namespace) for w in workers], max_retries,
            on_retry=lambda task, reason: metrics.report_retry(job))
        self.evaluate = (Remote(find_actor("dispatcher", namespace)).run_all if workers is None
                         else self.executor.run_all)

    def ready(self) -> bool:
        return True

    def run(self) -> dict[str, Any]:
        if self.rolling:
            cycles = self.replica.run_rolling(self.shards, self.ledger, self.executor)
        else:
            cycles = self.replica.run(self.shards, self.ledger, self.evaluate)
        return {"cycles": cycles, "staleness": self.replica.staleness, "timings_s": self.replica.timings,
                "retries": 0 if self.executor is None else self.executor.retries}
