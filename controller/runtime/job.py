"""A search job: spec in, run directory and result out.

The spec is resolved once into a plan (controller/runtime/plan.py), and the plan's path picks
one small runner (controller/runtime/runners/), never the strategy's name:
- `local`: one proposer, its evaluations one at a time in this process;
- `proposer`: one proposer over W Ray worker actors (every strategy without a shared policy);
- `scheme`: Zoph & Le's scheme for strategies with a shared policy (rl): S parameter shards,
  K controller replicas with m children each, a recorder;
- `tune`: with a scheduler (`--scheduler asha`), a Ray Tune experiment: the strategy as Tune's
  searcher, each child a trial, Tune's ASHAScheduler stopping them at rungs.
Ray is an embedded single-node cluster unless an address is given.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from raynas.common import ConfigError
from raynas.controller.cluster import job_namespace
from raynas.controller.runtime.plan import LOCAL, PROPOSER, SCHEME, TUNE, Plan, resolve
from raynas.controller.runtime.plot import write_progress
from raynas.controller.runtime.progress import Progress
from raynas.controller.runtime.rundir import RunDirectory, RunLock, summarize
from raynas.controller.runtime.runners.base import CHECKPOINTS, Context, Runner, background
from raynas.controller.runtime.runners.local import LocalRunner
from raynas.controller.runtime.runners.ray import ProposerRunner
from raynas.controller.runtime.runners.scheme import SchemeRunner
from raynas.controller.runtime.runners.tune import TuneRunner
from raynas.controller.runtime.spec import SearchSpec

RUNNERS: dict[str, type[Runner]] = {LOCAL: LocalRunner, PROPOSER: ProposerRunner, SCHEME: SchemeRunner,
                                    TUNE: TuneRunner}


class SearchJob:
    """One search. Constructing it resolves the spec (a ConfigError names the first bad field, before
    anything is written); `run` runs it and returns result.json's content."""

    def __init__(self, spec: SearchSpec | Plan, out: str | Path, *, resume: bool = False, address: str | None = None,
                 progress: bool = True, on_record: Callable[[dict], None] | None = None):
        self.plan = spec if isinstance(spec, Plan) else resolve(spec)
        self.spec = self.plan.spec
        # Absolute: actors on a cluster resolve a relative path against their own working directory.
        self.out = Path(out).absolute()
        self.resume = resume
        self.address = address
        self.progress = Progress(self.spec.evaluations, enabled=progress)
        self.on_record = on_record or (lambda record: None)
        self._stop = threading.Event()
        self._context: Context | None = None

    @classmethod
    def resume_from(cls, out: str | Path, changes: dict[str, Any] | None = None, **kwargs) -> SearchJob:
        """The search in `out`, to go on; `changes`: the resources it goes on with (spec.RESUME_FIELDS),
        kept in its spec.json for the resumes after."""
        run = RunDirectory(out)
        if not (run.path / "spec.json").exists():
            raise ConfigError("resume", f"{run.path} holds no search (no spec.json) to resume")
        return cls(SearchSpec.from_dict(run.spec()).resumed_with(changes or {}), out, resume=True, **kwargs)

    def stop(self) -> None:
        """Ask the job to stop at the next safe point (a checkpoint is written)."""
        self._stop.set()
        context = self._context
        if context is not None and context.ledger is not None:
            context.ledger.stop()

    @property
    def namespace(self) -> str:
        return job_namespace(self.out)

    @property
    def ledger(self):
        """The ledger of a path that keeps one in this process (None before the run, and for the scheme)."""
        return None if self._context is None else self._context.ledger

    def run(self) -> dict[str, Any]:
        plan = self.plan = self.plan.fingerprinted()
        self.out.mkdir(parents=True, exist_ok=True)
        field = "resume" if self.resume else "out"
        # Another driver on the directory is refused at once, before Ray starts or the data loads ...
        with RunLock(self.out).held(field):
            pass
        # ... and the lock is held from the moment the data is loaded: the loading may fork (image
        # decoders), and a forked process would keep holding a lock it inherited. The data loads while
        # Ray and the workers start; the runner opens the run directory once it is loaded, so a bad file
        # still fails in one line before any file of the run is written.
        loading = background(plan.make_evaluator)
        with contextlib.ExitStack() as held:
            return self._run(plan, loading, lambda: held.enter_context(RunLock(self.out).held(field)))

    def _run(self, plan: Plan, loading: Future, lock: Callable[[], None]) -> dict[str, Any]:
        spec = self.spec
        # Checked again as the run opens; here, so that a wrong directory is told before Ray starts.
        if self.resume:
            before = RunDirectory(self.out).check()
        else:
            RunDirectory(self.out).check_new()
            before = 0

        def open_run() -> tuple[Any, RunDirectory]:
            evaluator = loading.result()
            lock()
            run = RunDirectory(self.out) if self.resume else RunDirectory.create(self.out, spec.to_dict())
            if self.resume and SearchSpec.from_dict(run.spec()) != spec:  # resumed on other resources
                run.write_spec(spec.to_dict())
            (run.path / CHECKPOINTS).mkdir(exist_ok=True)
            return evaluator, run

        deadline = time.time() + spec.max_wall_time_s if spec.max_wall_time_s else None
        context = self._context = Context(plan, None, resume=self.resume, deadline=deadline,
                                          namespace=self.namespace, address=self.address, stop=self._stop,
                                          evaluator=None, progress=self.progress.update,
                                          on_record=self.on_record, opener=open_run)
        start = time.perf_counter()
        try:
            with self.progress.announcing("the one-shot search trains its supernet's first epoch" if plan.one_shot
                                          else "the first child is being evaluated"):
                interrupted = RUNNERS[plan.path](context).run()
        except KeyboardInterrupt:
            interrupted = True
        run = context.open()  # stopped during the start-up: a run directory that resume continues
        records = run.evaluations()
        spent = len(records) >= spec.evaluations or (deadline is not None and time.time() >= deadline)
        result = {
            **summarize(records),
            "state": "done" if spent else ("stopped" if interrupted or self._stop.is_set() else "incomplete"),
            "space": spec.space, "strategy": spec.strategy, "evaluator": spec.evaluator, **plan.result_fields(),
            "seed": spec.seed, "budget": spec.evaluations, "runtime": spec.runtime,
            # This run's: a resumed search's earlier runs may have ended with kill -9, timed by no one.
            "wall_time_s": time.perf_counter() - start, "evaluations_this_run": len(records) - before,
            "run_dir": str(run.path), **context.extra,
        }
        run.write_result(result)
        write_progress(run, records)
        return result


__all__ = ["SearchJob", "job_namespace"]
