"""What every execution path shares: the job it serves (its plan, run directory, stop flag and
progress), the dashboard's view of each record, a one-shot search's epoch reports, and the
proposer loop with its checkpoint, which the local and the Ray proposer paths both run."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from raynas.common.files import atomic_save
from raynas.controller.cluster import metrics, phase
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.loop import run_loop, task_from_dict, task_to_dict
from raynas.controller.runtime.progress import one_shot_epoch
from raynas.controller.runtime.rundir import ONE_SHOT_LOG, RunDirectory, rank
from raynas.controller.runtime.signals import SignalLog
from raynas.workers.execution import Executor, Task

if TYPE_CHECKING:
    from raynas.controller.runtime.plan import Plan

CHECKPOINTS = "checkpoint"


def background(work: Callable[[], Any]) -> Future:
    """`work()` in a thread of its own, for start-up steps that can run while Ray starts its
    processes (the driver mostly waits on them); the future gives its result or raises its error."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="start-up")
    try:
        return pool.submit(work)
    finally:
        pool.shutdown(wait=False)


class Context:
    """What a runner needs of its job: the plan, the run directory, whether this is a resume, the
    stop flag, the namespace of its actors, the evaluator the job built to check the data (the
    local path evaluates with it), where records go, and the result's extra fields. With an
    `opener` the run directory and the evaluator come from it, on the first `open()`: the data
    loads while the runner starts what needs neither (Ray, the worker actors)."""

    def __init__(self, plan: Plan, run: RunDirectory | None, *, resume: bool, deadline: float | None,
                 namespace: str, address: str | None, stop: threading.Event, evaluator: Any,
                 progress: Callable[[dict], None], on_record: Callable[[dict], None],
                 opener: Callable[[], tuple[Any, RunDirectory]] | None = None):
        self.plan, self.run, self.resume, self.deadline = plan, run, resume, deadline
        self.namespace, self.address, self.stop, self.evaluator = namespace, address, stop, evaluator
        self.progress, self.on_record = progress, on_record
        self._opener = opener
        self.extra: dict[str, Any] = {}
        #: The ledger of a path that keeps one in this process (the scheme's lives in its recorder).
        self.ledger: Ledger | None = None

    def open(self) -> RunDirectory:
        """The run directory, once the data is loaded and known good (a bad file raises here)."""
        if self.run is None:
            self.evaluator, self.run = self._opener()
        return self.run

    @property
    def checkpoints(self):
        return self.run.path / CHECKPOINTS

    def new_ledger(self) -> Ledger:
        spec = self.plan.spec
        self.ledger = Ledger(self.run, spec.evaluations, spec.seed, self.deadline)
        if self.stop.is_set():
            self.ledger.stop()
        return self.ledger

    def recorder(self, ledger: Ledger, queued: Callable[[], int] | None = None) -> Callable[[dict], None]:
        """What happens to each new record: progress, and the dashboard's counts, reward and best."""
        for record in ledger.records:
            self.progress(record)
        job = self.namespace
        best = ledger.summary()["best"]

        def on_record(record: dict) -> None:
            nonlocal best
            if record.get("reward") is not None and (best is None or rank(record) > rank(best)):
                best = record
            metrics.report_evaluation(job, record["status"], record.get("reward"),
                                      record["metrics"].get("wall_time_s"), best["reward"] if best else None)
            if queued is not None:
                metrics.report_queue(job, queued())
            self.record(record)

        return on_record

    def record(self, record: dict) -> None:
        """A new record: on the progress line, and to the job's listener."""
        self.progress(record)
        self.on_record(record)

    def reporter(self):
        """Where intermediate reports go: a weight-sharing search's epochs (its collapse
        monitors) to oneshot.jsonl and the dashboard; other evaluations' epochs stay in
        their results' curves. Each (run, stage, epoch) is logged once: a search continued
        from its checkpoint (a resumed job, a task retried on another worker) replays the
        epochs it already reported."""
        if not self.plan.one_shot:
            return None
        run, job = self.run, self.namespace
        run.repair_log(ONE_SHOT_LOG)
        logged = {(r.get("run"), r.get("stage"), r.get("epoch")) for r in run.records(ONE_SHOT_LOG)}

        def report(task: Task, data: dict) -> None:
            index = int(task.id[1:])
            key = (index, data.get("stage"), data.get("epoch"))
            if key in logged:
                return
            logged.add(key)
            run.append({"run": index, **data}, ONE_SHOT_LOG)
            metrics.report_oneshot_epoch(job, index, data)
            # Its result comes only after the whole search: the terminal hears of every epoch meanwhile.
            phase(one_shot_epoch(index, data["epoch"], data),
                  waiting=f"one-shot run {index}'s architecture is being trained and scored" if "candidates" in data
                  else f"one-shot run {index}'s next epoch")

        return report

    def run_proposer(self, executor: Executor) -> None:
        """One strategy proposing into `executor` until the budget is spent or the job stops; its
        state and the tasks in flight checkpointed after every step (a resume repeats nothing)."""
        space = self.plan.space
        strategy = self.plan.new_strategy()
        ledger = self.new_ledger()
        path = self.checkpoints / "proposer.pt"
        in_flight: list[Task] = []
        if self.resume and path.exists():
            import torch

            state = torch.load(path, weights_only=False)
            strategy.load_state_dict(state["strategy"])
            in_flight = [task_from_dict(t, space) for t in state["in_flight"]]
        on_record = self.recorder(ledger, lambda: executor.queued)
        signals = SignalLog(self.run, self.namespace)

        def checkpoint(tasks: list[Task]) -> None:
            signals.update(strategy.signals())
            atomic_save({"strategy": strategy.state_dict(), "in_flight": [task_to_dict(t) for t in tasks]},
                        path, durable=False)

        evaluations = self.checkpoints / "evaluations"
        evaluations.mkdir(exist_ok=True)
        try:
            run_loop(strategy, executor, ledger, on_record, checkpoint, in_flight, checkpoints=evaluations)
        finally:
            executor.close()


class Runner(ABC):
    """One execution path."""

    def __init__(self, context: Context):
        self.context, self.plan = context, context.plan

    @abstractmethod
    def run(self) -> bool:
        """Run the search into the context's run directory; True if it was interrupted (Ctrl-C,
        SIGTERM) before its budget was spent."""
