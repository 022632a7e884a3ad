"""The service under load (issue #23): watchers of huge logs cost bounded memory and cannot
starve other calls, clients share the job slots and the watch streams by quota, a search's time
is bounded, and a search that needs more than the cluster has is refused at submit."""

import json
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_service import TABLE, TOKEN, FakeLauncher, code_of, start, wait_state

from raynas.controller.api.client import RemoteError, SearchClient
from raynas.controller.service import logs
from raynas.controller.service.manager import SearchManager
from raynas.protos.nas.v1 import search_pb2 as pb
from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

METADATA = (("authorization", f"Bearer {TOKEN}"),)

ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
         "|none~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|avg_pool_3x3~2|"]


def record(index: int, arch: str = ARCHS[0], reward: float | None = None, finished_at: float = 1.7e9) -> dict:
    """An evaluation line as the table evaluator writes it (about 550 bytes)."""
    return {"arch": arch, "finished_at": finished_at, "id": f"e{index:06d}", "index": index, "reason": None,
            "reward": index / 1e6 if reward is None else reward, "seed": 12345, "status": "ok",
            "metrics": {"budget": 12, "dataset": "cifar10", "flops": 49415872, "params": 344346,
                        "test_acc_12ep": 60.3, "test_acc_200ep": 80.29, "valid_acc_12ep": 53.642,
                        "simulated_time_s": 102.75, "wall_time_s": 0.0001}}


def write_log(run_dir: str, records) -> None:
    with open(Path(run_dir, "evaluations.jsonl"), "a") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


@pytest.fixture
def serving(tmp_path):
    """start(**options) -> (server, client, launcher): FakeLauncher runners, stopped afterwards."""
    opened = []

    def run(**options):
        launcher = FakeLauncher()
        srv = start(tmp_path / "state", launcher=launcher, **options)
        opened.append((srv, SearchClient(f"127.0.0.1:{srv.port}", TOKEN)))
        return srv, opened[-1][1], launcher

    yield run
    for srv, client in opened:
        client.close()
        srv.stop(grace=None)


@pytest.fixture
def manager(tmp_path):
    m = SearchManager(tmp_path / "state", FakeLauncher(), poll_s=0.02)
    yield m
    m.close()


def test_a_watcher_reads_a_huge_log_a_bounded_chunk_at_a_time(manager):
    search = manager.submit(TABLE)
    total = 20_000  # 11 MB
    write_log(search.run_dir, (record(i) for i in range(total)))
    watch = manager.watch(search.id)
    first = watch.poll()
    # The first events come after one chunk was read, not after the whole log.
    assert first[0]["kind"] == "state"
    read = sum(len(json.dumps(e["record"], sort_keys=True)) + 1 for e in first if e["kind"] == "evaluation")
    assert 0 < read <= logs.CHUNK_BYTES + 1024
    seen = [e["record"]["index"] for e in first if e["kind"] == "evaluation"]
    while watch.pending():
        seen += [e["record"]["index"] for e in watch.poll() if e["kind"] == "evaluation"]
    assert seen == list(range(total))
    # The monitor counted them too, a chunk at a time.
    until(lambda: manager.get(search.id).evaluations_done == total)


def until(condition) -> None:
    """Wait for `condition()` to hold (pytest's timeout ends a wait that never does)."""
    while not condition():
        threading.Event().wait(0.02)


def test_a_finished_search_is_streamed_whole_and_then_its_final_state(manager):
    search = manager.submit(TABLE)
    total = 3_000
    write_log(search.run_dir, (record(i) for i in range(total)))
    manager.launcher.statuses[search.id] = ("succeeded", "")
    until(lambda: manager.get(search.id).state == "succeeded")
    events = list(manager.watch(search.id, skip=10))
    assert events[0] == {"kind": "state", "state": "succeeded", "error": ""}
    assert [e["record"]["index"] for e in events if e["kind"] == "evaluation"] == list(range(10, total))
    assert events[-1]["kind"] != "state"  # the first event told the state; nothing repeats it


def test_the_final_state_comes_after_every_line_of_the_log(manager):
    search = manager.submit(TABLE)
    watch = manager.watch(search.id)
    assert [e["kind"] for e in watch.poll()] == ["state"]
    write_log(search.run_dir, (record(i) for i in range(2_000)))
    manager.launcher.statuses[search.id] = ("succeeded", "")
    until(lambda: manager.get(search.id).state == "succeeded")
    events = []
    while not watch.done:
        events += watch.poll()
    assert [e["record"]["index"] for e in events if e["kind"] == "evaluation"] == list(range(2_000))
    assert events[-1] == {"kind": "state", "state": "succeeded", "error": ""}


def test_no_event_of_one_search_reaches_the_watcher_of_another(tmp_path):
    """Evaluation ids and times repeat across searches (e000000, ...): the messages built once for
    all watchers of a search are that search's alone."""
    srv = start(tmp_path / "state", launcher=FakeLauncher())
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            ours, theirs = c.submit(TABLE), c.submit(TABLE)
            for search, arch in ((ours, ARCHS[0]), (theirs, ARCHS[1])):
                write_log(search.run_dir, [record(0, arch)])
            for search, arch in ((ours, ARCHS[0]), (theirs, ARCHS[1])):
                stream = c.watch(search.id)
                event = next(e for e in stream if e.WhichOneof("event") == "evaluation")
                stream.close()
                assert event.search_id == search.id and event.evaluation.architecture.arch == arch
    finally:
        srv.stop(grace=None)


def test_watchers_reading_their_logs_leave_unary_calls_and_health_checks_their_threads(tmp_path, monkeypatch):
    """Every watcher's read blocks (a slow disk): GetSearch, ListSearches and health checks still answer."""
    from raynas.controller.service.manager import SearchWatch

    release, asked, all_asked = threading.Event(), [], threading.Event()

    def pending(self):
        # Called right before a read is handed to a thread: once per watcher, then never again.
        if self not in asked:
            asked.append(self)
            if len(asked) == 20:
                all_asked.set()
            return True
        return False

    def blocked_poll(self):
        release.wait()
        return []

    monkeypatch.setattr(SearchWatch, "pending", pending)
    monkeypatch.setattr(SearchWatch, "poll", blocked_poll)
    srv = start(tmp_path / "state", launcher=FakeLauncher())
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            search = c.submit(TABLE)
            stub = pb_grpc.SearchServiceStub(channel)
            streams = [stub.WatchSearch(pb.WatchSearchRequest(id=search.id), metadata=METADATA) for _ in range(20)]
            all_asked.wait()  # every read is stuck or queued behind the stuck ones
            assert c.get(search.id).state == pb.STATE_RUNNING
            assert [s.id for s in c.list().searches] == [search.id]
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            for stream in streams:
                stream.cancel()
    finally:
        release.set()
        channel.close()
        srv.stop(grace=None)


# -- quotas per client and a bound on a search's time ---------------------------------------------

ALICE, BOB = "a" * 40, "b" * 40


@pytest.fixture
def two_clients(tmp_path):
    """start(**options) -> (server, alice's client, bob's client) with a tokens file of both."""
    from raynas.controller.service.access import Tokens

    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\n")
    path.chmod(0o600)
    opened = []

    def run(**options):
        srv = start(tmp_path / "state", tokens=Tokens.load(path), launcher=FakeLauncher(), **options)
        alice, bob = SearchClient(f"127.0.0.1:{srv.port}", ALICE), SearchClient(f"127.0.0.1:{srv.port}", BOB)
        opened.append((srv, alice, bob))
        return srv, alice, bob

    yield run
    for srv, alice, bob in opened:
        alice.close(), bob.close()
        srv.stop(grace=None)


def test_one_client_cannot_take_every_job_slot(two_clients):
    _, alice, bob = two_clients(max_jobs=4, max_jobs_per_client=2)
    for _ in range(2):
        alice.submit(TABLE)
    with pytest.raises(RemoteError) as full:
        alice.submit(TABLE)
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 of" in str(full.value)
    assert [bob.submit(TABLE).owner for _ in range(2)] == ["bob", "bob"]
    assert code_of(lambda: bob.submit(TABLE)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_clients_share_of_a_limit_splits_it_evenly():
    from raynas.controller.service.access import Client, Tokens

    two = Tokens({ALICE: Client("alice"), BOB: Client("bob")})
    assert (two.share(4), two.share(3), two.share(1), Tokens.single(ALICE).share(4)) == (2, 2, 1, 4)


def test_one_clients_watchers_cannot_lock_another_out_of_its_own_search(two_clients):
    _, alice, bob = two_clients(max_watchers=4, max_watchers_per_client=2)
    ours, theirs = alice.submit(TABLE), bob.submit(TABLE)
    streams = [alice.watch(ours.id) for _ in range(2)]
    for stream in streams:
        next(stream)
    assert code_of(lambda: next(alice.watch(ours.id))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    bobs = bob.watch(theirs.id)
    assert next(bobs).state_change.state == pb.STATE_RUNNING
    for stream in (*streams, bobs):
        stream.close()


def test_a_search_is_stopped_at_the_services_time_limit(two_clients):
    srv, alice, _ = two_clients(max_search_time_s=0.2, cancel_grace_s=0.2)
    search = alice.submit(TABLE)  # its runner never reaches a safe point
    stopped = wait_state(alice, search.id, (pb.STATE_CANCELLED,))
    assert "time limit of 0.2 s" in stopped.error and "force-stopped" in stopped.error
    assert srv.manager.launcher.cancelled == [search.id] and srv.manager.launcher.killed == [search.id]
    with pytest.raises(RemoteError) as longer:
        alice.submit({**TABLE, "max_wall_time_s": 10})
    assert longer.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_wall_time_s" in str(longer.value)
    assert "--max-search-time" in str(longer.value)


# -- what a search starts, against what the cluster holds ------------------------------------------

GIB = 1 << 30
RANDOM_ON_RAY = {"space": "nb201", "evaluator": "table", "strategy": "random", "runtime": "ray"}
RL_ON_RAY = {"space": "nb201", "evaluator": "table", "strategy": "rl", "runtime": "ray"}


def test_the_footprint_counts_every_actor_each_execution_path_starts():
    from raynas.controller.runtime.capacity import footprint
    from raynas.controller.runtime.plan import resolve
    from raynas.controller.runtime.spec import SearchSpec

    def of(spec):
        return footprint(resolve(SearchSpec.from_dict(spec)))

    assert of({**TABLE, "workers": 64}).processes == 1  # runs inside its runner
    proposer = of({**RANDOM_ON_RAY, "workers": 8, "cpus_per_child": 0.5})
    assert (proposer.processes, proposer.workers, proposer.cpus) == (9, 8, 4.0)
    # K=3 replicas of m=2 children with their own 6 workers, S=4 shards, the recorder; no dispatcher.
    owned = of({**RL_ON_RAY, "controllers": 3, "children": 2, "ps_shards": 4, "workers": 10})
    assert (owned.processes, owned.workers, owned.cpus) == (1 + 6 + 3 + 4 + 1, 6, 6.0)
    shared = of({**RL_ON_RAY, "controllers": 3, "children": 2, "ps_shards": 4, "workers": 2})
    assert shared.processes == 1 + 2 + 3 + 4 + 1 + 1 and "a dispatcher" in shared.describe()
    tune = of({**RANDOM_ON_RAY, "scheduler": "asha", "workers": 3})
    assert (tune.processes, tune.workers) == (4, 3)


def test_a_search_that_needs_more_than_the_cluster_holds_is_refused_naming_the_capacity(serving):
    _, c, launcher = serving()
    launcher.cluster = [{"CPU": 2.0, "memory": 2.0 * GIB}]  # 8 actor processes of 256 MiB
    with pytest.raises(RemoteError) as processes:
        c.submit({**RANDOM_ON_RAY, "workers": 8, "cpus_per_child": 0})
    message = str(processes.value)
    assert processes.value.code == grpc.StatusCode.INVALID_ARGUMENT and "workers" in message
    assert "9 actor processes" in message and "at most 8" in message and "2 GiB" in message
    with pytest.raises(RemoteError) as cpus:
        c.submit({**RANDOM_ON_RAY, "workers": 3, "cpus_per_child": 1})
    assert cpus.value.code == grpc.StatusCode.INVALID_ARGUMENT and "3 CPUs" in str(cpus.value)
    assert "2 CPUs in all" in str(cpus.value)
    with pytest.raises(RemoteError) as gpus:
        c.submit({**RANDOM_ON_RAY, "workers": 1, "gpus_per_child": 1})
    assert gpus.value.code == grpc.StatusCode.INVALID_ARGUMENT and "gpus_per_child" in str(gpus.value)
    with pytest.raises(RemoteError) as scheme:
        c.submit({**RL_ON_RAY, "controllers": 2, "children": 2, "ps_shards": 2, "workers": 2, "cpus_per_child": 0.5})
    assert "2 controller replicas" in str(scheme.value) and "a dispatcher" in str(scheme.value)
    assert c.submit({**RANDOM_ON_RAY, "workers": 2, "cpus_per_child": 1}).state == pb.STATE_RUNNING


def test_searches_share_the_clusters_processes(serving):
    srv, c, launcher = serving()
    launcher.cluster = [{"CPU": 2.0, "memory": 2.0 * GIB}]
    first = c.submit({**RANDOM_ON_RAY, "workers": 4, "cpus_per_child": 0})  # 5 of 8
    with pytest.raises(RemoteError) as busy:
        c.submit({**RANDOM_ON_RAY, "workers": 3, "cpus_per_child": 0})
    assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "5 of the 8" in str(busy.value)
    launcher.statuses[first.id] = ("succeeded", "")
    wait_state(c, first.id, (pb.STATE_SUCCEEDED,))
    assert c.submit({**RANDOM_ON_RAY, "workers": 3, "cpus_per_child": 0}).state == pb.STATE_RUNNING


# -- what a restart, a damaged row and a hostile request leave behind ------------------------------

class ReattachingLauncher(FakeLauncher):
    """Runners that outlive the service (detached actors): found again after a restart."""

    def find(self, record):
        return record.id


def test_a_pending_force_stop_survives_a_restart(tmp_path):
    launcher = ReattachingLauncher()
    srv = start(tmp_path / "state", launcher=launcher, cancel_grace_s=3600)
    with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
        search = c.submit(TABLE)
        c.cancel(search.id)  # its runner never reaches a safe point
    srv.stop(grace=None)
    srv = start(tmp_path / "state", launcher=launcher, cancel_grace_s=0.1)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            stopped = wait_state(c, search.id, (pb.STATE_CANCELLED,))
        assert "force-stopped" in stopped.error and launcher.killed == [search.id]
    finally:
        srv.stop(grace=None)


def _damage(state_dir, search_id, column):
    import sqlite3

    with sqlite3.connect(Path(state_dir, "registry.sqlite")) as db:
        db.execute(f"UPDATE searches SET {column} = ? WHERE id = ?", ('{"torn": ', search_id))


def test_a_registry_row_with_damaged_json_fails_alone(tmp_path):
    launcher = ReattachingLauncher()
    srv = start(tmp_path / "state", launcher=launcher)
    with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
        running, finished, good = c.submit(TABLE), c.submit(TABLE), c.submit(TABLE)
        launcher.statuses[finished.id] = ("succeeded", "")
        wait_state(c, finished.id, (pb.STATE_SUCCEEDED,))
    srv.stop(grace=None)
    _damage(tmp_path / "state", running.id, "spec")
    _damage(tmp_path / "state", finished.id, "best")
    srv = start(tmp_path / "state", launcher=launcher)  # reattaching reads the damaged running row
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", TOKEN) as c:
            listed = {s.id: s for s in c.list().searches}
            assert set(listed) == {running.id, finished.id, good.id}
            for damaged, column in ((running.id, "spec"), (finished.id, "best")):
                search = c.get(damaged)
                assert search.state == pb.STATE_FAILED and f"its registry row is damaged ({column}" in search.error
            assert launcher.killed == [running.id]  # nothing follows it any more
            assert code_of(lambda: c.resume(running.id)) == grpc.StatusCode.FAILED_PRECONDITION
            assert c.get(good.id).state == pb.STATE_RUNNING
            c.delete(running.id)
    finally:
        srv.stop(grace=None)


def test_error_messages_do_not_echo_a_huge_request(serving):
    _, c, _ = serving()
    with pytest.raises(RemoteError) as refused:
        c.submit({**TABLE, "strategy": "\0" * 1_000_000})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "strategy" in str(refused.value)
    assert len(str(refused.value)) < 3_000 and "characters cut" in str(refused.value)


def test_an_existing_state_directory_is_made_private(tmp_path):
    import stat

    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    SearchManager(state, FakeLauncher()).close()
    assert {stat.S_IMODE(p.stat().st_mode) for p in (state, state / "runs")} == {0o700}


def test_a_tls_key_others_can_read_is_refused(tmp_path):
    from raynas.common import ConfigError
    from raynas.controller.api.servicer import TLS

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("private key")
    key.chmod(0o644)
    with pytest.raises(ConfigError) as refused:
        TLS(str(cert), str(key)).credentials()
    assert refused.value.field == "tls_key" and f"chmod 600 {key}" in str(refused.value)


def test_digits_with_a_data_path_is_refused_at_submit(serving, tmp_path):
    _, c, _ = serving(data_roots=(str(tmp_path),))
    with pytest.raises(RemoteError) as refused:
        c.submit({**TABLE, "evaluator": "train", "space": "nb201", "dataset": "digits", "data_path": str(tmp_path)})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "data_path" in str(refused.value)
