"""Joining a Ray cluster and placing, finding, calling and killing actors: every Ray call the
controller makes goes through here, so the runtime's classes stay plain Python and the
actors are made remote at wiring time."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, NasError

#: Where the start-up's steps are announced; a job that shows progress prints them
#: (controller/runtime/progress.py).
PHASES = logging.getLogger("raynas.phases")

#: Set by SIGTERM for the rest of the session. Ray defers SIGINT while it submits a call, and our
#: handler lets whatever handles SIGINT have the signal, so a SIGTERM can surface as a plain
#: KeyboardInterrupt: this says which stop it was.
_TERMINATED = threading.Event()


class ActorLost(NasError):
    """An actor died (or was never started) while a call to it was pending; when its constructor
    raised, the message ends with that error's last line. `cause` is that error where Ray kept it."""

    cause: BaseException | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kubernetes, `ray job stop`, systemd): stop now, as after Ctrl-C, but without
    waiting for the children in flight (they run again on resume; `ray job stop` kills the
    process 3 s after its SIGTERM)."""


class CallTimeout(NasError):
    """An actor did not answer in time (it may be busy starting)."""


def phase(message: str, waiting: str | None = None) -> None:
    """One step of a search's start-up, for whoever shows them; `waiting`: what a search that
    waits after this step waits for."""
    PHASES.info(message, extra={"waiting": waiting})


def job_namespace(out: str | Path) -> str:
    """The Ray namespace of a run directory's actors: readable on the dashboard, unique per directory."""
    out = Path(out)
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return f"nas-{out.name}-{digest}"


@contextlib.contextmanager
def session(address: str | None, quiet: bool = False) -> Iterator[bool]:
    """The cluster at `address` (or a private one, shut down at the end) for the length of a search;
    yields whether we started it. ray.init replaces the SIGTERM handler with one that exits the
    process in the middle of whatever it runs (exit 134, no result.json): once connected, SIGTERM
    does what Ctrl-C does at that moment (Ray Tune's handler while Tune runs, which saves its
    experiment; else `Terminated`), and the handler of before comes back at the end."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    started = connect(address, quiet)
    _TERMINATED.clear()
    if main:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield started
    finally:
        if started:
            shutdown()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    _TERMINATED.set()
    interrupt = signal.getsignal(signal.SIGINT)
    if callable(interrupt) and interrupt is not signal.default_int_handler:
        interrupt(signal.SIGINT, frame)
        return
    raise Terminated()


def terminated(interrupt: KeyboardInterrupt) -> bool:
    """Whether `interrupt` stops the search at once (SIGTERM) rather than after its children (Ctrl-C)."""
    return isinstance(interrupt, Terminated) or _TERMINATED.is_set()


def reachable(timeout_s: float) -> bool:
    """Whether the cluster still answers: a SIGTERM sent to the whole process group (systemd, `timeout`)
    takes an embedded Ray down with the driver, and calls to its restartable actors then wait for
    ever."""
    from raynas.controller.cluster.resources import Probe

    return Probe().ask(timeout_s) is not None


def connect(address: str | None, quiet: bool = False) -> bool:
    """Join the cluster at `address`, or start a private single-node one. True if we started it.

    Without an address Ray would join whatever cluster this machine last started (its
    current-cluster file): a dead one (a long wait, then a failure) or someone else's (our
    actors among its jobs). "local" always starts a new one.
    """
    import ray

    if ray.is_initialized():
        return False
    # Ray starts its workers at niceness 15; a child then gets a fraction of a core beside any other
    # program (4.7x slower than --runtime local beside one busy process). A cluster we start runs
    # children at the priority the local runtime has; one we join keeps its operator's setting.
    embedded = {} if address else {"_system_config": {"worker_niceness": 0}}
    phase(f"joining the Ray cluster at {address}" if address else "starting a single-node Ray cluster",
          "Ray starts its processes (GCS, raylet, dashboard)")
    try:
        context = ray.init(address=address or "local", logging_level="warning", log_to_driver=False,
                           configure_logging=True, **embedded)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r}: {exc}",
                          "auto, ray://HOST:PORT, or none for an embedded cluster") from None
    if not quiet:
        url = getattr(context, "dashboard_url", None)
        if address:
            print(f"joined the Ray cluster at {getattr(context, 'address_info', {}).get('gcs_address', address)}",
                  file=sys.stderr)
        print(f"Ray dashboard: http://{url}" if url else "Ray dashboard: not running (install ray[default])",
              file=sys.stderr)
    return address is None


def shutdown() -> None:
    import ray

    ray.shutdown()


def start_actor(cls: type, *args: Any, name: str, namespace: str, restartable: bool = False,
                detached: bool = False, pin_here: bool = False, spread: bool = False, num_cpus: float = 0,
                num_gpus: float = 0, max_concurrency: int | None = None) -> Any:
    """`cls(*args)` as a named actor.

    `restartable`: Ray restarts it after a crash and retries the calls it held (its state
    must come back from its own checkpoint). `pin_here`: on this process's node, for actors
    that write the run directory, which lives on this node's disk. `spread`: across the
    cluster's nodes (zero-CPU actors would otherwise pile up on the driver's).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = dict(name=name, namespace=namespace, num_cpus=num_cpus, num_gpus=num_gpus)
    if restartable:
        options.update(max_restarts=-1, max_task_retries=-1)
    if detached:
        options.update(lifetime="detached", max_restarts=0)
    if pin_here:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    elif spread:
        options["scheduling_strategy"] = "SPREAD"
    if max_concurrency:
        options["max_concurrency"] = max_concurrency
    phase(f"starting {name}")
    return ray.remote(cls).options(**options).remote(*args)


def find_actor(name: str, namespace: str) -> Any | None:
    """The live actor called `name`, or None."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def kill(handle: Any, restart: bool = False) -> None:
    import ray

    ray.kill(handle, no_restart=not restart)


def _get(refs: Any, timeout: float | None = None) -> Any:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return ray.get(refs, timeout=timeout)
    except GetTimeoutError:
        raise CallTimeout(f"no answer within {timeout} s") from None
    except RayActorError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # A constructor that raised: the message's last line is its error ("...DataError: line 2 is damaged").
        lost = ActorLost(f"{lines[0]}: {lines[-1]}" if getattr(exc, "_actor_init_failed", False) else lines[0])
        lost.cause = getattr(exc, "cause", None)
        raise lost from None


def call(handle: Any, method: str, *args: Any, timeout: float | None = None) -> Any:
    """`handle.method(*args)`, waited for."""
    return _get(getattr(handle, method).remote(*args), timeout)


def call_all(calls: Iterable[tuple[Any, str, tuple]]) -> list[Any]:
    """Several calls in parallel (one round trip), results in order."""
    return _get([getattr(handle, method).remote(*args) for handle, method, args in calls])


def send(handle: Any, method: str, *args: Any) -> Any:
    """Start `handle.method(*args)`; a future for `wait_any` and `result`."""
    return getattr(handle, method).remote(*args)


def cancel(futures: Iterable[Any]) -> None:
    """Cancel `futures` (those that finished are left as they are): Ray never retries a cancelled
    call, so an actor killed under it dies without a word about retrying it."""
    import ray

    for future in futures:
        ray.cancel(future)


def wait_any(futures: list, timeout: float) -> list:
    """The futures that finished within `timeout` seconds (possibly none)."""
    import ray

    if not futures:
        return []
    done, _ = ray.wait(futures, num_returns=len(futures), timeout=timeout)
    return done


def result(future: Any) -> Any:
    return _get(future)


class Remote:
    """A blocking proxy: `Remote(handle).claim(a, b)` is `ray.get(handle.claim.remote(a, b))`."""

    def __init__(self, handle: Any):
        self.handle = handle

    def __getattr__(self, method: str):
        return lambda *args: call(self.handle, method, *args)

    def __reduce__(self):
        return (Remote, (self.handle,))


def start_workers(make_evaluator, size: int, namespace: str, cpus_per_child: float, gpus_per_child: float,
                  first: int = 0, group: Any = None) -> list:
    """`size` worker actors (`worker-{first}` ...) that evaluate with `make_evaluator()`; with a
    placement `group`, worker j takes its bundle j."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raynas.workers.execution.ray_pool import start_workers as start

    last = f" ... worker-{first + size - 1}" if size > 1 else ""
    phase(f"starting worker-{first}{last} ({cpus_per_child:g} CPU, {gpus_per_child:g} GPU each)",
          "each worker starts a process, imports torch and builds its evaluator, then evaluates its first child")
    slots = None if group is None else [
        PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=j) for j in range(size)]
    return start(make_evaluator, size, namespace, cpus_per_child, gpus_per_child, first, slots)


def worker_group(size: int, cpus_per_child: float, gpus_per_child: float) -> Any | None:
    """A placement group that keeps `size` workers together on one node where it can (PACK):
    one replica's m children, so that a lost node takes out whole replicas' batches rather than a
    part of every replica's (with the paper's barrier a replica waits for all of its m). None
    when a worker reserves nothing (a bundle must hold some resource). Ray reschedules the
    bundles of a lost node; a group that cannot be placed yet waits (an autoscaler can add nodes)."""
    from ray.util import placement_group

    bundle = {k: v for k, v in (("CPU", cpus_per_child), ("GPU", gpus_per_child)) if v > 0}
    return placement_group([dict(bundle) for _ in range(size)], strategy="PACK") if bundle else None


def remove_group(group: Any) -> None:
    from ray.util import remove_placement_group

    remove_placement_group(group)


def worker_executor(handles: list, max_retries: int, on_retry=None, on_report=None):
    """An Executor over worker actors (workers/execution/ray_pool.py)."""
    from raynas.workers.execution.ray_pool import RayExecutor

    return RayExecutor(handles, max_retries=max_retries, on_retry=on_retry, on_report=on_report)


def queue_executor(dispatcher: Any, capacity: int):
    """An Executor whose children wait in a dispatcher actor's queue for the next free worker."""
    from raynas.workers.execution.ray_pool import QueueExecutor

    return QueueExecutor(dispatcher, capacity)
