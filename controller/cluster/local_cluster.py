"""A multi-node Ray cluster on one machine, for tests and benchmarks: several raylets, each
declaring its own CPUs, GPUs and labels (Ray schedules declared GPUs without a physical one and
still hands each worker its own `CUDA_VISIBLE_DEVICES`), nodes that can be added and removed
while a search runs, and where each of a job's actors ended up."""

from __future__ import annotations

import socket
from typing import Any


class LocalCluster:
    """A head node (the driver's) and worker nodes, started and joined by this process.

    `head` and each entry of `nodes` are `ray start`-like resources: {"num_cpus": 2, "num_gpus": 4}.
    """

    def __init__(self, head: dict[str, Any], nodes: list[dict[str, Any]] = ()):
        from ray.cluster_utils import Cluster

        # The dashboard serves Ray's state API (where each actor runs), on a port of its own: another
        # Ray on this machine may hold the default one.
        self._cluster = Cluster(initialize_head=True, connect=True,
                                head_node_args={"include_dashboard": True, "dashboard_port": _free_port(), **head})
        self.head_id = self._cluster.head_node.node_id
        self.nodes: dict[str, Any] = {}
        for spec in nodes:
            self.add_node(**spec)

    def add_node(self, **resources: Any) -> str:
        """Start a worker node; returns its node id."""
        node = self._cluster.add_node(**resources)
        self.nodes[node.node_id] = node
        return node.node_id

    def remove_node(self, node_id: str) -> None:
        """Kill a worker node with everything running on it (allow_graceful=False: a lost machine)."""
        self._cluster.remove_node(self.nodes.pop(node_id), allow_graceful=False)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self._cluster.shutdown()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def actor_placements(namespace: str) -> dict[str, dict[str, Any]]:
    """Each named actor of `namespace` on the cluster this process is connected to: its node and
    the resources it holds."""
    import ray
    from ray.util.state import list_actors

    # The cluster's own address: with several clusters on one machine the state API would guess.
    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("ray_namespace", "=", namespace)], limit=10_000)
    return {a.name: {"node": a.node_id, "resources": dict(a.required_resources or {}), "state": a.state}
            for a in actors if a.name}
