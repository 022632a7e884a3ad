"""The search service's domain logic, free of gRPC: submit, inspect, watch, cancel,
resume and delete searches, each one a `SearchJob` started by a launcher.

`SearchManager` owns the job registry (SQLite in the state directory) and one
monitor thread that follows running searches through their run directories and
their runners. With the Ray launcher each search runs in a detached actor
(`search-<id>-by-<owner>` in the `nas-service` namespace), so it outlives a restart of
the service, which reattaches to it on start; a search whose runner is gone is marked
interrupted and can be resumed from its checkpoints.

It is built to face clients it cannot trust: every call names its caller, who sees and
controls only their own searches (admins see all); a request is checked against the job
limits first (the service's and the caller's share), then against the spec's bounds, the
operator's data roots and what the cluster can hold (controller/runtime/capacity.py), before anything is
started; a search whose run directory cannot be read fails alone, with a one-line reason,
while the others go on; and a cancelled search, or one past the service's time limit, that
does not reach a safe point within the cancel grace is force-stopped.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from raynas.common import Busy, ConfigError, NasError, NotFound, NotReady
from raynas.controller import cluster
from raynas.controller.cluster import resources
from raynas.controller.runtime import capacity
from raynas.controller.runtime.capacity import Footprint, footprint
from raynas.controller.runtime.plan import check_scheme_fields, resolve
from raynas.controller.runtime.rundir import (
    EVALUATIONS,
    ONE_SHOT_LOG,
    RESULT,
    RUNG_LOG,
    STRATEGY_LOG,
    RunDirectory,
    rank,
)
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service import logs
from raynas.controller.service.access import SINGLE_CLIENT, Client, private_folder
from raynas.controller.service.limits import (  # noqa: F401 - DEFAULT_PORT: read here by older callers
    CANCEL_GRACE_S,
    DEFAULT_PORT,
    MAX_JOBS,
    MAX_SEARCH_TIME_S,
    PLACEMENT_TIMEOUT_S,
)
from raynas.controller.service.logs import LogChunks
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
from raynas.workers.datasets import check_data_root

log = logging.getLogger(__name__)

#: Ray namespace of the service's runner actors.
SERVICE_NAMESPACE = "nas-service"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
MAX_PAGE = 100
#: In-process callers (tests, scripts) act as the single-token client, an admin.
LOCAL = Client(SINGLE_CLIENT, admin=True)


def state_of_result(result: dict[str, Any], cancel_asked: bool) -> str:
    """The registry state a finished SearchJob's result.json stands for. A stopped search was
    cancelled when someone asked (a cancel, the service's time limit), and interrupted otherwise (a
    signal to the service or its cluster): resumable either way."""
    if result.get("state") == "done":
        return SUCCEEDED
    return CANCELLED if result.get("state") == "stopped" and cancel_asked else INTERRUPTED


def one_line(exc: BaseException) -> str:
    """An exception as one line of text: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class JobRunner:
    """Runs one SearchJob in a background thread and answers status and cancel calls
    while it runs. The Ray launcher makes it a detached actor."""

    def __init__(self, spec: dict[str, Any], run_dir: str, resume: bool):
        from raynas.controller.runtime.job import SearchJob

        spec_ = SearchSpec.from_dict(spec)
        self.job = (SearchJob.resume_from(run_dir, progress=False) if resume
                    else SearchJob(spec_, run_dir, progress=False))
        self._state, self._error = RUNNING, ""
        self._cancel_asked = False
        self._thread = threading.Thread(target=self._run, name="search", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            result = self.job.run()
            self._state = state_of_result(result, self._cancel_asked)
        except NasError as exc:
            self._state, self._error = FAILED, str(exc)
        except BaseException as exc:  # noqa: BLE001 - a crashed search must still report why
            log.error("search crashed:\n%s", traceback.format_exc())
            self._state, self._error = FAILED, f"{type(exc).__name__}: {exc}"

    def status(self) -> tuple[str, str]:
        return self._state, self._error

    def cancel(self) -> None:
        self._cancel_asked = True
        self.job.stop()


class Launcher(Protocol):
    """Starts runners and finds them again; `status` answers None for a runner that is gone.

    `nodes` is the total resources of each node of the cluster searches are placed on, what a
    search is checked against at submit (None: nothing to check against, as for runners in
    this process, or on a cluster whose nodes come on demand); `stuck` says why a running search
    cannot start (None while it can); `kill` force-stops a runner that did not stop when asked;
    `healthy` says whether the launcher still reaches its cluster.
    """

    def nodes(self) -> list[dict[str, float]] | None: ...
    def start(self, record: SearchRecord, resume: bool) -> Any: ...
    def find(self, record: SearchRecord) -> Any | None: ...
    def status(self, handle: Any) -> tuple[str, str] | None: ...
    def stuck(self, spec: dict[str, Any]) -> str | None: ...
    def cancel(self, handle: Any) -> None: ...
    def kill(self, handle: Any) -> None: ...
    def release(self, handle: Any) -> None: ...
    def healthy(self) -> bool: ...


class ThreadLauncher:
    """Runners as threads of the service process: for tests and benchmarks without a
    cluster (searches must use runtime "local"); they do not outlive the service. A thread
    cannot be killed: a force-stopped runner is abandoned to finish its current child."""

    def __init__(self):
        self._runners: dict[str, JobRunner] = {}

    def nodes(self):
        return None

    def start(self, record, resume):
        self._runners[record.id] = JobRunner(record.spec, record.run_dir, resume)
        return self._runners[record.id]

    def find(self, record):
        return self._runners.get(record.id)

    def status(self, handle):
        return handle.status()

    def stuck(self, spec):
        return None

    def cancel(self, handle):
        handle.cancel()

    def kill(self, handle):
        handle.cancel()

    def release(self, handle):
        pass

    def healthy(self):
        return True


class RayLauncher:
    """Runners as detached Ray actors pinned to this node (the run directories live here),
    named for their search and its owner so the dashboard shows whose search runs.

    `autoscaling`: nodes may join the cluster, so a worker no node can hold now is not
    refused at submit; the search fails instead if no node can hold it after
    `placement_timeout_s`.
    """

    def __init__(self, namespace: str = SERVICE_NAMESPACE, *, autoscaling: bool = False,
                 probe_timeout_s: float = 5.0):
        self.namespace = namespace
        self.autoscaling = autoscaling
        self.probe_timeout_s = probe_timeout_s
        self._probe = resources.Probe()

    @staticmethod
    def actor_name(record: SearchRecord) -> str:
        return f"search-{record.id}" + (f"-by-{record.owner}" if record.owner else "")

    def _nodes(self) -> list[dict[str, float]]:
        nodes = self._probe.ask(self.probe_timeout_s)
        if nodes is None:
            raise Busy(f"the service does not reach its Ray cluster (no answer within {self.probe_timeout_s:g} s); "
                       "retry later")
        return nodes

    def nodes(self):
        return None if self.autoscaling else self._nodes()

    def start(self, record, resume):
        return cluster.start_actor(JobRunner, record.spec, record.run_dir, resume, name=self.actor_name(record),
                                   namespace=self.namespace, detached=True, pin_here=True)

    def find(self, record):
        return cluster.find_actor(self.actor_name(record), self.namespace)

    def status(self, handle):
        try:
            return cluster.call(handle, "status", timeout=10)
        except cluster.CallTimeout:
            return RUNNING, ""  # busy starting (imports, dataset); not lost
        except cluster.ActorLost as exc:
            # The constructor raising (e.g. a resume with no checkpoint) is a failure, not a loss.
            return (FAILED, str(exc.cause)) if isinstance(exc.cause, NasError) else None

    def stuck(self, spec):
        if spec["runtime"] != "ray":
            return None
        return resources.unplaceable(spec["cpus_per_child"], spec["gpus_per_child"], self._nodes())

    def cancel(self, handle):
        cluster.send(handle, "cancel")

    def kill(self, handle):
        # The job's own actors (workers, shards, replicas) are owned by the runner and die with it.
        cluster.kill(handle)

    def release(self, handle):
        cluster.kill(handle)

    def healthy(self):
        return self._probe.ask(self.probe_timeout_s) is not None


class _Progress:
    """Counts and best of one search, read incrementally from its evaluation log, a chunk at a time."""

    def __init__(self, chunks: LogChunks, run_dir: str):
        self.chunks = chunks
        self.path = Path(run_dir) / EVALUATIONS
        self.offset = 0
        self.done = self.failed = 0
        self.best: dict[str, Any] | None = None

    def update(self) -> bool:
        fresh = False
        while True:
            end, records = self.chunks.read(self.path, self.offset, share=False)
            if end == self.offset:
                return fresh
            self.offset, fresh = end, True
            for r in records:
                self.done += 1
                if r.get("status") != "ok" or r.get("reward") is None:
                    self.failed += 1
                elif self.best is None or rank(r) > rank(self.best):
                    self.best = r


#: The run's logs a watcher follows, in this order: evaluations, one-shot epochs, rung decisions,
#: strategy signals.
WATCHED_LOGS = (EVALUATIONS, ONE_SHOT_LOG, RUNG_LOG, STRATEGY_LOG)


class SearchWatch:
    """One client following one search: `poll` returns the events since the last poll
    (state changes, evaluations, new bests, one-shot epochs, rung decisions, strategy signals; each
    a dict with a `kind`), at most a chunk of each log at a time, and `done` turns true after the
    event of a final state, which comes after the last line of the logs. `pending` is a cheap test
    (the logs' sizes and a counter) of whether `poll` would find anything, so that many watchers can
    wait without reading anything; `behind` says that the last poll left more to read at once."""

    def __init__(self, manager: SearchManager, record: SearchRecord, skip: int):
        self.manager = manager
        self.id = record.id
        self.space = record.spec.get("space", "")
        #: The search's Ray namespace: the `job` tag of its metrics.
        self.namespace = record.ray_namespace
        self.done = False
        self.behind = False
        self._skip = skip
        #: The state last told the watcher, and the registry's (state, error) at its last change.
        self._state: str | None = None
        self._latest: tuple[str, str] = (record.state, record.error)
        self._generation = -1
        self._paths = {name: Path(record.run_dir) / name for name in WATCHED_LOGS}
        self._offsets = dict.fromkeys(WATCHED_LOGS, 0)
        #: The logs cannot be read: the search was marked failed, and the watch ends with that.
        self._broken = False
        self._best: tuple[float, float] | None = None
        self._seen = 0

    def pending(self) -> bool:
        if self.done:
            return False
        return (self.manager.generation(self.id) != self._generation or self._latest[0] != self._state
                or any(logs.size(path) > self._offsets[name] for name, path in self._paths.items()))

    def poll(self) -> list[dict[str, Any]]:
        if self.done:
            return []
        # The state is read before the logs: a search marked ended has written every line.
        generation = self.manager.generation(self.id)
        if generation != self._generation:
            self._generation = generation
            record = self.manager.registry.get(self.id)
            self._latest = (record.state, record.error)
        events: list[dict[str, Any]] = []
        if self._state is None:
            events.append(self._tell_state())
        drained = True
        if not self._broken:
            try:
                drained = self._read_logs(events)
            except Exception as exc:  # noqa: BLE001 - whatever the run directory holds, the watcher gets a state
                record = self.manager.broken(self.manager.registry.get(self.id), exc)
                self._generation, self._latest, self._broken = self.manager.generation(self.id), \
                    (record.state, record.error), True
        if self._latest[0] != self._state and (self._latest[0] in ACTIVE or drained):
            events.append(self._tell_state())
        self.done = self._state not in ACTIVE and drained
        self.behind = not drained
        return events

    def _tell_state(self) -> dict[str, Any]:
        self._state, error = self._latest
        return {"kind": "state", "state": self._state, "error": error}

    def _read_logs(self, events: list[dict[str, Any]]) -> bool:
        """A chunk of each log into `events`; True when they hold nothing more to read now."""
        read = {}
        for name, path in self._paths.items():
            start = self._offsets[name]
            self._offsets[name], read[name] = self.manager.logs.read(path, start)
        for r in read[EVALUATIONS]:
            improved = r.get("status") == "ok" and r.get("reward") is not None and (
                self._best is None or rank(r) > self._best)
            if improved:
                self._best = rank(r)
            self._seen += 1
            if self._seen > self._skip:
                events.append({"kind": "evaluation", "record": r})
                if improved:
                    events.append({"kind": "new_best", "record": r})
        events += [{"kind": "one_shot_epoch", **e} for e in read[ONE_SHOT_LOG]]
        events += [{"kind": "rung", **e} for e in read[RUNG_LOG]]
        events += [{"kind": "strategy_signal", **e} for e in read[STRATEGY_LOG]]
        # Nothing came (a torn last line waits for no one), or everything there is was read.
        return not any(read.values()) or all(logs.size(path) <= self._offsets[name]
                                             for name, path in self._paths.items())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every event until the search ends, waiting in this thread (in-process callers)."""
        while not self.manager.closed:
            if self.pending():
                yield from self.poll()
            if self.done:
                return
            if not self.behind:
                time.sleep(self.manager.watch_poll_s)


class SearchManager:
    """`max_jobs` searches may be pending or running at once, at most `max_jobs_per_client` of them
    (default: all) one client's; each may run `max_search_time_s` at most (or less, as its spec's
    `max_wall_time_s` says), then it is asked to stop and, `cancel_grace_s` later, force-stopped."""

    def __init__(self, state_dir: str | Path, launcher: Launcher, *, max_jobs: int = MAX_JOBS,
                 max_jobs_per_client: int | None = None, poll_s: float = 0.5, watch_poll_s: float = 0.05,
                 data_roots: tuple[str, ...] = (), cancel_grace_s: float = CANCEL_GRACE_S,
                 placement_timeout_s: float = PLACEMENT_TIMEOUT_S, max_search_time_s: float = MAX_SEARCH_TIME_S):
        if max_jobs < 1:
            raise ConfigError("max_jobs", f"must be at least 1, got {max_jobs}")
        if max_jobs_per_client is not None and max_jobs_per_client < 1:
            raise ConfigError("max_jobs_per_client", f"must be at least 1, got {max_jobs_per_client}")
        if not max_search_time_s > 0:
            raise ConfigError("max_search_time", f"must be a positive number of seconds, got {max_search_time_s}")
        self.state_dir = Path(state_dir)
        # Owner-only: run directories hold specs, data paths and results of every client (and the
        # token). mkdir's mode does not apply to a folder that exists already: made private here.
        for folder in (self.state_dir, self.state_dir / "runs"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            private_folder("state_dir", folder)
        self.registry = JobRegistry(self.state_dir / "registry.sqlite")
        self.launcher = launcher
        self.max_jobs = max_jobs
        self.max_jobs_per_client = min(max_jobs, max_jobs_per_client or max_jobs)
        self.max_search_time_s = max_search_time_s
        self.data_roots = tuple(str(Path(r).resolve()) for r in data_roots)
        self.cancel_grace_s = cancel_grace_s
        self.placement_timeout_s = placement_timeout_s
        #: Runner status checks are remote calls; log tails are cheap file reads, so watchers poll faster.
        self.poll_s = poll_s
        self.watch_poll_s = watch_poll_s
        #: Whether the launcher reached its cluster at the last check (health checks report it).
        self.healthy = True
        #: Chunks of the run directories' logs, parsed once for all the readers of a search.
        self.logs = LogChunks()
        self._handles: dict[str, Any] = {}
        #: What each active search started on the cluster, counted against what it holds.
        self._footprints: dict[str, Footprint] = {}
        self._progress: dict[str, _Progress] = {}
        #: Bumped when a search's state or error changes, so watchers re-read the registry only then.
        self._generations: dict[str, int] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._reattach()
        self._monitor = threading.Thread(target=self._watch_runners, name="search-monitor", daemon=True)
        self._monitor.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop serving; running searches keep running (their runners are independent)."""
        self._closed.set()
        self._monitor.join(timeout=5)
        self.registry.close()

    def generation(self, search_id: str) -> int:
        return self._generations.get(search_id, 0)

    # -- the API --------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], name: str = "", caller: Client = LOCAL,
               given: Iterable[str] = ()) -> SearchRecord:
        """Start a search of `spec`; `given` names the fields its client set (a request's fields), whose
        scheme settings a search without the scheme refuses rather than ignores."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError("name", "is not a valid search name", "letters, digits, - and _; at most 64")
        # The job limits first: a full service refuses without spending anything on the request.
        self._check_capacity(caller)
        checked = SearchSpec.from_dict(spec)
        checked.check_sizes()
        if (checked.max_wall_time_s or 0) > self.max_search_time_s:
            raise ConfigError("max_wall_time_s", f"{checked.max_wall_time_s:g} s is longer than this service lets a "
                              "search run", f"at most {self.max_search_time_s:g} (nas serve --max-search-time)")
        # Inside the data roots before anything looks at the path.
        if checked.data_path is not None:
            checked = checked.replace(data_path=check_data_root(checked.data_path, list(self.data_roots)))
        plan = resolve(checked)
        check_scheme_fields(plan, given)
        fp, nodes = footprint(plan), self.launcher.nodes()
        if nodes is not None:
            capacity.check_alone(fp, nodes)
        search_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir = (self.state_dir / "runs" / search_id).resolve()
        with self._lock:
            self._check_capacity(caller)
            self._check_beside(fp, nodes)
            # Owner-only before the runner writes anything into it.
            run_dir.mkdir(mode=0o700)
            record = self.registry.add(SearchRecord(id=search_id, name=name, state=PENDING, spec=checked.to_dict(),
                                                    run_dir=str(run_dir), owner=caller.name,
                                                    ray_namespace=cluster.job_namespace(run_dir)))
            return self._start(record, fp, resume=False)

    def get(self, search_id: str, caller: Client = LOCAL) -> SearchRecord:
        record = self.registry.get(search_id)
        if not caller.sees(record.owner):
            # The same answer as for an id that does not exist: ids are not to be probed.
            raise NotFound(f"no search with id {search_id!r} (nas status lists them)")
        return record

    def list(self, page_size: int = 20, page_token: str = "", state: str | None = None, caller: Client = LOCAL,
             size_of: Callable[[SearchRecord], int] | None = None,
             max_bytes: int | None = None) -> tuple[list[SearchRecord], str]:
        """A page of the caller's searches, newest first: at most `page_size` of them and, when
        `size_of` measures a search, at most `max_bytes` of them (but always one)."""
        if page_size == 0:
            page_size = 20
        if not 1 <= page_size <= MAX_PAGE:
            raise ConfigError("page_size", f"must be between 1 and {MAX_PAGE}, got {page_size}")
        if state is not None and state not in STATES:
            raise ConfigError("state", f"unknown state {state!r}", STATES)
        if len(page_token) > 64:
            raise ConfigError("page_token", "is not a token this service gave out")
        page = self.registry.list(page_size + 1, page_token or None, state, None if caller.admin else caller.name)
        kept, total = [], 0
        for record in page[:page_size]:
            total += size_of(record) if size_of else 0
            if kept and max_bytes is not None and total > max_bytes:
                break
            kept.append(record)
        return kept, (kept[-1].id if len(kept) < len(page) else "")

    def cancel(self, search_id: str, caller: Client = LOCAL) -> SearchRecord:
        """Ask the search to stop at its next safe point; the monitor force-stops it if it has
        not stopped `cancel_grace_s` later (a restart of the service included)."""
        return self._stop(self.get(search_id, caller), "")

    def _stop(self, record: SearchRecord, reason: str) -> SearchRecord:
        """Ask a search to stop, remembering when (and why, as its error, when it is not its owner's wish)."""
        with self._lock:
            record = self.registry.get(record.id)
            if record.state not in ACTIVE:
                return record
            handle = self._handles.get(record.id)
            if handle is None:
                return self._finish(record, CANCELLED, reason or "cancelled before its runner started")
            if record.cancel_requested_at is None:
                reasons = {"error": reason} if reason else {}
                record = self._update(record.id, cancel_requested_at=time.time(), **reasons)
        self.launcher.cancel(handle)
        return record

    def resume(self, search_id: str, caller: Client = LOCAL) -> SearchRecord:
        with self._lock:
            record = self.get(search_id, caller)
            if record.state not in RESUMABLE:
                raise NotReady(f"search {search_id} is {record.state}; only {', '.join(RESUMABLE)} searches resume")
            if not record.spec:
                raise NotReady(f"search {search_id} lost its spec ({record.error}); it cannot resume")
            self._check_capacity(caller)
            spec = SearchSpec.from_dict(record.spec)
            if spec.data_path is not None:
                # The operator may have narrowed the data roots since the search was submitted.
                check_data_root(spec.data_path, list(self.data_roots))
            fp, nodes = footprint(resolve(spec)), self.launcher.nodes()
            if nodes is not None:
                capacity.check_alone(fp, nodes)
                self._check_beside(fp, nodes)
            record = self._update(search_id, state=PENDING, error="", finished_at=None, result=None,
                                  cancel_requested_at=None)
            # A search that failed before its run directory was written starts afresh.
            return self._start(record, fp, resume=(Path(record.run_dir) / "spec.json").exists())

    def result(self, search_id: str, caller: Client = LOCAL) -> SearchRecord:
        record = self.get(search_id, caller)
        if record.result is None:
            raise NotReady(f"search {search_id} is {record.state} and has no result yet (nas watch {search_id})")
        return record

    def delete(self, search_id: str, caller: Client = LOCAL) -> SearchRecord:
        """Forget an ended search and remove its run directory."""
        with self._lock:
            record = self.get(search_id, caller)
            if record.state in ACTIVE:
                raise NotReady(f"search {search_id} is {record.state}; cancel it first (nas cancel {search_id})")
            run_dir, runs = Path(record.run_dir).resolve(), (self.state_dir / "runs").resolve()
            # Only what the service made: a run directory inside its own state directory.
            if run_dir.parent == runs and run_dir.exists():
                shutil.rmtree(run_dir)
            self.registry.delete(search_id)
            self._generations.pop(search_id, None)
        return record

    def watch(self, search_id: str, skip: int = 0, caller: Client = LOCAL) -> SearchWatch:
        """A cursor over one search's events (see SearchWatch); iterate it to wait for them here."""
        if skip < 0:
            raise ConfigError("skip_evaluations", f"must not be negative, got {skip}")
        return SearchWatch(self, self.get(search_id, caller), skip)

    # -- runners --------------------------------------------------------------------

    def _check_capacity(self, caller: Client) -> None:
        if self.registry.count(ACTIVE) >= self.max_jobs:
            raise Busy(f"the service already runs its maximum of {self.max_jobs} searches; "
                       "wait for one to end or cancel one")
        if self.registry.count(ACTIVE, caller.name) >= self.max_jobs_per_client:
            raise Busy(f"you already run {self.max_jobs_per_client} of the service's {self.max_jobs} searches, "
                       "your share; wait for one of yours to end or cancel one")

    def _check_beside(self, fp: Footprint, nodes: list[dict[str, float]] | None) -> None:
        if nodes is not None:
            capacity.check_beside(fp, sum(f.processes for f in self._footprints.values()), nodes)

    def _update(self, search_id: str, **changes: Any) -> SearchRecord:
        record = self.registry.update(search_id, **changes)
        if "state" in changes or "error" in changes:
            # What watchers report; progress counts they read from the logs themselves.
            self._generations[search_id] = self._generations.get(search_id, 0) + 1
        return record

    def _start(self, record: SearchRecord, fp: Footprint, resume: bool) -> SearchRecord:
        try:
            handle = self.launcher.start(record, resume)
        except NasError as exc:
            return self._update(record.id, state=FAILED, error=str(exc), finished_at=time.time())
        self._handles[record.id] = handle
        self._footprints[record.id] = fp
        self._progress[record.id] = _Progress(self.logs, record.run_dir)
        return self._update(record.id, state=RUNNING, started_at=time.time())

    def _reattach(self) -> None:
        for record in self.registry.in_states(ACTIVE):
            try:
                if record.state not in ACTIVE:  # its registry row is damaged (JobRegistry says how)
                    self._fail(record, record.error)
                    continue
                handle = self.launcher.find(record)
                if handle is not None:
                    self._handles[record.id] = handle
                    self._footprints[record.id] = self._footprint_of(record)
                    self._progress[record.id] = _Progress(self.logs, record.run_dir)
                    log.info("reattached to running search %s", record.id)
                else:
                    self._finish(record, INTERRUPTED, "its runner was lost (service or cluster restart); "
                                                      f"resume it with: nas resume {record.id}")
            except Exception as exc:  # noqa: BLE001 - one broken search must not keep the service down
                self.broken(record, exc)

    @staticmethod
    def _footprint_of(record: SearchRecord) -> Footprint:
        """What a running search started, as its spec says today; its runner alone when the spec no longer
        resolves (a plug-in gone since): it runs on from its own plan."""
        try:
            return footprint(resolve(SearchSpec.from_dict(record.spec)))
        except NasError as exc:
            log.warning("search %s: its spec no longer resolves (%s); counted as its runner alone", record.id, exc)
            return Footprint()

    def broken(self, record: SearchRecord, exc: BaseException) -> SearchRecord:
        """Mark a search whose run directory or runner cannot be read failed, with a one-line
        reason, and let go of its runner; every other search goes on."""
        log.error("search %s is broken:\n%s", record.id, "".join(traceback.format_exception(exc)))
        return self._fail(record, f"its run directory {record.run_dir} cannot be read: {one_line(exc)}")

    def _fail(self, record: SearchRecord, error: str) -> SearchRecord:
        """Mark an active search failed and stop its runner (found again if this service never held it)."""
        with self._lock:
            handle = self._handles.pop(record.id, None) or self.launcher.find(record)
            self._progress.pop(record.id, None)
            self._footprints.pop(record.id, None)
            record = self._update(record.id, state=FAILED, error=error, finished_at=time.time())
        if handle is not None:
            try:
                self.launcher.kill(handle)
            except NasError as kill_error:
                log.warning("could not stop the runner of %s: %s", record.id, kill_error)
        return record

    def _finish(self, record: SearchRecord, state: str, error: str) -> SearchRecord:
        result_path = Path(record.run_dir) / RESULT
        result = RunDirectory(record.run_dir).result() if result_path.exists() else None
        if result is not None and state == INTERRUPTED and record.state in ACTIVE:
            # The runner vanished after writing its result: the result says how it ended.
            state = state_of_result(result, record.cancel_requested_at is not None)
            error = error if state == INTERRUPTED else ""
        if state == INTERRUPTED and not error:
            error = (f"stopped, not by a request (a signal to its runner or cluster); "
                     f"resume it with: nas resume {record.id}")
        progress = self._progress.pop(record.id, None) or _Progress(self.logs, record.run_dir)
        progress.update()
        # A search stopped at the time limit keeps that reason when its runner gives none.
        error = error or (record.error if state == CANCELLED else "")
        record = self._update(record.id, state=state, error=error, finished_at=time.time(),
                              result=result, evaluations_done=progress.done, evaluations_failed=progress.failed,
                              best=progress.best)
        self._footprints.pop(record.id, None)
        handle = self._handles.pop(record.id, None)
        if handle is not None:
            self.launcher.release(handle)
        return record

    def _watch_runners(self) -> None:
        while not self._closed.wait(self.poll_s):
            try:
                self.healthy = self.launcher.healthy()
                self._poll()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad poll
                log.exception("monitor poll failed")

    def _poll(self) -> None:
        for record in self.registry.in_states(ACTIVE):
            try:
                if record.state not in ACTIVE:  # its registry row was damaged while it ran
                    self._fail(record, record.error)
                else:
                    self._poll_one(record)
            except Exception as exc:  # noqa: BLE001 - one broken search must not stop the others' monitoring
                self.broken(record, exc)

    def _poll_one(self, record: SearchRecord) -> None:
        handle = self._handles.get(record.id)
        if handle is None:
            return
        asked = record.cancel_requested_at
        if asked is not None and time.time() - asked > self.cancel_grace_s:
            self.launcher.kill(handle)
            why = f" ({record.error})" if record.error else ""
            self._finish(record, CANCELLED, f"force-stopped: it did not reach a safe point within "
                                            f"{self.cancel_grace_s:g} s of the request to stop{why}")
            return
        # A spec's own max_wall_time_s (at most this) is the job's to keep; this bounds one that hangs.
        if asked is None and record.started_at is not None \
                and time.time() - record.started_at > self.max_search_time_s:
            self._stop(record, f"stopped at the service's time limit of {self.max_search_time_s:g} s")
            return
        status = self.launcher.status(handle)
        if status is None:
            self._finish(record, INTERRUPTED, f"its runner died; resume it with: nas resume {record.id}")
            return
        state, error = status
        if state not in ACTIVE:
            self._finish(record, state, error)
            return
        progress = self._progress[record.id]
        if progress.update():
            self._update(record.id, evaluations_done=progress.done, evaluations_failed=progress.failed,
                         best=progress.best)
        elif progress.done == 0 and record.started_at is not None \
                and time.time() - record.started_at > self.placement_timeout_s:
            reason = self.launcher.stuck(record.spec)
            if reason:
                self.launcher.kill(handle)
                self._finish(record, FAILED, f"not placed within {self.placement_timeout_s:g} s: {reason}")
