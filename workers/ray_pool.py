"""The worker pool on Ray: long-lived worker actors that evaluate architectures.

A worker that dies is restarted by Ray (max_restarts); the evaluation it held
goes to the next free worker, up to `max_retries` times, and is then recorded
as failed with the reason. Evaluators never raise (see Evaluator.evaluate), so
a child's own crash is a failed result, not a dead worker.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import ray
from ray.exceptions import RayActorError, RayTaskError

from .evaluator import EvalResult, Evaluator
from .executor import Executor, Task


class Worker:
    """Holds one evaluator for its whole life (datasets load once per worker)."""

    def __init__(self, make_evaluator: Callable[[], Evaluator]):
        self.evaluator = make_evaluator()

    def evaluate(self, task: Task) -> EvalResult:
        return self.evaluator.evaluate(task.arch, seed=task.seed)

    def evaluate_many(self, tasks: list[Task]) -> list[EvalResult]:
        return [self.evaluate(t) for t in tasks]

    def ping(self) -> bool:
        return True


_DEAD = (RayActorError, RayTaskError)


def start_workers(make_evaluator: Callable[[], Evaluator], size: int, namespace: str,
                  cpus_per_child: float = 1.0, gpus_per_child: float = 0.0) -> list:
    """`size` named worker actors (`worker-0` ...); Ray restarts any that dies."""
    actor = ray.remote(Worker)
    options = dict(num_cpus=cpus_per_child, num_gpus=gpus_per_child, max_restarts=-1, max_task_retries=0,
                   namespace=namespace)
    return [actor.options(name=f"worker-{i}", **options).remote(make_evaluator) for i in range(size)]


class RayWorkerPool(Executor):
    """An Executor over worker actors, one evaluation per worker at a time from
    this pool's side (several pools may share workers: Ray queues their calls)."""

    def __init__(self, workers: list, max_retries: int = 2,
                 on_retry: Callable[[Task, str], None] | None = None):
        self.workers = list(workers)
        self.capacity = len(self.workers)
        self.max_retries = max_retries
        self.on_retry = on_retry or (lambda task, reason: None)
        self._idle = deque(self.workers)
        self._queue: deque[tuple[Task, int]] = deque()
        self._running: dict[ray.ObjectRef, tuple[Task, object, int]] = {}
        # Workers being restarted by Ray: a ping that returns when they are back.
        self._recovering: dict[ray.ObjectRef, object] = {}

    def submit(self, task: Task) -> None:
        self._queue.append((task, 0))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            worker = self._idle.popleft()
            task, attempt = self._queue.popleft()
            self._running[worker.evaluate.remote(task)] = (task, worker, attempt)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def wait(self) -> list[tuple[Task, EvalResult]]:
        done: list[tuple[Task, EvalResult]] = []
        while not done:
            if not self._running and not (self._queue and self._recovering):
                raise RuntimeError("wait() called with no task in flight")
            refs = list(self._running) + list(self._recovering)
            ready, _ = ray.wait(refs, num_returns=1)
            ready += ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - 1, timeout=0)[0] \
                if len(refs) > 1 else []
            for ref in ready:
                if ref in self._recovering:
                    self._back(ref)
                    continue
                task, worker, attempt = self._running.pop(ref)
                try:
                    done.append((task, ray.get(ref)))
                    self._idle.append(worker)
                except _DEAD as exc:
                    # Not idle until Ray has restarted it, so the retry goes to another worker.
                    self._recovering[worker.ping.remote()] = worker
                    reason = f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    if attempt >= self.max_retries:
                        done.append((task, EvalResult.failure(
                            str(task.arch), f"{reason} (after {attempt + 1} attempts)")))
                    else:
                        self.on_retry(task, reason)
                        self._queue.appendleft((task, attempt + 1))
            self._dispatch()
        return done

    def _back(self, ping: ray.ObjectRef) -> None:
        worker = self._recovering.pop(ping)
        try:
            ray.get(ping)
            self._idle.append(worker)
        except _DEAD:
            self._recovering[worker.ping.remote()] = worker

    def run_all(self, tasks: list[Task]) -> list[EvalResult]:
        """Evaluate `tasks` and return their results in the same order.

        The free workers each get a share of the tasks in one call (one round trip
        per worker rather than per task, which is what limits instant evaluators);
        a share whose worker died goes back to the queue task by task.
        """
        results: dict[str, EvalResult] = {}
        n = min(len(self._idle), len(tasks))
        shares = {}
        for i in range(n):
            worker = self._idle.popleft()
            share = tasks[i::n]
            shares[worker.evaluate_many.remote(share)] = (share, worker)
        if n == 0:
            for t in tasks:
                self.submit(t)
        for ref, (share, worker) in shares.items():
            try:
                results.update(zip((t.id for t in share), ray.get(ref)))
                self._idle.append(worker)
            except _DEAD as exc:
                self._recovering[worker.ping.remote()] = worker
                reason = f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                for t in share:
                    if self.max_retries < 1:
                        results[t.id] = EvalResult.failure(str(t.arch), f"{reason} (after 1 attempt)")
                    else:
                        self.on_retry(t, reason)
                        self._queue.append((t, 1))
        self._dispatch()
        while len(results) < len(tasks):
            results.update((t.id, r) for t, r in self.wait())
        return [results[t.id] for t in tasks]

    def ready(self, timeout: float = 300.0) -> None:
        """Block until every worker has started (its evaluator built)."""
        ray.get([w.ping.remote() for w in self.workers], timeout=timeout)
