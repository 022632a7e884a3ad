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


def start(state_dir):
    return serve(SearchManager(state_dir, RayLauncher(), poll_s=0.1), TOKEN, host="127.0.0.1", port=0)


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
    assert ray_cluster.get_actor(f"search-{search.id}", namespace=SERVICE_NAMESPACE)

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
            ray_cluster.get_actor(f"search-{search.id}", namespace=SERVICE_NAMESPACE)
            time.sleep(0.2)
        except ValueError:
            break
    else:
        raise AssertionError("the runner actor outlived its search")


@pytest.mark.slow
def test_darts_search_end_to_end_through_the_service(ray_cluster, tmp_path):
    """R one-shot searches as Ray tasks streaming their epochs, their genotypes scored on the table."""
    srv = start(tmp_path / "state")
    spec = {"space": "nb201", "strategy": "darts", "evaluator": "table", "evaluations": 2, "workers": 2,
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
