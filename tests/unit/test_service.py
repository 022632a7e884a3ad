"""The search service without Ray: runners as threads (ThreadLauncher), a real gRPC
server on port 0, searches on the NAS-Bench-201 table in one process."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raynas.controller import cli
from raynas.controller.api.client import RemoteError, SearchClient
from raynas.controller.api.servicer import TLS, serve, struct_to_dict
from raynas.controller.service.manager import SearchManager, ThreadLauncher
from raynas.controller.service.registry import JobRegistry, SearchRecord
from raynas.protos.nas.v1 import search_pb2 as pb

TOKEN = "unit-test-token"
TABLE = {"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local"}


def start(state_dir, max_jobs=4, tls=None):
    manager = SearchManager(state_dir, ThreadLauncher(), max_jobs=max_jobs, poll_s=0.02)
    return serve(manager, TOKEN, host="127.0.0.1", port=0, tls=tls)


@pytest.fixture
def server(tmp_path):
    srv = start(tmp_path / "state")
    yield srv
    srv.stop(grace=None)


@pytest.fixture
def client(server):
    with SearchClient(f"127.0.0.1:{server.port}", TOKEN) as c:
        yield c


def wait_state(client, search_id, states, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        search = client.get(search_id)
        if search.state in states:
            return search
        time.sleep(0.02)
    raise AssertionError(f"search {search_id} stayed {search.state}")


def test_submit_watch_result_equals_the_run_directory(client):
    search = client.submit({**TABLE, "evaluations": 25, "seed": 1}, name="first")
    assert search.state == pb.STATE_RUNNING and search.spec.evaluations == 25
    events = list(client.watch(search.id))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "state_change" and events[0].state_change.state == pb.STATE_RUNNING
    assert events[-1].state_change.state == pb.STATE_SUCCEEDED
    evaluations = [e.evaluation for e in events if e.WhichOneof("event") == "evaluation"]
    assert [e.index for e in evaluations] == list(range(25))
    bests = [e.new_best.reward for e in events if e.WhichOneof("event") == "new_best"]
    assert bests == sorted(bests) and bests[-1] == max(e.reward for e in evaluations)

    result = client.result(search.id)
    on_disk = json.loads(Path(result.run_dir, "result.json").read_text())
    assert struct_to_dict(result.summary) == on_disk
    assert result.best.architecture.arch == on_disk["best"]["arch"] and result.best.reward == on_disk["best"]["reward"]
    assert [e.architecture.arch for e in result.top_k] == [t["arch"] for t in on_disk["top_k"]]
    assert Path(result.artifacts["evaluations"]).exists()
    final = client.get(search.id)
    assert final.evaluations_done == 25 and final.best.reward == on_disk["best"]["reward"]


def test_watch_can_skip_evaluations_already_seen(client):
    search = client.submit({**TABLE, "evaluations": 12})
    wait_state(client, search.id, (pb.STATE_SUCCEEDED,))
    evaluations = [e.evaluation.index for e in client.watch(search.id, skip=10)
                   if e.WhichOneof("event") == "evaluation"]
    assert evaluations == [10, 11]


def test_bad_requests_get_status_codes_and_the_server_keeps_serving(client):
    with pytest.raises(RemoteError) as bad:
        client.submit({**TABLE, "strategy": "annealing"})
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "strategy" in str(bad.value)
    with pytest.raises(RemoteError) as bad:
        client.submit({**TABLE, "evaluations": 0})
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "evaluations" in str(bad.value)
    with pytest.raises(RemoteError) as bad:
        client.submit(TABLE, name="no spaces allowed")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "name" in str(bad.value)
    with pytest.raises(RemoteError) as missing:
        client.get("no-such-search")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RemoteError) as missing:
        list(client.watch("no-such-search"))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RemoteError) as bad:
        client.list(page_size=1000)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RemoteError) as huge:
        client.submit({**TABLE, "table": {"note": "x" * (2 << 20)}})
    assert huge.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    search = client.submit({**TABLE, "evaluations": 3})
    assert wait_state(client, search.id, (pb.STATE_SUCCEEDED,)).evaluations_done == 3


def test_every_call_needs_the_token_but_health_checks(server):
    address = f"127.0.0.1:{server.port}"
    for token in (None, "wrong"):
        with SearchClient(address, token) as c:
            for call in (lambda: c.list(), lambda: c.get("x"), lambda: list(c.watch("x"))):
                with pytest.raises(RemoteError) as denied:
                    call()
                assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nas.v1.SearchService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), metadata=(("authorization", f"Bearer {TOKEN}"),)))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"nas.v1.SearchService", "grpc.health.v1.Health"} <= names


def test_listing_pages_newest_first_and_filters_by_state(client):
    ids = [client.submit({**TABLE, "evaluations": 2}).id for _ in range(3)]
    for i in ids:
        wait_state(client, i, (pb.STATE_SUCCEEDED,))
    first = client.list(page_size=2)
    second = client.list(page_size=2, page_token=first.next_page_token)
    assert [s.id for s in first.searches] + [s.id for s in second.searches] == sorted(ids, reverse=True)
    assert second.next_page_token == ""
    assert not first.searches[0].HasField("spec")  # pages stay small
    assert len(client.list(state="succeeded").searches) == 3 and not client.list(state="running").searches


def test_cancel_then_resume_completes_the_budget_without_repeats(client):
    search = client.submit({**TABLE, "evaluations": 400})
    for event in client.watch(search.id):
        if event.WhichOneof("event") == "evaluation":
            client.cancel(search.id)
            break
    cancelled = wait_state(client, search.id, (pb.STATE_CANCELLED, pb.STATE_SUCCEEDED))
    assert cancelled.state == pb.STATE_CANCELLED and cancelled.evaluations_done < 400
    with pytest.raises(RemoteError) as early:
        client.resume(wait_state(client, client.submit({**TABLE, "evaluations": 2}).id, (pb.STATE_SUCCEEDED,)).id)
    assert early.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.resume(search.id)
    done = wait_state(client, search.id, (pb.STATE_SUCCEEDED,), timeout=60)
    records = [json.loads(line) for line in Path(done.run_dir, "evaluations.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(400))


def test_too_many_searches_is_resource_exhausted(tmp_path):
    srv = start(tmp_path / "state", max_jobs=1)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            running = c.submit({**TABLE, "evaluations": 100000})
            with pytest.raises(RemoteError) as busy:
                c.submit({**TABLE, "evaluations": 2})
            assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            c.cancel(running.id)
            wait_state(c, running.id, (pb.STATE_CANCELLED,))
            assert c.submit({**TABLE, "evaluations": 2}).state == pb.STATE_RUNNING
    finally:
        srv.stop(grace=None)


def test_a_restarted_service_keeps_finished_searches_and_marks_lost_ones_resumable(tmp_path):
    state = tmp_path / "state"
    srv = start(state)
    with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
        finished = c.submit({**TABLE, "evaluations": 5})
        wait_state(c, finished.id, (pb.STATE_SUCCEEDED,))
        before = c.result(finished.id)
        lost = c.submit({**TABLE, "evaluations": 100000})
    launcher = srv.manager.launcher
    srv.stop(grace=None)
    runner = launcher.find(lost.id)
    # Thread runners die with a real service process, before writing a result: do both by hand.
    runner.cancel()
    runner._thread.join(timeout=30)
    Path(runner.job.out, "result.json").unlink()

    srv = start(state)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            assert c.result(finished.id) == before
            assert {s.id for s in c.list().searches} == {finished.id, lost.id}
            interrupted = c.get(lost.id)
            assert interrupted.state == pb.STATE_INTERRUPTED and "nas resume" in interrupted.error
            assert c.resume(lost.id).state == pb.STATE_RUNNING
            c.cancel(lost.id)
            wait_state(c, lost.id, (pb.STATE_CANCELLED,))
    finally:
        srv.stop(grace=None)


def test_a_search_that_fails_reports_why(client, tmp_path):
    search = client.submit({"space": "nb201", "strategy": "random", "dataset": "cifar10",
                            "data_path": str(tmp_path / "missing"), "runtime": "local", "evaluations": 2})
    failed = wait_state(client, search.id, (pb.STATE_FAILED,))
    assert "data" in failed.error
    with pytest.raises(RemoteError) as no_result:
        client.result(search.id)
    assert no_result.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_registry_survives_reopening(tmp_path):
    registry = JobRegistry(tmp_path / "r.sqlite")
    registry.add(SearchRecord(id="a", state="running", spec={"space": "nb201"}, run_dir="/x"))
    registry.update("a", state="succeeded", result={"best": None}, evaluations_done=3)
    registry.close()
    again = JobRegistry(tmp_path / "r.sqlite").get("a")
    assert (again.state, again.result, again.evaluations_done, again.spec) == ("succeeded", {"best": None}, 3,
                                                                               {"space": "nb201"})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = start(tmp_path / "state", tls=TLS(str(cert), str(key)))
    try:
        with SearchClient(f"localhost:{srv.port}", TOKEN, tls_ca=str(cert)) as c:
            assert c.list().searches == []
        with SearchClient(f"localhost:{srv.port}", TOKEN) as plain, pytest.raises(RemoteError):
            plain.list()
    finally:
        srv.stop(grace=None)


def test_cli_submit_watch_status_result(server, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    conn = ["--server", f"127.0.0.1:{server.port}", "--token-file", str(token)]
    assert cli.main(["submit", *conn, "--space", "nb201", "--evaluator", "table", "--strategy", "random",
                     "--evaluations", "6", "--runtime", "local", "--watch"]) == 0
    out = capsys.readouterr().out.splitlines()
    search_id = out[0]
    assert "succeeded" in out[-1] and sum("reward" in line for line in out) == 6
    assert cli.main(["status", *conn]) == 0 and search_id in capsys.readouterr().out
    assert cli.main(["result", *conn, search_id, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(Path(server.manager.get(search_id).run_dir, "result.json").read_text())
    assert cli.main(["status", *conn, "missing-id"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert cli.main(["status", "--server", f"127.0.0.1:{server.port}", "missing-id"]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
