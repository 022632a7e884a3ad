"""Zoph & Le's scheme under faults, on one shared local Ray: each replica on its own workers
or one queue that never double-books a worker; a killed shard, replica or recorder costing
time, never the job or the shards' agreement; and the chaos suite, killing them at random
moments (the driver too), round after round, checking the invariants after each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rayjobs import submit

from raynas.common import DataError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.spec import SearchSpec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def scheme_spec(**changes) -> SearchSpec:
    # Each lookup sleeps 0.1 x its simulated time / 120 s: children take about 0.1 s.
    base = dict(space="nb201", strategy="rl", evaluator="table", evaluations=48, controllers=2, children=2,
                ps_shards=2, workers=4, cpus_per_child=0.25, seed=3, evaluator_options={"sleep": 0.1 / 120})
    return SearchSpec(**{**base, **changes})


def records(out: Path) -> list[dict]:
    # The recorder may be appending while a test reads: its last line can be half written.
    return RunDirectory(out).evaluations()


def check_invariants(out: Path, budget: int) -> dict:
    """The log holds the budget exactly once; every shard is at the same version; the gradients
    applied are the gradients recorded minus those counted lost."""
    ids = [r["id"] for r in records(out)]
    assert sorted(ids) == [f"e{i:06d}" for i in range(budget)], "the log does not hold the budget exactly once"
    result = json.loads((out / "result.json").read_text())
    assert result["state"] == "done"
    versions = [torch.load(p, weights_only=True)["version"] for p in sorted((out / "checkpoint").glob("ps-*.pt"))]
    assert len(set(versions)) == 1, f"shards disagree: {versions}"
    gradients = RunDirectory(out).records("gradients.jsonl")
    assert [g["update"] for g in gradients] == list(range(len(gradients)))
    lost = json.loads((out / "checkpoint" / "lost_gradients.json").read_text()) \
        if (out / "checkpoint" / "lost_gradients.json").exists() else []
    assert versions[0] == len(gradients) - len(lost)
    return result


def kill_when(job_holder: dict, plan: list[tuple[int, str]], ray_cluster):
    """An on_record hook that kills actor `name` once the log holds `count` records."""
    done: list[str] = []
    fired: set[int] = set()

    def hook(record):
        job = job_holder["job"]
        for i, (count, name) in enumerate(plan):
            if i not in fired and len(records(job.out)) >= count:
                fired.add(i)
                done.append(name)
                ray_cluster.kill(ray_cluster.get_actor(name, namespace=job.namespace), no_restart=False)

    return hook, done


def run_with_kills(tmp_path: Path, spec: SearchSpec, plan, ray_cluster) -> tuple[dict, list[str]]:
    holder: dict = {}
    hook, done = kill_when(holder, plan, ray_cluster)
    holder["job"] = job = SearchJob(spec, tmp_path / "run", progress=False, on_record=hook)
    return job.run(), done


@pytest.mark.parametrize("batching", ["barrier", "rolling"])
def test_each_replica_sends_its_children_to_its_own_workers(tmp_path, batching):
    out = tmp_path / "run"
    result = SearchJob(scheme_spec(evaluations=24, replica_batch=batching), out, progress=False).run()
    assert result["scheme"]["dispatch"] == "dedicated" and result["scheme"]["replica_batch"] == batching
    check_invariants(out, 24)
    used = {}
    for r in records(out):
        used.setdefault(r["replica"], set()).add(r["metrics"]["worker"])
    assert used == {"controller-0": {"worker-0", "worker-1"}, "controller-1": {"worker-2", "worker-3"}}


def test_fewer_workers_are_shared_and_never_run_two_children_at_once(tmp_path):
    out = tmp_path / "run"
    result = SearchJob(scheme_spec(evaluations=24, workers=2, children=3), out, progress=False).run()
    assert result["scheme"]["dispatch"] == "shared"
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for r in records(out):
        m = r["metrics"]
        by_worker.setdefault(m["worker"], []).append((m["started_at"], m["started_at"] + m["wall_time_s"]))
    assert set(by_worker) == {"worker-0", "worker-1"}
    for spans in by_worker.values():
        spans.sort()
        assert all(end <= nxt_start + 1e-3 for (_, end), (nxt_start, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("victim", ["ps-0", "controller-1", "recorder"])
def test_a_killed_actor_costs_time_never_the_job_or_the_shards_agreement(tmp_path, ray_cluster, victim):
    # The default checkpoint_every (10): a shard still loses nothing it acknowledged.
    result, killed = run_with_kills(tmp_path, scheme_spec(), [(10, victim)], ray_cluster)
    assert killed == [victim]
    check_invariants(tmp_path / "run", 48)
    assert result["gradients"]["lost"] == 0


def test_a_recorder_and_a_replica_killed_together_lose_and_repeat_nothing(tmp_path, ray_cluster):
    """Both die at once, three times (a replica mid-record with its recorder): Ray retries the replica's
    call on the restarted recorder, and the replica comes back on a cycle the logs never held. Before,
    the retry's new claims and a reused cycle left evaluations unrecorded (22 of 24) and shards a
    version ahead of the log."""
    plan = [(count, name) for count in (8, 20, 32) for name in ("recorder", f"controller-{count % 2}")]
    result, killed = run_with_kills(tmp_path, scheme_spec(), plan, ray_cluster)
    assert len(killed) == len(plan)
    check_invariants(tmp_path / "run", 48)


def test_a_second_driver_on_the_run_directory_is_refused(tmp_path):
    """`nas search --resume DIR` with its own Ray while the job runs: both used to end "done", with
    1,348 log lines for a budget of 800 and shards at versions 408 and 402 for 400 gradients."""
    out = tmp_path / "run"
    second: list[subprocess.CompletedProcess] = []

    def resume_beside(record):
        if not second and len(records(out)) >= 6:
            second.append(subprocess.run([sys.executable, "-m", "raynas.controller.cli", "search", "--resume",
                                          str(out), "--quiet"], capture_output=True, text=True, timeout=300,
                                         env={**os.environ, "RAY_ADDRESS": ""}))

    result = SearchJob(scheme_spec(), out, progress=False, on_record=resume_beside).run()
    assert second and second[0].returncode == 2, second
    assert f"resume: {out} is in use by pid {os.getpid()} on " in second[0].stderr
    assert result["state"] == "done"
    check_invariants(out, 48)


def test_a_damaged_line_in_the_log_is_named_not_an_actor_lost(tmp_path):
    out = tmp_path / "run"
    SearchJob(scheme_spec(evaluations=8), out, progress=False).run()
    lines = (out / "evaluations.jsonl").read_text().splitlines()
    lines[1] = lines[1][:25]
    (out / "evaluations.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="evaluations.jsonl line 2 is damaged"):
        SearchJob.resume_from(out, progress=False).run()


def test_chaos_rounds_keep_every_invariant(tmp_path, ray_cluster):
    """K=4, m=4, S=4 (4 workers behind the dispatcher: fewer processes on a small machine): in
    each round a worker, a replica, a shard and the recorder die at random moments (seeded);
    after each round the invariants hold. docs/benchmarks.md lists the rounds."""
    victims = ["worker-{}", "controller-{}", "ps-{}", "recorder"]
    budget = 64
    for round_ in range(3):
        rng = np.random.default_rng(round_)
        counts = sorted(rng.choice(np.arange(4, budget - 8), size=len(victims), replace=False).tolist())
        plan = [(int(c), str(v).format(int(rng.integers(4)))) for c, v in zip(counts, rng.permutation(victims))]
        spec = scheme_spec(evaluations=budget, controllers=4, children=4, ps_shards=4, workers=4,
                           cpus_per_child=0.25, seed=round_)
        out = tmp_path / f"round{round_}"
        out.mkdir()
        result, killed = run_with_kills(out, spec, plan, ray_cluster)
        assert len(killed) == len(plan), f"round {round_}: only {killed} of {plan} were killed"
        check_invariants(out / "run", budget)
        print(f"chaos round {round_}: killed {plan} (records when killed, actor); invariants hold")


def _cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raynas.controller.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(records(out)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the search made no progress"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_driver_killed_with_its_embedded_ray_resumes_to_a_consistent_end(tmp_path):
    """kill -9 of `nas search` and every process of its embedded Ray, mid-search; `--resume` ends it."""
    out = tmp_path / "run"
    args = ["search", "--evaluator", "table", "--table-option", f"sleep={0.2 / 120}", "--evaluations", "40",
            "--controllers", "2", "--children", "2", "--ps-shards", "2", "--workers", "4", "--cpus-per-child",
            "0.25", "--out", str(out), "--quiet"]
    driver = _cli(*args, start_new_session=True, env={**os.environ, "RAY_ADDRESS": ""})
    _wait_for_records(out, 12, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = _cli("search", "--resume", str(out), "--quiet", start_new_session=True)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    check_invariants(out, 40)


@pytest.mark.parametrize("group", [False, True], ids=["driver", "process-group"])
def test_sigterm_stops_a_search_on_ray_like_ctrl_c(tmp_path, group):
    """ray.init replaced the SIGTERM handler: the search aborted (exit 134, no result.json, no hint).
    SIGTERM to the whole process group (systemd's default, `timeout`) takes the embedded Ray down
    with the driver: it waited for replicas that would never answer, as after Ctrl-C, until Ray
    killed it a minute later (no result.json, no hint)."""
    out = tmp_path / "run"
    # Ray's processes take seconds to die (more when the cores are busy), and children go on being
    # recorded meanwhile: longer ones, so that the budget is not spent before they are gone.
    budget, sleep = (160, 0.5 / 120) if group else (60, 0.2 / 120)
    search = _cli("search", "--evaluator", "table", "--table-option", f"sleep={sleep}", "--evaluations",
                  str(budget), "--controllers", "2", "--children", "2", "--ps-shards", "2", "--workers", "4",
                  "--cpus-per-child", "0.25", "--out", str(out), start_new_session=True,
                  env={**os.environ, "RAY_ADDRESS": ""})
    _wait_for_records(out, 8, search)
    if group:
        os.killpg(search.pid, signal.SIGTERM)
    else:
        search.send_signal(signal.SIGTERM)
    said, err = search.communicate(timeout=120)
    assert search.returncode == 130 and f"nas search --resume {out}" in err, err
    # Actors killed under calls that Ray would retry made Ray print "(raylet) Task ReplicaHost.run
    # failed ... so the task will be retried" at the user, about a stop that was asked for.
    assert "will be retried" not in said + err, said + err
    assert json.loads((out / "result.json").read_text())["state"] == "stopped"
    assert SearchJob.resume_from(out, progress=False).run()["state"] == "done"
    check_invariants(out, budget)


def test_ray_job_stop_stops_a_search_that_resumes(ray_context, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(f"http://{ray_context.dashboard_url}")
    out = tmp_path / "run"
    entrypoint = (f"nas search --address auto --evaluator table --table-option sleep={0.2 / 120} --evaluations 60 "
                  "--controllers 2 --children 2 --ps-shards 2 --workers 4 --cpus-per-child 0.25 --quiet "
                  f"--out {out}")
    job = submit(client, entrypoint)
    deadline = time.monotonic() + 240
    while len(records(out)) < 8:
        status = client.get_job_status(job)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING) and time.monotonic() < deadline, \
            client.get_job_logs(job)
        time.sleep(0.2)
    client.stop_job(job)
    while client.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED):
        time.sleep(0.2)
    assert json.loads((out / "result.json").read_text())["state"] == "stopped", client.get_job_logs(job)
    assert f"nas search --resume {out}" in client.get_job_logs(job)
    assert SearchJob.resume_from(out, progress=False).run()["state"] == "done"
    check_invariants(out, 60)


def test_sigterm_stops_an_asha_search_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    search = _cli("search", "--space", "nb201", "--strategy", "random", "--evaluator", "table", "--scheduler", "asha",
                  "--table-option", f"sleep={0.5 / 120}", "--evaluations", "200", "--workers", "2",
                  "--cpus-per-child", "0.5", "--out", str(out), start_new_session=True,
                  env={**os.environ, "RAY_ADDRESS": ""})
    _wait_for_records(out, 4, search)
    search.send_signal(signal.SIGTERM)
    _, err = search.communicate(timeout=120)
    assert search.returncode == 130 and f"nas search --resume {out}" in err, err
    assert json.loads((out / "result.json").read_text())["state"] == "stopped"


def test_sigterm_stops_a_search_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    search = _cli("search", "--runtime", "local", "--evaluator", "table", "--strategy", "evolution",
                  "--table-option", f"sleep={0.2 / 120}", "--evaluations", "200", "--out", str(out))
    _wait_for_records(out, 5, search)
    search.send_signal(signal.SIGTERM)
    _, err = search.communicate(timeout=60)
    assert search.returncode == 130 and f"nas search --resume {out}" in err
    assert json.loads((out / "result.json").read_text())["state"] == "stopped"


def test_an_embedded_search_never_joins_a_cluster_it_was_not_given(tmp_path):
    """RAY_ADDRESS (or a dead `ray start` cluster on this machine) must not capture a search
    that was given no --address: it starts its own."""
    out = tmp_path / "run"
    search = _cli("search", "--evaluator", "table", "--evaluations", "4", "--workers", "1", "--strategy", "random",
                  "--out", str(out), "--quiet", env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    _, err = search.communicate(timeout=180)
    assert search.returncode == 0, err
    assert len(records(out)) == 4

