"""What the Ray cluster can hold, and whether the service still reaches it: the search
service refuses work that no node could ever place, and reports itself unhealthy when its
connection to the cluster is gone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def node_totals() -> list[dict[str, float]]:
    """The total resources of each alive node (not what is free now: a busy node frees up)."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def unplaceable(cpus: float, gpus: float, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of `nodes` can ever hold one actor needing `cpus` CPUs and `gpus` GPUs, or
    None when one can."""
    if any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes):
        return None
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    return (f"no node of the Ray cluster can hold a worker with {cpus:g} CPUs and {gpus:g} GPUs: "
            f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, at most {most_cpus:g} CPUs and {most_gpus:g} GPUs "
            "on one")


class Probe:
    """Asks the cluster something (by default: its nodes' totals) in a thread of its own,
    because queries to a lost Ray GCS hang instead of failing. No answer within the timeout
    counts as a lost connection; callers meanwhile share the one query in flight rather than
    starting more."""

    def __init__(self, query: Callable[[], Any] = node_totals):
        self.query = query
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._answer: list = []

    def ask(self, timeout_s: float) -> Any | None:
        """The query's answer, or None when it failed or did not come within `timeout_s`."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._answer = answer = []
                self._thread = threading.Thread(target=self._ask, args=(answer,), name="ray-probe", daemon=True)
                self._thread.start()
            thread, answer = self._thread, self._answer
        thread.join(timeout_s)
        return answer[0] if answer else None

    def _ask(self, answer: list) -> None:
        try:
            answer.append(self.query())
        except Exception:  # noqa: BLE001 - whatever the query raises, the cluster did not answer
            pass
