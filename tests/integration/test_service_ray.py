"""The search service on a local Ray: a real gRPC server on port 0, searches run by
detached runner actors that outlive a restart of the service."""

import json
import time
from pathlib import Path

import grpc
import pytest

from raynas.controller.api.client import RemoteError, SearchClient
from raynas.controller.api.servicer import serve, struct_to_dict
from raynas.controller.service.manager import SERVICE_NAMESPACE, RayLauncher, SearchManager
from raynas.protos.nas.v1 import search_pb2 as pb

TOKEN = "integration-token"


def start(state_dir, **options):
    return serve(SearchManager(state_dir, RayLauncher(), poll_s=0.1, **options), TOKEN, host="127.0.0.1", port=0)


def test_submit_restart_reattach_watch_and_result(ray_cluster, tmp_path):
    state = tmp_path / "state"
    srv = start(state)
    spec = {"space": "nb201", "evaluator": "table", "strategy": "evolution", "evaluations": 60, "seed": 4,
            "workers": 2, "cpus_per_child": 0.5}
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            search = c.submit(spec)
            assert search.ray_namespace.startswith("nas-")
            with pytest.raises(RemoteError) as bad:
                c.submit({**spec, "workers": -1})
            assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "workers" in str(bad.value)
            with SearchClient(f"127.0.0.1:{srv.port}", None) as anonymous, pytest.raises(RemoteError) as denied:
                anonymous.get(search.id)
            assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
            # Restart the service while the search runs (its runner is a detached actor).
            for event in c.watch(search.id):
                if event.WhichOneof("event") == "evaluation":
                    break
    finally:
        srv.stop(grace=None)
    # The runner is named for its search and its owner (the single-token client).
    assert ray_cluster.get_actor(f"search-{search.id}-by-default", namespace=SERVICE_NAMESPACE)

    srv = start(state)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            events = list(c.watch(search.id))
            assert events[0].state_change.state == pb.STATE_RUNNING  # reattached, not lost
            assert events[-1].state_change.state == pb.STATE_SUCCEEDED
            indices = [e.evaluation.index for e in events if e.WhichOneof("event") == "evaluation"]
            assert sorted(indices) == list(range(60))  # recorded as they finish
            result = c.result(search.id)
            on_disk = json.loads(Path(result.run_dir, "result.json").read_text())
            assert struct_to_dict(result.summary) == on_disk
            assert result.best.reward == on_disk["best"]["reward"] and on_disk["evaluations"] == 60
            assert [s.id for s in c.list().searches] == [search.id]
    finally:
        srv.stop(grace=None)
    # The runner is released once its search ended.
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            ray_cluster.get_actor(f"search-{search.id}-by-default", namespace=SERVICE_NAMESPACE)
            time.sleep(0.2)
        except ValueError:
            break
    else:
        raise AssertionError("the runner actor outlived its search")


@pytest.mark.slow
def test_darts_search_end_to_end_through_the_service(ray_cluster, tmp_path):
    """R one-shot searches as Ray tasks streaming their epochs, their genotypes scored on the table."""
    srv = start(tmp_path / "state")
    spec = {"space": "nb201", "strategy": "darts", "evaluator": "table", "proxy_dataset": True, "evaluations": 2,
            "workers": 2,
            "cpus_per_child": 0.5, "strategy_options": {"epochs": 2, "channels": 4, "layers": 1, "batch_size": 32,
                                                        "max_batches_per_epoch": 2}}
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            search = c.submit(spec)
            events = list(c.watch(search.id))
            kinds = [e.WhichOneof("event") for e in events]
            assert events[-1].state_change.state == pb.STATE_SUCCEEDED, events[-1]
            assert kinds.count("one_shot_epoch") == 4 and kinds.count("evaluation") == 2
            monitors = struct_to_dict(next(e for e in events if e.WhichOneof("event") == "one_shot_epoch")
                                      .one_shot_epoch.monitors)
            assert {"skip_count", "alpha_entropy", "genotype"} <= set(monitors)
            result = c.result(search.id)
            assert result.evaluations == 2 and result.best.architecture.space == "nb201"
            assert struct_to_dict(result.summary)["runtime"] == "ray"
    finally:
        srv.stop(grace=None)


@pytest.mark.parametrize("resources, field, capacity", [
    ({"gpus_per_child": 1}, "gpus_per_child", "no node of the Ray cluster"),
    ({"cpus_per_child": 3}, "cpus_per_child", "no node of the Ray cluster"),
    # One worker fits a node, three do not fit the cluster.
    ({"workers": 3, "cpus_per_child": 1}, "workers", "the Ray cluster has 2 CPUs in all (1 node)"),
    # Zero-CPU workers all start at once: a process each, counted against the cluster's memory.
    ({"workers": 1024, "cpus_per_child": 0}, "workers", "actor processes (its runner, 1,024 workers)"),
    ({"strategy": "rl", "controllers": 512, "children": 1, "ps_shards": 64, "workers": 1, "cpus_per_child": 0.5},
     "controllers", "512 controller replicas"),
])
def test_searches_the_cluster_cannot_hold_are_refused_at_submit(ray_cluster, tmp_path, resources, field, capacity):
    srv = start(tmp_path / "state")
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c, pytest.raises(RemoteError) as refused:
            c.submit({"space": "nb201", "evaluator": "table", "strategy": "random", "evaluations": 2, **resources})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in str(refused.value)
        assert capacity in str(refused.value)
    finally:
        srv.stop(grace=None)


def test_cancel_force_stops_a_hung_evaluator(ray_cluster, tmp_path):
    """A child that sleeps for hours never lets the search reach a safe point: after the
    grace, its runner (and with it the job's workers) is killed and the search is cancelled."""
    srv = start(tmp_path / "state", cancel_grace_s=1.0)
    spec = {"space": "nb201", "evaluator": "table", "strategy": "random", "evaluations": 4, "workers": 1,
            "cpus_per_child": 0.5, "evaluator_options": {"sleep": 100}}
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            search = c.submit(spec)
            namespace = search.ray_namespace
            deadline = time.time() + 60
            while time.time() < deadline and not _busy(ray_cluster, namespace):
                time.sleep(0.2)  # until the job's worker hangs in its child (not merely started)
            assert _busy(ray_cluster, namespace)
            c.cancel(search.id)
            deadline = time.time() + 60
            while time.time() < deadline and c.get(search.id).state == pb.STATE_RUNNING:
                time.sleep(0.2)
            stopped = c.get(search.id)
            assert stopped.state == pb.STATE_CANCELLED and "force-stopped" in stopped.error
            deadline = time.time() + 30
            while time.time() < deadline and (_actors(ray_cluster, namespace) or _runner(ray_cluster, search.id)):
                time.sleep(0.2)
            assert not _actors(ray_cluster, namespace) and not _runner(ray_cluster, search.id)
    finally:
        srv.stop(grace=None)


def _actors(ray, namespace):
    """The job's named actors still alive (its workers)."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]


def _busy(ray, namespace):
    """Whether one of the job's workers is training a child now."""
    workers = [ray.get_actor(name, namespace=namespace) for name in _actors(ray, namespace)
               if name.startswith("worker-")]
    try:
        return any(state["busy"] for state in ray.get([w.state.remote() for w in workers], timeout=10))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ValueError):
        return False


def _runner(ray, search_id):
    try:
        return ray.get_actor(f"search-{search_id}-by-default", namespace=SERVICE_NAMESPACE)
    except ValueError:
        return None
