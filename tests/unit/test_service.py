"""The search service without Ray: runners as threads (ThreadLauncher), a real gRPC
server on port 0, searches on the NAS-Bench-201 table in one process."""

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from gauges import record
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raynas.common import ConfigError, DataError
from raynas.controller import cli
from raynas.controller.api.client import RemoteError, SearchClient
from raynas.controller.api.servicer import TLS, serve, struct_to_dict
from raynas.controller.service.access import Client, Tokens
from raynas.controller.service.manager import RayLauncher, SearchManager, ThreadLauncher
from raynas.controller.service.registry import FAILED, MAX_ERROR, RUNNING, JobRegistry, SearchRecord
from raynas.protos.nas.v1 import search_pb2 as pb
from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

TOKEN = "unit-test-token"
TABLE = {"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local"}


def start(state_dir, max_jobs=4, tls=None, tokens=TOKEN, launcher=None, max_watchers=1024,
          max_watchers_per_client=None, **manager_options):
    manager = SearchManager(state_dir, launcher or ThreadLauncher(), max_jobs=max_jobs, poll_s=0.02,
                            **manager_options)
    return serve(manager, tokens, host="127.0.0.1", port=0, tls=tls, max_watchers=max_watchers,
                 max_watchers_per_client=max_watchers_per_client, health_poll_s=0.02)


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
        client.submit({**TABLE, "evaluator_options": {"note": "x" * (2 << 20)}})
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
    launcher, record = srv.manager.launcher, srv.manager.get(lost.id)
    srv.stop(grace=None)
    runner = launcher.find(record)
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


def test_a_search_its_service_took_down_is_interrupted_not_cancelled(tmp_path):
    """A service stopped with SIGTERM ends its embedded Ray's searches, each writing a "stopped"
    result; the restarted service called them cancelled, although no one had asked."""
    state = tmp_path / "state"
    srv = start(state)
    with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
        lost = c.submit({**TABLE, "evaluations": 100000})
    launcher, record = srv.manager.launcher, srv.manager.get(lost.id)
    srv.stop(grace=None)
    runner = launcher.find(record)
    runner.job.stop()  # what the signal does to the job in its runner
    runner._thread.join(timeout=30)
    assert json.loads(Path(runner.job.out, "result.json").read_text())["state"] == "stopped"
    assert runner.status()[0] == "interrupted"

    srv = start(state)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            interrupted = c.get(lost.id)
            assert interrupted.state == pb.STATE_INTERRUPTED and f"nas resume {lost.id}" in interrupted.error
            assert c.resume(lost.id).state == pb.STATE_RUNNING
            c.cancel(lost.id)  # asked: cancelled
            assert wait_state(c, lost.id, (pb.STATE_CANCELLED,)).state == pb.STATE_CANCELLED
    finally:
        srv.stop(grace=None)


def test_a_search_that_fails_reports_why(tmp_path):
    srv = start(tmp_path / "state", data_roots=(str(tmp_path),))
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as client:
            search = client.submit({"space": "nb201", "strategy": "random", "dataset": "cifar10",
                                    "data_path": "missing", "runtime": "local", "evaluations": 2})
            failed = wait_state(client, search.id, (pb.STATE_FAILED,))
            assert "data" in failed.error
            with pytest.raises(RemoteError) as no_result:
                client.result(search.id)
            assert no_result.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        srv.stop(grace=None)


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
    assert cli.main(["result", *conn, search_id]) == 0
    assert f"{search_id}: succeeded, 6 evaluations (0 failed) in " in capsys.readouterr().out
    assert cli.main(["status", *conn, "missing-id"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert cli.main(["status", "--server", f"127.0.0.1:{server.port}", "missing-id"]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


# -- the service facing careless and hostile clients (issue #11) ----------------------------

class FakeLauncher:
    """Runners that stay running until told otherwise and never reach a safe point: what a
    hung evaluator or an unplaceable worker looks like from the service."""

    def __init__(self):
        self.statuses, self.killed, self.cancelled = {}, [], []
        self.alive, self.stuck_reason, self.cluster, self.nodes_error = True, None, None, None

    def nodes(self):
        if self.nodes_error:
            raise self.nodes_error
        return self.cluster

    def start(self, record, resume):
        return record.id

    def find(self, record):
        return None

    def status(self, handle):
        return self.statuses.get(handle, (RUNNING, ""))

    def stuck(self, spec):
        return self.stuck_reason

    def cancel(self, handle):
        self.cancelled.append(handle)

    def kill(self, handle):
        self.killed.append(handle)

    def release(self, handle):
        pass

    def healthy(self):
        return self.alive


@pytest.fixture
def serving(tmp_path):
    """start(**options) -> (server, client, launcher); everything stopped afterwards."""
    opened = []

    def run(tokens=TOKEN, token=TOKEN, **options):
        launcher = options.pop("launcher", None) or FakeLauncher()
        srv = start(tmp_path / "state", tokens=tokens, launcher=launcher, **options)
        client = SearchClient(f"127.0.0.1:{srv.port}", token)
        opened.append((srv, client))
        return srv, client, launcher

    yield run
    for srv, client in opened:
        client.close()
        srv.stop(grace=None)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(RemoteError) as exc:
        call()
    return exc.value.code


def test_datasets_are_read_only_under_the_data_roots(serving, tmp_path):
    root = tmp_path / "data"
    (root / "cifar").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    _, c, _ = serving(data_roots=(str(root),))
    cifar = {"space": "nb201", "strategy": "random", "dataset": "cifar10", "runtime": "local"}
    answers = set()
    for probe in (tmp_path / "secret", tmp_path / "missing", root / ".." / "secret"):
        with pytest.raises(RemoteError) as refused:
            c.submit({**cifar, "data_path": str(probe)})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "data_path" in str(refused.value)
        answers.add(str(refused.value))
    assert len(answers) == 1  # an existing folder and a missing one read the same
    accepted = c.submit({**cifar, "data_path": "cifar"})
    assert accepted.spec.data_path == os.path.realpath(root / "cifar")


def test_without_data_roots_no_dataset_path_is_read(serving, tmp_path):
    _, c, _ = serving()
    with pytest.raises(RemoteError) as refused:
        c.submit({"space": "nb201", "strategy": "random", "dataset": "cifar10", "data_path": str(tmp_path)})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "--data-root" in str(refused.value)


def test_the_job_limit_is_checked_before_the_spec(serving):
    _, c, _ = serving(max_jobs=1)
    c.submit(TABLE)
    huge = {"space": "macro", "space_options": {"num_layers": 2000, "max_layers": 2000}}
    assert code_of(lambda: c.submit(huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_scheme_settings_for_a_search_without_the_scheme_are_refused_by_name(serving):
    """As `nas search` refuses them: the service would otherwise run the search and ignore them."""
    _, c, _ = serving()
    with pytest.raises(RemoteError) as refused:
        c.submit({**TABLE, "strategy": "evolution", "controllers": 4, "runtime": "ray"})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "controllers" in str(refused.value)
    assert "evolution strategy has no shared policy" in str(refused.value)
    c.submit({**TABLE, "strategy": "rl", "controllers": 2, "children": 2, "runtime": "ray"})


def test_a_huge_space_is_refused_by_name(serving):
    _, c, _ = serving()
    with pytest.raises(RemoteError) as refused:
        c.submit({"space": "macro", "space_options": {"num_layers": 2000, "max_layers": 2000}})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "space_options.max_layers" in str(refused.value)


def test_unary_calls_and_health_answer_while_200_watch(serving):
    srv, c, _ = serving()
    search = c.submit(TABLE)  # runs until the end of the test
    address, meta = f"127.0.0.1:{srv.port}", (("authorization", f"Bearer {TOKEN}"),)
    channels = [grpc.insecure_channel(address) for _ in range(4)]
    try:
        stubs = [pb_grpc.SearchServiceStub(ch) for ch in channels]
        streams = [stubs[i % 4].WatchSearch(pb.WatchSearchRequest(id=search.id), metadata=meta, timeout=30)
                   for i in range(200)]
        # Every watcher is being served: each got its first event.
        assert all(next(stream).state_change.state == pb.STATE_RUNNING for stream in streams)
        assert c.get(search.id).state == pb.STATE_RUNNING
        reply = health_pb2_grpc.HealthStub(channels[0]).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for stream in streams:
            stream.cancel()
    finally:
        for ch in channels:
            ch.close()


def test_watchers_beyond_the_limit_are_resource_exhausted(serving):
    _, c, _ = serving(max_watchers=2)
    search = c.submit(TABLE)
    first, second = c.watch(search.id), c.watch(search.id)
    next(first), next(second)
    assert code_of(lambda: next(c.watch(search.id))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.close(), second.close()


def test_watchers_are_counted_per_search_while_their_streams_are_open(serving, monkeypatch):
    gauge = record(monkeypatch)["watchers"]
    srv, c, _ = serving()
    one, two = c.submit(TABLE), c.submit(TABLE)
    streams = [c.watch(one.id), c.watch(one.id), c.watch(two.id)]
    for stream in streams:
        next(stream)  # its first event: the stream is open on the server
    first, second = ({"job": srv.manager.registry.get(s.id).ray_namespace} for s in (one, two))
    gauge.wait_for(lambda g: g.last(**first) == 2 and g.last(**second) == 1)
    streams[0].close()
    gauge.wait_for(lambda g: g.last(**first) == 1)
    streams[1].close(), streams[2].close()
    gauge.wait_for(lambda g: g.last(**first) == 0 and g.last(**second) == 0)


def test_health_is_not_serving_while_the_cluster_is_lost(serving):
    srv, _, launcher = serving()

    def status(service):
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status

    def wait(expected):
        deadline = time.time() + 10
        while time.time() < deadline and {status(""), status("nas.v1.SearchService")} != {expected}:
            time.sleep(0.02)
        return {status(""), status("nas.v1.SearchService")} == {expected}

    assert wait(health_pb2.HealthCheckResponse.SERVING)
    launcher.alive = False
    assert wait(health_pb2.HealthCheckResponse.NOT_SERVING)
    launcher.alive = True
    assert wait(health_pb2.HealthCheckResponse.SERVING)


def _tear(run_dir: str) -> None:
    """Cut the second line of a search's evaluation log short, as a crash mid-write can."""
    log = Path(run_dir, "evaluations.jsonl")
    lines = log.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    log.write_text("\n".join(lines) + "\n")


def test_a_torn_log_fails_only_its_search_and_the_service_starts(tmp_path):
    state = tmp_path / "state"
    srv = start(state)
    with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
        good = c.submit({**TABLE, "evaluations": 5})
        torn = c.submit({**TABLE, "evaluations": 5})
        for search in (good, torn):
            wait_state(c, search.id, (pb.STATE_SUCCEEDED,))
        lost = c.submit({**TABLE, "evaluations": 100000})
        for event in c.watch(lost.id):
            if event.WhichOneof("event") == "evaluation" and event.evaluation.index >= 3:
                break
    launcher, record = srv.manager.launcher, srv.manager.get(lost.id)
    srv.stop(grace=None)
    runner = launcher.find(record)
    runner.cancel()
    runner._thread.join(timeout=30)
    Path(runner.job.out, "result.json").unlink()
    _tear(record.run_dir)
    _tear(torn.run_dir)

    srv = start(state)  # reattaching reads the torn log
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            failed = c.get(lost.id)
            assert failed.state == pb.STATE_FAILED
            assert "cannot be read" in failed.error and "\n" not in failed.error
            assert c.get(good.id).state == pb.STATE_SUCCEEDED and c.result(good.id).evaluations == 5
            events = list(c.watch(torn.id))
            assert events[-1].state_change.state == pb.STATE_FAILED
            assert "cannot be read" in events[-1].state_change.error
            assert c.submit({**TABLE, "evaluations": 2}).state == pb.STATE_RUNNING
    finally:
        srv.stop(grace=None)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_damaged_registry_is_one_clear_error_and_is_kept(tmp_path, damage):
    state = tmp_path / "state"
    registry = JobRegistry(state / "registry.sqlite")
    for i in range(200):
        registry.add(SearchRecord(id=f"s{i:03d}", state="succeeded", spec={"space": "nb201", "pad": "x" * 500},
                                  run_dir=f"/runs/s{i}"))
    registry.close()
    path = state / "registry.sqlite"
    whole = path.read_bytes()
    damaged = {"empty": b"", "garbage": os.urandom(len(whole)), "truncated": whole[: len(whole) // 3]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(DataError) as refused:
        SearchManager(state, ThreadLauncher())
    assert str(path) in str(refused.value) and "backup" in str(refused.value)
    assert path.read_bytes() == damaged  # never replaced by an empty registry


def test_cancel_force_stops_a_search_that_never_reaches_a_safe_point(serving):
    _, c, launcher = serving(cancel_grace_s=0.2)
    search = c.submit(TABLE)
    assert c.cancel(search.id).state == pb.STATE_RUNNING  # asked; it has the grace to stop by itself
    stopped = wait_state(c, search.id, (pb.STATE_CANCELLED,))
    assert launcher.cancelled == [search.id] and launcher.killed == [search.id]
    assert "force-stopped" in stopped.error and "0.2 s" in stopped.error


def test_a_search_no_node_can_place_fails_after_the_placement_timeout(serving):
    _, c, launcher = serving(placement_timeout_s=0.2)
    launcher.stuck_reason = "no node of the Ray cluster can hold a worker with 0 CPUs and 1 GPUs"
    search = c.submit(TABLE)
    failed = wait_state(c, search.id, (pb.STATE_FAILED,))
    assert "not placed within 0.2 s" in failed.error and "1 GPUs" in failed.error
    assert launcher.killed == [search.id]


def test_a_spec_the_cluster_can_never_place_is_refused_at_submit(serving):
    _, c, launcher = serving()
    launcher.cluster = [{"CPU": 2.0, "memory": 8.0 * (1 << 30)}]
    with pytest.raises(RemoteError) as refused:
        c.submit({**TABLE, "runtime": "ray", "gpus_per_child": 1})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "gpus_per_child" in str(refused.value)
    assert "no node of the Ray cluster can hold a worker with 1 CPUs and 1 GPUs" in str(refused.value)


def test_delete_removes_an_ended_search_and_its_run_directory(server, client, tmp_path, capsys):
    done = client.submit({**TABLE, "evaluations": 3})
    wait_state(client, done.id, (pb.STATE_SUCCEEDED,))
    running = client.submit({**TABLE, "evaluations": 100000})
    assert code_of(lambda: client.delete(running.id)) == grpc.StatusCode.FAILED_PRECONDITION
    token = tmp_path / "token"
    token.write_text(TOKEN)
    assert cli.main(["delete", "--server", f"127.0.0.1:{server.port}", "--token-file", str(token), done.id]) == 0
    assert "deleted" in capsys.readouterr().out
    assert not Path(done.run_dir).exists()
    assert code_of(lambda: client.get(done.id)) == grpc.StatusCode.NOT_FOUND
    client.cancel(running.id)
    wait_state(client, running.id, (pb.STATE_CANCELLED,))
    client.delete(running.id)
    assert [s.id for s in client.list().searches] == []


def test_stored_errors_are_bounded_and_listing_pages_by_size(serving, tmp_path):
    srv, c, launcher = serving()
    search = c.submit(TABLE)
    launcher.statuses[search.id] = (FAILED, "x" * 10**6)
    failed = wait_state(c, search.id, (pb.STATE_FAILED,))
    assert MAX_ERROR <= len(failed.error) < MAX_ERROR + 100 and "characters cut" in failed.error
    # Searches stored before errors were bounded: seventeen with a 1 MB error each.
    with sqlite3.connect(tmp_path / "state" / "registry.sqlite") as db:
        for i in range(17):
            db.execute("INSERT INTO searches (id, state, spec, created_at, run_dir, error) VALUES (?, ?, ?, ?, ?, ?)",
                       (f"19990101-000000-{i:06d}", "failed", json.dumps({"space": "nb201"}), 0.0, "/gone",
                        "y" * (1 << 20)))
    seen, token = [], ""
    while True:
        page = c.list(page_size=100, page_token=token)
        assert page.ByteSize() < 4 << 20  # what a client receives by default
        seen += [s.id for s in page.searches]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 18


def _tokens_file(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


ALICE, BOB, OPS = "a" * 40, "b" * 40, "o" * 40


def test_each_client_sees_and_controls_only_its_own_searches(serving, tmp_path):
    tokens = Tokens.load(_tokens_file(tmp_path / "tokens", f"alice {ALICE}\nbob {BOB}  # a comment\nops {OPS} admin\n"))
    srv, alice, _ = serving(tokens=tokens, token=ALICE)
    search = alice.submit(TABLE, name="mine")
    assert search.owner == "alice" and alice.get(search.id).owner == "alice"
    with SearchClient(f"127.0.0.1:{srv.port}", BOB) as bob:
        for call in (bob.get, bob.cancel, bob.resume, bob.result, bob.delete, lambda i: next(bob.watch(i))):
            assert code_of(lambda call=call: call(search.id)) == grpc.StatusCode.NOT_FOUND
        assert list(bob.list().searches) == []
        mine = bob.submit(TABLE)
    with SearchClient(f"127.0.0.1:{srv.port}", OPS) as ops:
        listed = {s.id: (s.owner, s.name) for s in ops.list().searches}
        assert listed == {search.id: ("alice", "mine"), mine.id: ("bob", "")}
        ops.cancel(search.id)
    assert [s.id for s in alice.list().searches] == [search.id]
    assert RayLauncher.actor_name(srv.manager.get(search.id)) == f"search-{search.id}-by-alice"


@pytest.mark.parametrize("text, mode, problem", [
    (f"alice {ALICE}\n", 0o644, "chmod 600"),
    ("alice short\n", 0o600, "too short"),
    (f"alice {ALICE}\nalice {BOB}\n", 0o600, "twice"),
    (f"alice {ALICE}\nbob {ALICE}\n", 0o600, "twice"),
    (f"alice {ALICE} root\n", 0o600, "line 1"),
    (f"al/ice {ALICE}\n", 0o600, "client name"),
    ("# nobody\n", 0o600, "no client"),
])
def test_a_bad_tokens_file_is_refused_by_line(tmp_path, text, mode, problem):
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        Tokens.load(path)
    assert refused.value.field == "tokens_file" and problem in str(refused.value)


def test_tokens_identify_only_exact_bearer_tokens(tmp_path):
    tokens = Tokens.load(_tokens_file(tmp_path / "tokens", f"alice {ALICE}\nops {OPS} admin\n"))
    assert tokens.identify(f"Bearer {ALICE}") == Client("alice") and tokens.identify(f"Bearer {OPS}").admin
    for given in ("", ALICE, f"bearer {ALICE}", f"Bearer {ALICE[:-1]}", f"Bearer  {ALICE}", "Bearer "):
        assert tokens.identify(given) is None


def test_unknown_train_options_and_nan_are_invalid_argument(serving):
    srv, c, _ = serving()
    with pytest.raises(RemoteError) as unknown:
        c.submit({"space": "macro", "evaluator": "train", "runtime": "local", "evaluator_options": {"epochz": 1}})
    assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT and "evaluator_options.epochz" in str(unknown.value)
    spec = pb.SearchSpec(space="macro", runtime="local")
    spec.evaluator_options.update({"lr": float("nan")})
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel, pytest.raises(grpc.RpcError) as nan:
        pb_grpc.SearchServiceStub(channel).SubmitSearch(pb.SubmitSearchRequest(spec=spec),
                                                        metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert nan.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "evaluator_options.lr" in nan.value.details()


def test_unexpected_errors_are_internal_without_their_text(serving):
    _, c, launcher = serving()
    launcher.nodes_error = RuntimeError("/home/ops/secret-path exploded")
    with pytest.raises(RemoteError) as internal:
        c.submit(TABLE)
    assert internal.value.code == grpc.StatusCode.INTERNAL and "incident" in str(internal.value)
    assert "secret" not in str(internal.value)


def test_serve_listens_on_loopback_unless_told_or_tls():
    from raynas.controller.cli.service import listen_host

    args = cli.build_parser().parse_args(["serve"])
    assert listen_host(args.host, tls=False) == "127.0.0.1"
    assert listen_host(args.host, tls=True) == "[::]"
    assert listen_host("0.0.0.0", tls=False) == "0.0.0.0"


def test_registry_and_run_directories_are_private(serving, tmp_path):
    _, c, _ = serving()
    search = c.submit(TABLE)
    state = tmp_path / "state"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (state, state / "runs", Path(search.run_dir),
                                                         state / "registry.sqlite")}
    assert modes == {state: 0o700, state / "runs": 0o700, Path(search.run_dir): 0o700,
                     state / "registry.sqlite": 0o600}


def test_a_worker_no_node_can_hold_is_explained_by_the_largest_node():
    from raynas.controller.cluster.resources import unplaceable

    nodes = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert unplaceable(1, 1, nodes) is None and unplaceable(8, 0, nodes) is None
    assert unplaceable(3, 1, [{"CPU": 2.0}]) == ("no node of the Ray cluster can hold a worker with 3 CPUs and 1 GPUs: "
                                                 "1 node, at most 2 CPUs and 0 GPUs on one")
    assert "2 nodes, at most 8 CPUs and 1 GPUs" in unplaceable(4, 2, nodes)


def test_a_hung_cluster_query_counts_as_lost_and_is_not_repeated():
    import threading

    from raynas.controller.cluster.resources import Probe

    release, calls = threading.Event(), []

    def hangs():
        calls.append(1)
        release.wait()
        return ["node"]

    probe = Probe(hangs)
    assert probe.ask(0.05) is None and probe.ask(0.05) is None and len(calls) == 1  # one query hangs, not two
    release.set()
    assert probe.ask(1) == ["node"]


def test_a_registry_from_before_owners_opens_and_its_searches_are_the_admins(tmp_path):
    path = tmp_path / "registry.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE searches (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, "
                   "spec TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, "
                   "run_dir TEXT NOT NULL, ray_namespace TEXT NOT NULL DEFAULT '', "
                   "evaluations_done INTEGER NOT NULL DEFAULT 0, evaluations_failed INTEGER NOT NULL DEFAULT 0, "
                   "best TEXT, error TEXT NOT NULL DEFAULT '', result TEXT)")
        db.execute("INSERT INTO searches (id, state, spec, created_at, run_dir) "
                   "VALUES ('old', 'succeeded', '{}', 0, '/r')")
    registry = JobRegistry(path)
    assert registry.get("old").owner == "" and [r.id for r in registry.list(10, owner="")] == ["old"]
    assert registry.list(10, owner="alice") == []
    registry.close()
