"""The executor on Ray: long-lived worker actors that evaluate architectures.

A worker holds one evaluator for its whole life (datasets load once per worker) and
streams each evaluation back: its per-epoch reports as they happen, then its result
(a Ray streaming generator). A worker that dies is restarted by Ray (max_restarts); the
evaluations it held go to the next free worker, up to `max_retries` times, and are then
recorded as failed with the reason. Evaluators never raise (see Evaluator.evaluate), so
a child's own crash is a failed result, not a dead worker. The executor never gives a
worker a second call while one is running.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raynas.common import NotReady
from raynas.workers.evaluation.base import Cancelled, EvalResult, Evaluator
from raynas.workers.execution.base import Executor, OnReport, Task

#: How a dead worker shows itself to the caller of one of its calls.
_DEAD = (RayActorError, RayTaskError)


class Worker:
    """One worker's state and loop, Ray-free: `start_workers` makes it an actor.

    `run` is a generator of ("report", task id, dict) and ("result", task id, EvalResult)
    items; the evaluation itself runs in a thread so that its report callback can hand
    items to the generator, and so that `cancel` (a second concurrent call of the actor)
    reaches it while it trains.
    """

    def __init__(self, make_evaluator: Callable[[], Evaluator], name: str = "worker"):
        self.evaluator = make_evaluator()
        self.name = name
        self._cancelled: set[str] = set()
        self._busy = threading.Lock()

    def run(self, tasks: list[Task]) -> Iterator[tuple[str, str, Any]]:
        for task in tasks:
            yield from self._run_one(task)

    def _run_one(self, task: Task) -> Iterator[tuple[str, str, Any]]:
        if task.id in self._cancelled:
            self._cancelled.discard(task.id)
            yield "result", task.id, EvalResult.cancelled(str(task.arch), "cancelled before it started")
            return
        items: queue.Queue = queue.Queue()

        def report(data: dict[str, Any]) -> None:
            if task.id in self._cancelled:
                raise Cancelled("cancelled")
            items.put(("report", task.id, data))

        def evaluate() -> None:
            with self._busy:
                started = time.time()
                result = self.evaluator.evaluate(task.arch, task.seed, task.budget, report, task.checkpoint)
            # Where and when it ran: the dashboard's view of a child, and the proof that no worker ran
            # two at once and that a child saw only the GPUs Ray gave it.
            result.metrics.update(worker=self.name, started_at=started, **placement())
            items.put(("result", task.id, result))

        threading.Thread(target=evaluate, name=f"evaluate-{task.id}", daemon=True).start()
        while True:
            item = items.get()
            yield item
            if item[0] == "result":
                self._cancelled.discard(task.id)
                return

    def cancel(self, task_id: str) -> None:
        self._cancelled.add(task_id)

    def ping(self) -> bool:
        return True

    def state(self) -> dict[str, Any]:
        """Whether a child is training here now, and where this worker runs."""
        return {"busy": self._busy.locked(), "name": self.name, **placement()}


def placement() -> dict[str, Any]:
    """The node this process runs on and the GPUs Ray assigned it (what CUDA will show it)."""
    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def start_workers(make_evaluator: Callable[[], Evaluator], size: int, namespace: str,
                  cpus_per_child: float = 1.0, gpus_per_child: float = 0.0, first: int = 0,
                  slots: list | None = None) -> list:
    """`size` named worker actors (`worker-{first}` ...); Ray restarts any that dies. `slots`
    gives each its scheduling strategy (e.g. a bundle of a placement group)."""
    actor = ray.remote(Worker)
    # Two concurrent calls: the running evaluation and a cancel that must reach it.
    options = dict(num_cpus=cpus_per_child, num_gpus=gpus_per_child, max_restarts=-1, max_task_retries=0,
                   max_concurrency=2, namespace=namespace)
    return [actor.options(name=f"worker-{first + j}", **options,
                          **({"scheduling_strategy": slots[j]} if slots else {})).remote(make_evaluator,
                                                                                        f"worker-{first + j}")
            for j in range(size)]


@dataclass
class _Call:
    """One streaming call to a worker: the tasks it carries (with their attempt numbers)."""

    worker: Any
    tasks: list[tuple[Task, int]]
    finished: set[str] = field(default_factory=set)


class RayExecutor(Executor):
    """An Executor over worker actors it owns: one call per worker at a time."""

    def __init__(self, workers: list, max_retries: int = 2, on_retry: Callable[[Task, str], None] | None = None,
                 on_report: OnReport | None = None):
        super().__init__(on_report)
        self.workers = list(workers)
        self.capacity = len(self.workers)
        self.max_retries = max_retries
        self.on_retry = on_retry or (lambda task, reason: None)
        self._idle = deque(self.workers)
        self._queue: deque[tuple[Task, int]] = deque()
        self._running: dict[Any, _Call] = {}
        # Workers being restarted by Ray: a ping that returns when they are back.
        self._recovering: dict[ray.ObjectRef, Any] = {}
        self._cancelled: set[str] = set()
        #: Evaluations re-sent after their worker died (result.json counts them).
        self.retries = 0
        #: Results ready for the next `wait` (cancelled queued tasks).
        self._ready: list[tuple[Task, EvalResult]] = []

    def submit(self, task: Task) -> None:
        self._queue.append((task, 0))
        self._dispatch()

    @property
    def in_flight(self) -> int:
        running = sum(len(c.tasks) - len(c.finished) for c in self._running.values())
        return len(self._queue) + running + len(self._ready)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _start(self, worker, tasks: list[tuple[Task, int]]) -> None:
        stream = worker.run.options(num_returns="streaming").remote([t for t, _ in tasks])
        self._running[stream] = _Call(worker, tasks)

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            # More waiting than there are workers: a worker takes its share in one call (one round
            # trip for several children, which is what limits instant evaluators).
            share = -(-len(self._queue) // self.capacity)
            self._start(self._idle.popleft(), [self._queue.popleft() for _ in range(share)])

    def cancel(self, task_id: str, force: bool = False) -> bool:
        for i, (task, _) in enumerate(self._queue):
            if task.id == task_id:
                del self._queue[i]
                self._ready.append((task, EvalResult.cancelled(str(task.arch), "cancelled before it started")))
                return True
        for call in self._running.values():
            if any(t.id == task_id for t, _ in call.tasks) and task_id not in call.finished:
                self._cancelled.add(task_id)
                if force:
                    # Ray restarts the worker; `wait` reports the task as cancelled, not as a worker death.
                    ray.kill(call.worker, no_restart=False)
                else:
                    call.worker.cancel.remote(task_id)
                return True
        return False

    def wait(self, timeout: float | None = None) -> list[tuple[Task, EvalResult]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        done, self._ready = self._ready, []
        while not done:
            if not self._running and not (self._queue and self._recovering):
                raise NotReady("wait() called with no task in flight")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            refs = list(self._running) + list(self._recovering)
            ready, rest = ray.wait(refs, num_returns=1, timeout=left)
            if not ready:
                return done
            if rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                if ref in self._recovering:
                    self._back(ref)
                else:
                    done += self._advance(ref)
            self._dispatch()
        return done

    def _advance(self, stream) -> list[tuple[Task, EvalResult]]:
        """Take the next item of a worker's stream: a report, a result, its end, or its worker's death."""
        call = self._running[stream]
        try:
            kind, task_id, payload = ray.get(next(stream))
        except StopIteration:
            del self._running[stream]
            self._idle.append(call.worker)
            return []
        except _DEAD as exc:
            del self._running[stream]
            return self._lost(call, exc)
        task = next(t for t, _ in call.tasks if t.id == task_id)
        if kind == "report":
            self.on_report(task, payload)
            return []
        call.finished.add(task_id)
        self._cancelled.discard(task_id)
        return [(task, payload)]

    def _lost(self, call: _Call, exc: Exception) -> list[tuple[Task, EvalResult]]:
        """The worker died: cancelled tasks end as cancelled, the others go back to the queue
        (to another worker, as this one is not idle until Ray has restarted it) or fail. Deaths
        come together (a lost node takes all of its workers), so the idle workers must answer a
        ping before they get work again: a retry sent to one of them would die too and spend
        the child's retries on a node that is gone."""
        for worker in [call.worker, *self._idle]:
            self._recovering[worker.ping.remote()] = worker
        self._idle.clear()
        reason = f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        done = []
        for task, attempt in call.tasks:
            if task.id in call.finished:
                continue
            if task.id in self._cancelled:
                self._cancelled.discard(task.id)
                done.append((task, EvalResult.cancelled(str(task.arch), "cancelled (its worker was restarted)")))
            elif attempt >= self.max_retries:
                done.append((task, EvalResult.failure(str(task.arch), f"{reason} (after {attempt + 1} attempts)")))
            else:
                self.retries += 1
                self.on_retry(task, reason)
                self._queue.append((task, attempt + 1))
        return done

    def _back(self, ping: ray.ObjectRef) -> None:
        worker = self._recovering.pop(ping)
        try:
            ray.get(ping)
            self._idle.append(worker)
        except _DEAD:
            self._recovering[worker.ping.remote()] = worker

    def ready(self, timeout: float = 300.0) -> None:
        """Block until every worker has started (its evaluator built)."""
        ray.get([w.ping.remote() for w in self.workers], timeout=timeout)


class QueueExecutor(Executor):
    """An Executor whose children go to a dispatcher actor that several callers share (fewer
    workers than children; controller/runtime/hosts.py): one call per child, answered with its
    result once a worker ran it. A child behind the dispatcher runs to its end: no cancel."""

    def __init__(self, dispatcher: Any, capacity: int):
        super().__init__()
        self.dispatcher = dispatcher
        self.capacity = capacity
        self._calls: dict[ray.ObjectRef, Task] = {}

    def submit(self, task: Task) -> None:
        self._calls[self.dispatcher.run.remote(task)] = task

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def cancel(self, task_id: str, force: bool = False) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> list[tuple[Task, EvalResult]]:
        if not self._calls:
            raise NotReady("wait() called with no task in flight")
        ready, rest = ray.wait(list(self._calls), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [(self._calls.pop(ref), ray.get(ref)) for ref in ready]
