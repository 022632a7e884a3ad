"""The search service's domain logic, free of gRPC: submit, inspect, watch, cancel
and resume searches, each one a `SearchJob` started by a launcher.

`SearchManager` owns the job registry (SQLite in the state directory) and one
monitor thread that follows running searches through their run directories and
their runners. With the Ray launcher each search runs in a detached actor
(`search-<id>` in the `nas-service` namespace), so it outlives a restart of the
service, which reattaches to it on start; a search whose runner is gone is marked
interrupted and can be resumed from its checkpoints.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from raynas.common import Busy, ConfigError, NasError, NotReady
from raynas.controller import cluster
from raynas.controller.runtime.rundir import EVALUATIONS, ONE_SHOT_LOG, RESULT, LogTail, RunDirectory
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service.registry import (
    ACTIVE,
    CANCELLED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RESUMABLE,
    RUNNING,
    STATES,
    SUCCEEDED,
    JobRegistry,
    SearchRecord,
)

log = logging.getLogger(__name__)

#: The gRPC port `nas serve` listens on (deploy/ manifests expose the same).
DEFAULT_PORT = 50051
#: Ray namespace of the service's runner actors.
SERVICE_NAMESPACE = "nas-service"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
MAX_PAGE = 100


def state_of_result(result: dict[str, Any]) -> str:
    """The registry state a finished SearchJob's result.json stands for."""
    return {"done": SUCCEEDED, "stopped": CANCELLED}.get(result.get("state"), INTERRUPTED)


class JobRunner:
    """Runs one SearchJob in a background thread and answers status and cancel calls
    while it runs. The Ray launcher makes it a detached actor."""

    def __init__(self, spec: dict[str, Any], run_dir: str, resume: bool):
        from raynas.controller.runtime.job import SearchJob

        spec_ = SearchSpec.from_dict(spec)
        self.job = (SearchJob.resume_from(run_dir, progress=False) if resume
                    else SearchJob(spec_, run_dir, progress=False))
        self._state, self._error = RUNNING, ""
        self._thread = threading.Thread(target=self._run, name="search", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._state = state_of_result(self.job.run())
        except NasError as exc:
            self._state, self._error = FAILED, str(exc)
        except BaseException as exc:  # noqa: BLE001 - a crashed search must still report why
            log.error("search crashed:\n%s", traceback.format_exc())
            self._state, self._error = FAILED, f"{type(exc).__name__}: {exc}"

    def status(self) -> tuple[str, str]:
        return self._state, self._error

    def cancel(self) -> None:
        self.job.stop()


class Launcher(Protocol):
    """Starts runners and finds them again; `status` answers None for a runner that is gone."""

    def start(self, search_id: str, spec: dict, run_dir: str, resume: bool) -> Any: ...
    def find(self, search_id: str) -> Any | None: ...
    def status(self, handle: Any) -> tuple[str, str] | None: ...
    def cancel(self, handle: Any) -> None: ...
    def release(self, handle: Any) -> None: ...


class ThreadLauncher:
    """Runners as threads of the service process: for tests and benchmarks without a
    cluster (searches must use runtime "local"); they do not outlive the service."""

    def __init__(self):
        self._runners: dict[str, JobRunner] = {}

    def start(self, search_id, spec, run_dir, resume):
        self._runners[search_id] = JobRunner(spec, run_dir, resume)
        return self._runners[search_id]

    def find(self, search_id):
        return self._runners.get(search_id)

    def status(self, handle):
        return handle.status()

    def cancel(self, handle):
        handle.cancel()

    def release(self, handle):
        pass


class RayLauncher:
    """Runners as detached Ray actors pinned to this node (the run directories live here)."""

    def __init__(self, namespace: str = SERVICE_NAMESPACE):
        self.namespace = namespace

    def _name(self, search_id: str) -> str:
        return f"search-{search_id}"

    def start(self, search_id, spec, run_dir, resume):
        return cluster.start_actor(JobRunner, spec, run_dir, resume, name=self._name(search_id),
                                   namespace=self.namespace, detached=True, pin_here=True)

    def find(self, search_id):
        return cluster.find_actor(self._name(search_id), self.namespace)

    def status(self, handle):
        try:
            return cluster.call(handle, "status", timeout=10)
        except cluster.CallTimeout:
            return RUNNING, ""  # busy starting (imports, dataset); not lost
        except cluster.ActorLost as exc:
            # The constructor raising (e.g. a resume with no checkpoint) is a failure, not a loss.
            return (FAILED, str(exc.cause)) if isinstance(exc.cause, NasError) else None

    def cancel(self, handle):
        cluster.send(handle, "cancel")

    def release(self, handle):
        cluster.kill(handle)


class _Progress:
    """Counts and best of one search, read incrementally from its evaluation log."""

    def __init__(self, run_dir: str):
        self.tail = LogTail(Path(run_dir) / EVALUATIONS)
        self.done = self.failed = 0
        self.best: dict[str, Any] | None = None

    def update(self) -> bool:
        fresh = self.tail.read_new()
        for r in fresh:
            self.done += 1
            if r.get("status") != "ok" or r.get("reward") is None:
                self.failed += 1
            elif self.best is None or r["reward"] > self.best["reward"]:
                self.best = r
        return bool(fresh)


class SearchManager:
    def __init__(self, state_dir: str | Path, launcher: Launcher, *, max_jobs: int = 4, poll_s: float = 0.5,
                 watch_poll_s: float = 0.05):
        if max_jobs < 1:
            raise ConfigError("max_jobs", f"must be at least 1, got {max_jobs}")
        self.state_dir = Path(state_dir)
        (self.state_dir / "runs").mkdir(parents=True, exist_ok=True)
        self.registry = JobRegistry(self.state_dir / "registry.sqlite")
        self.launcher = launcher
        self.max_jobs = max_jobs
        #: Runner status checks are remote calls; log tails are cheap file reads, so watchers poll faster.
        self.poll_s = poll_s
        self.watch_poll_s = watch_poll_s
        self._handles: dict[str, Any] = {}
        self._progress: dict[str, _Progress] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reattach()
        self._monitor = threading.Thread(target=self._watch_runners, name="search-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        """Stop serving; running searches keep running (their runners are independent)."""
        self._closed.set()
        self._monitor.join(timeout=5)
        self.registry.close()

    # -- the API --------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], name: str = "") -> SearchRecord:
        if not NAME_PATTERN.match(name):
            raise ConfigError("name", f"{name!r} is not a valid search name", "letters, digits, - and _; at most 64")
        validated = SearchSpec.from_dict(spec).validate().to_dict()
        search_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir = str((self.state_dir / "runs" / search_id).resolve())
        with self._lock:
            self._check_capacity()
            record = self.registry.add(SearchRecord(id=search_id, name=name, state=PENDING, spec=validated,
                                                    run_dir=run_dir, ray_namespace=cluster.job_namespace(run_dir)))
            return self._start(record, resume=False)

    def get(self, search_id: str) -> SearchRecord:
        return self.registry.get(search_id)

    def list(self, page_size: int = 20, page_token: str = "",
             state: str | None = None) -> tuple[list[SearchRecord], str]:
        if page_size == 0:
            page_size = 20
        if not 1 <= page_size <= MAX_PAGE:
            raise ConfigError("page_size", f"must be between 1 and {MAX_PAGE}, got {page_size}")
        if state is not None and state not in STATES:
            raise ConfigError("state", f"unknown state {state!r}", STATES)
        page = self.registry.list(page_size + 1, page_token or None, state)
        more = len(page) > page_size
        page = page[:page_size]
        return page, (page[-1].id if more else "")

    def cancel(self, search_id: str) -> SearchRecord:
        record = self.registry.get(search_id)
        handle = self._handles.get(search_id)
        if record.state in ACTIVE and handle is not None:
            self.launcher.cancel(handle)
        return record

    def resume(self, search_id: str) -> SearchRecord:
        with self._lock:
            record = self.registry.get(search_id)
            if record.state not in RESUMABLE:
                raise NotReady(f"search {search_id} is {record.state}; only {', '.join(RESUMABLE)} searches resume")
            self._check_capacity()
            record = self.registry.update(search_id, state=PENDING, error="", finished_at=None, result=None)
            # A search that failed before its run directory was written starts afresh.
            return self._start(record, resume=(Path(record.run_dir) / "spec.json").exists())

    def result(self, search_id: str) -> SearchRecord:
        record = self.registry.get(search_id)
        if record.result is None:
            raise NotReady(f"search {search_id} is {record.state} and has no result yet (nas watch {search_id})")
        return record

    def watch(self, search_id: str, skip: int = 0,
              active: Callable[[], bool] = lambda: True) -> Iterator[dict[str, Any]]:
        """Events of one search until it ends: state changes, evaluations, new bests,
        one-shot epochs. Each is a dict with a `kind` key."""
        record = self.registry.get(search_id)
        state = record.state
        yield {"kind": "state", "state": state, "error": record.error}
        evaluations = LogTail(Path(record.run_dir) / EVALUATIONS)
        epochs = LogTail(Path(record.run_dir) / ONE_SHOT_LOG)
        best, seen = None, 0
        while active() and not self._closed.is_set():
            # The state is read before the logs: a search marked ended has written every line.
            record = self.registry.get(search_id)
            for r in evaluations.read_new():
                improved = r.get("status") == "ok" and r.get("reward") is not None and (
                    best is None or r["reward"] > best)
                if improved:
                    best = r["reward"]
                seen += 1
                if seen > skip:
                    yield {"kind": "evaluation", "record": r}
                    if improved:
                        yield {"kind": "new_best", "record": r}
            for e in epochs.read_new():
                yield {"kind": "one_shot_epoch", **e}
            if record.state != state:
                state = record.state
                yield {"kind": "state", "state": state, "error": record.error}
            if state not in ACTIVE:
                return
            time.sleep(self.watch_poll_s)

    # -- runners --------------------------------------------------------------------

    def _check_capacity(self) -> None:
        if self.registry.count(ACTIVE) >= self.max_jobs:
            raise Busy(f"the service already runs its maximum of {self.max_jobs} searches; "
                       "wait for one to end or cancel one")

    def _start(self, record: SearchRecord, resume: bool) -> SearchRecord:
        try:
            handle = self.launcher.start(record.id, record.spec, record.run_dir, resume)
        except NasError as exc:
            return self.registry.update(record.id, state=FAILED, error=str(exc), finished_at=time.time())
        self._handles[record.id] = handle
        self._progress[record.id] = _Progress(record.run_dir)
        return self.registry.update(record.id, state=RUNNING, started_at=time.time())

    def _reattach(self) -> None:
        for record in self.registry.in_states(ACTIVE):
            handle = self.launcher.find(record.id)
            if handle is not None:
                self._handles[record.id] = handle
                self._progress[record.id] = _Progress(record.run_dir)
                log.info("reattached to running search %s", record.id)
            else:
                self._finish(record, INTERRUPTED, "its runner was lost (service or cluster restart); "
                                                  f"resume it with: nas resume {record.id}")

    def _finish(self, record: SearchRecord, state: str, error: str) -> None:
        result_path = Path(record.run_dir) / RESULT
        result = RunDirectory(record.run_dir).result() if result_path.exists() else None
        if result is not None and state == INTERRUPTED and record.state in ACTIVE:
            # The runner vanished after writing its result: the result says how it ended.
            state, error = state_of_result(result), ""
        progress = self._progress.pop(record.id, None) or _Progress(record.run_dir)
        progress.update()
        self.registry.update(record.id, state=state, error=error, finished_at=time.time(), result=result,
                             evaluations_done=progress.done, evaluations_failed=progress.failed,
                             best=progress.best)
        handle = self._handles.pop(record.id, None)
        if handle is not None:
            self.launcher.release(handle)

    def _watch_runners(self) -> None:
        while not self._closed.wait(self.poll_s):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad poll
                log.exception("monitor poll failed")

    def _poll(self) -> None:
        for record in self.registry.in_states(ACTIVE):
            handle = self._handles.get(record.id)
            if handle is None:
                continue
            status = self.launcher.status(handle)
            if status is None:
                self._finish(record, INTERRUPTED, f"its runner died; resume it with: nas resume {record.id}")
                continue
            state, error = status
            if state in ACTIVE:
                progress = self._progress[record.id]
                if progress.update():
                    self.registry.update(record.id, evaluations_done=progress.done,
                                         evaluations_failed=progress.failed, best=progress.best)
            else:
                self._finish(record, state, error)
