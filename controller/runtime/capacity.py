"""What a search starts on the Ray cluster, against what the cluster can hold.

Ray queues an actor that reserves CPUs or GPUs until a node has them free, but starts one that
reserves nothing at once: a worker with `cpus_per_child` 0, and every parameter shard, controller
replica, recorder and dispatcher (they reserve no CPU, so that they never wait behind the workers).
Each is a process holding a Python interpreter with torch, so a search with a thousand of them
would take the head node's memory in seconds. The service therefore counts, at submit, what the
search's execution path really starts and refuses what the cluster cannot hold: workers' CPUs and
GPUs against the cluster's, and actor processes against its memory, alone (never, INVALID_ARGUMENT)
and beside the searches already running (not now, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raynas.common import Busy, ConfigError
from raynas.controller.cluster.resources import unplaceable
from raynas.controller.runtime.plan import LOCAL, SCHEME, Plan
from raynas.controller.runtime.spec import SearchSpec

#: Memory counted for one actor process: a Ray worker that has imported torch holds 170-250 MiB.
PROCESS_MEMORY = 256 << 20


@dataclass(frozen=True)
class Footprint:
    """What one search starts: its runner, `workers` workers reserving `cpus` CPUs and `gpus` GPUs in
    all, and for Zoph & Le's scheme its shards, replicas, recorder and dispatcher."""

    workers: int = 0
    cpus_per_worker: float = 0.0
    gpus_per_worker: float = 0.0
    ps_shards: int = 0
    controllers: int = 0
    dispatcher: bool = False

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    @property
    def processes(self) -> int:
        recorder = 1 if self.controllers else 0
        return 1 + self.workers + self.ps_shards + self.controllers + recorder + int(self.dispatcher)

    def describe(self) -> str:
        parts = ["its runner", _count(self.workers, "worker")]
        if self.controllers:
            parts += [_count(self.ps_shards, "parameter shard"), _count(self.controllers, "controller replica"),
                      "a recorder"] + (["a dispatcher"] if self.dispatcher else [])
        return ", ".join(p for p in parts if p)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'s' if n != 1 else ''}" if n else ""


def assign_workers(controllers: int, children: int, workers: int) -> list[list[int]] | None:
    """Each replica's own workers when there are enough for all (replica k: workers k*m ..
    k*m + m - 1, the paper's layout); None when they must be shared through the dispatcher."""
    if workers < controllers * children:
        return None
    return [list(range(k * children, (k + 1) * children)) for k in range(controllers)]


def scheme_workers(spec: SearchSpec) -> tuple[int, list[list[int]] | None]:
    """The workers Zoph & Le's scheme starts and each replica's own (None: shared). It uses at most
    K x m at once; more would only idle."""
    count = min(spec.workers, spec.controllers * spec.children)
    return count, assign_workers(spec.controllers, spec.children, count)


def footprint(plan: Plan) -> Footprint:
    """What `plan` starts on the cluster (controller/runtime/runners/: the local path runs inside its
    runner; the proposer and Tune paths start W workers or trial actors; the scheme starts at most
    K x m workers, S shards, K replicas, a recorder, and a dispatcher when the workers are shared)."""
    spec = plan.spec
    if plan.path == LOCAL:
        return Footprint()
    if plan.path != SCHEME:
        return Footprint(spec.workers, spec.cpus_per_child, spec.gpus_per_child)
    workers, own = scheme_workers(spec)
    return Footprint(workers, spec.cpus_per_child, spec.gpus_per_child, spec.ps_shards, spec.controllers,
                     dispatcher=own is None)


def process_capacity(nodes: list[dict[str, float]]) -> int:
    """Actor processes the nodes' memory holds at PROCESS_MEMORY each."""
    return sum(int(n.get("memory", 0.0) // PROCESS_MEMORY) for n in nodes)


def check_alone(fp: Footprint, nodes: list[dict[str, float]]) -> None:
    """A ConfigError naming the field and the cluster's capacity when the search could never run whole."""
    if fp.workers:
        reason = unplaceable(fp.cpus_per_worker, fp.gpus_per_worker, nodes)
        if reason:
            raise ConfigError("gpus_per_child" if fp.gpus_per_worker else "cpus_per_child", reason,
                              "what one node of the cluster has")
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    for kind, need, per in (("CPU", fp.cpus, fp.cpus_per_worker), ("GPU", fp.gpus, fp.gpus_per_worker)):
        have = sum(n.get(kind, 0.0) for n in nodes)
        if need > have:
            raise ConfigError("workers", f"{fp.workers:,} workers of {per:g} {kind}s need {need:g} {kind}s at once, "
                              f"and the Ray cluster has {have:g} {kind}s in all ({where})",
                              f"at most {math.floor(have / per):,} workers of {per:g} {kind}s, or "
                              f"{kind.lower()}s_per_child {math.floor(100 * have / fp.workers) / 100:g} for "
                              f"{fp.workers:,} workers")
    capacity = process_capacity(nodes)
    if fp.processes > capacity:
        memory = sum(n.get("memory", 0.0) for n in nodes) / (1 << 30)
        field = max((("workers", fp.workers), ("controllers", fp.controllers), ("ps_shards", fp.ps_shards)),
                    key=lambda item: item[1])[0]
        raise ConfigError(field, f"the search starts {fp.processes:,} actor processes ({fp.describe()}), and the Ray "
                          f"cluster holds at most {capacity:,} ({memory:.3g} GiB of memory on {where}, "
                          f"{PROCESS_MEMORY >> 20} MiB per process)",
                          "fewer workers, controllers or ps_shards; or workers that reserve CPUs (cpus_per_child), "
                          "which wait for free ones instead of all starting at once")


def check_beside(fp: Footprint, held: int, nodes: list[dict[str, float]]) -> None:
    """Busy when the search's processes do not fit beside the `held` ones of the searches running now."""
    capacity = process_capacity(nodes)
    if held + fp.processes > capacity:
        raise Busy(f"the searches running now hold {held:,} of the {capacity:,} actor processes the Ray cluster "
                   f"holds, and this one starts {fp.processes:,} ({fp.describe()}); wait for one to end")
