"""What the job's actors are, as plain classes: the cluster layer makes them remote at wiring
time under names that read like the design picture (`ps-0`, `controller-3`, `recorder`,
`dispatcher`, in one namespace per job), and a unit test can run each of them in-process.

Here the two that never touch the policy's tensors, the recorder and the dispatcher: their
processes do not import torch (about 1.5 s of CPU each at a job's start, when every actor starts
at once); the shards and the replicas are in controller/runtime/policy_hosts.py.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from raynas.controller.cluster import find_actor, metrics, worker_executor
from raynas.controller.runtime.ledger import Ledger, Tail
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.signals import SignalLog
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Executor, Task


class RecorderHost:
    """The job's single writer of evaluations.jsonl and gradients.jsonl, shared by all replicas: the
    ledger, with the gradients' order, the shared baseline, the replicas' checkpoints and the tail's
    pool. Restartable: everything but the pool is rebuilt from the run directory (the pool's
    evaluations are handed out again)."""

    def __init__(self, job: str, run_dir: str, budget: int, seed: int, deadline: float | None,
                 baseline_decay: float | None, checkpoints: str, tail: Tail):
        self.job = job
        run = RunDirectory(run_dir)
        self.ledger = Ledger(run, budget, seed, deadline, baseline_decay, checkpoints, tail)
        self.signals = SignalLog(run, job)
        self.best = max((r["reward"] for r in self.ledger.records if r.get("reward") is not None), default=None)

    def start(self, replica: str, n: int):
        return self.ledger.start(replica, n)

    def take(self, claimant: str, n: int, holding: list[str]):
        return self.ledger.take(claimant, n, holding)

    def pool(self, claimant: str, children: list, n: int):
        return self.ledger.pool(claimant, children, n)

    def record_children(self, entries, replica: str, cycle: int) -> None:
        self._report(entries, lambda: self.ledger.record_children(entries, replica, cycle))

    def record_update(self, entries, replica: str, cycle: int, ids: list[str], synced: int, state: dict, n: int,
                      holding: list[str], figures: dict[str, float]):
        """Record a replica's gradient; `figures` (its baseline, the batch's reward, the policy's
        entropy) are the strategy's signals of that update, numbered as the gradient is."""
        receipt = self._report(entries, lambda: self.ledger.record_update(entries, replica, cycle, ids, synced,
                                                                          state, n, holding))
        self.signals.add(receipt.number + 1, {**figures, "replica": replica})
        return receipt

    def _report(self, entries, record):
        """Record, then count the new evaluations on the dashboard."""
        fresh = {task.id for task, _, _ in entries if task.id not in self.ledger.recorded}
        answer = record()
        for task, evaluation, _ in entries:
            if task.id in fresh:
                if evaluation.reward is not None:
                    self.best = evaluation.reward if self.best is None else max(self.best, evaluation.reward)
                metrics.report_evaluation(self.job, evaluation.status, evaluation.reward,
                                          evaluation.metrics.get("wall_time_s"), self.best)
        return answer

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
    and a busy worker never gets a second one. `run` may be called from many threads (one per
    child a replica has in flight); one pump thread alone drives the executor."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self._inbox: queue.Queue[Task] = queue.Queue()
        self._done: dict[str, EvalResult] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, name="dispatcher", daemon=True).start()

    def run(self, task: Task) -> EvalResult:
        self._inbox.put(task)
        with self._changed:
            self._changed.wait_for(lambda: task.id in self._done)
            return self._done.pop(task.id)

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

    def run(self, task: Task) -> EvalResult:
        return self.dispatcher.run(task)

    def retries(self) -> int:
        return self.dispatcher.executor.retries
