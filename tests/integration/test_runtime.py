"""The distributed runtime on one shared local Ray: the NAS-RL scheme end to
end, and the faults it must survive without losing or repeating work."""

import json

import pytest
import torch
from events import scalars

from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.spec import SearchSpec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def table_spec(**changes):
    base = dict(space="nb201", strategy="rl", evaluator="table", evaluations=32, controllers=2, children=4,
                ps_shards=2, workers=2, cpus_per_child=0.5, checkpoint_every=1, seed=1)
    base.update(changes)
    return SearchSpec(**base)


def records(out):
    # The recorder may be appending while a test reads: its last line can be half written.
    return RunDirectory(out).evaluations()


def assert_exactly_once(out, budget):
    ids = [r["id"] for r in records(out)]
    assert len(ids) == budget
    assert len(set(ids)) == budget
    assert sorted(ids) == [f"e{i:06d}" for i in range(budget)]


def test_rl_scheme_runs_the_budget_with_sharded_updates(tmp_path):
    out = tmp_path / "run"
    result = SearchJob(table_spec(replica_batch="barrier"), out, progress=False).run()
    assert result["state"] == "done"
    assert_exactly_once(out, 32)
    assert result["scheme"]["controllers"] == 2 and result["scheme"]["ps_shards"] == 2
    # Every barrier step pushes one update to every shard: 32 evaluations / m=4 = 8 steps.
    assert [s["version"] for s in result["parameter_servers"]] == [8, 8]
    assert sum(r["cycles"] for r in result["replicas"].values()) == 8
    assert result["staleness"]["pushes"] == 8
    assert result["gradients"]["gradients"] == 8 and result["gradients"]["lost"] == 0
    # Eight children in flight on two workers: one dispatcher queues them, never two on one worker.
    assert result["scheme"]["dispatch"] == "shared"
    assert {r["replica"] for r in records(out)} == {"controller-0", "controller-1"}
    assert result["best"]["reward"] == max(r["reward"] for r in records(out))
    # The recorder actor appends the evaluations, and writes their TensorBoard view beside them.
    board = scalars(out)
    assert sorted(step for step, _ in board["evaluation/reward"]) == list(range(32))
    # And each gradient's baseline and entropy, numbered as the gradients are, from the replica that took it.
    updates = [json.loads(line) for line in (out / "strategy.jsonl").read_text().splitlines()]
    assert [u["iteration"] for u in updates] == list(range(1, 9))
    assert {u["replica"] for u in updates} == {"controller-0", "controller-1"}
    assert [step for step, _ in board["strategy/baseline"]] == [step for step, _ in board["strategy/entropy"]] \
        == list(range(1, 9))


def test_other_strategies_dispatch_to_the_worker_pool(tmp_path):
    out = tmp_path / "run"
    result = SearchJob(table_spec(strategy="evolution", evaluations=20), out, progress=False).run()
    assert result["state"] == "done"
    assert_exactly_once(out, 20)


@pytest.mark.parametrize("strategy", ["random", "rl"])
def test_killed_worker_mid_evaluation_loses_and_repeats_nothing(tmp_path, ray_cluster, strategy):
    out = tmp_path / "run"
    # Each lookup sleeps 0.3 x its simulated time / 120 s, so kills land mid-evaluation.
    spec = table_spec(strategy=strategy, evaluations=16, evaluator_options={"sleep": 0.3 / 120})
    killed = []

    def kill(record):
        if len(killed) < 2 and len(records(out)) >= (4, 10)[len(killed)]:
            ray_cluster.kill(ray_cluster.get_actor("worker-0", namespace=job.namespace), no_restart=False)
            killed.append(record["index"])

    job = SearchJob(spec, out, progress=False, on_record=kill)
    result = job.run()
    assert killed and result["state"] == "done"
    assert_exactly_once(out, 16)
    assert result["failed"] == 0


def test_killed_parameter_shard_comes_back_from_its_checkpoint(tmp_path, ray_cluster):
    out = tmp_path / "run"
    spec = table_spec(evaluations=32, evaluator_options={"sleep": 0.1 / 120})
    killed = []

    def kill(record):
        if not killed and len(records(out)) >= 12:
            ray_cluster.kill(ray_cluster.get_actor("ps-0", namespace=job.namespace), no_restart=False)
            killed.append(True)

    job = SearchJob(spec, out, progress=False, on_record=kill)
    result = job.run()
    assert killed and result["state"] == "done"
    assert_exactly_once(out, 32)
    # Every update in its log, the restarted shard lost nothing.
    assert [s["version"] for s in result["parameter_servers"]] == [result["gradients"]["gradients"]] * 2


@pytest.mark.parametrize("strategy", ["rl", "evolution"])
def test_stopped_job_resumes_without_repeating_work(tmp_path, strategy):
    out = tmp_path / "run"
    spec = table_spec(strategy=strategy, evaluations=40, evaluator_options={"sleep": 0.2 / 120})

    def stop(record):
        if len(records(out)) >= 12:
            job.stop()

    job = SearchJob(spec, out, progress=False, on_record=stop)
    first = job.run()
    assert first["state"] == "stopped"
    done_before = len(records(out))
    assert 12 <= done_before < 40
    if strategy == "rl":
        version = torch.load(out / "checkpoint" / "ps-0.pt", weights_only=False)["version"]
        assert version > 0
    resumed = SearchJob.resume_from(out, progress=False).run()
    assert resumed["state"] == "done"
    assert_exactly_once(out, 40)
    if strategy == "rl":
        # The policy continued from the checkpoint: one update per replica step of the remaining work.
        assert resumed["parameter_servers"][0]["version"] >= version + (40 - done_before) // 4


def test_a_relative_run_directory_reaches_every_actor(tmp_path, monkeypatch):
    """Actors resolved a relative --out against their own working directory: every shard died in its
    constructor and the job failed after minutes."""
    monkeypatch.chdir(tmp_path)  # the driver's working directory is not the cluster's
    result = SearchJob(table_spec(evaluations=8), "run", progress=False).run()
    assert result["state"] == "done" and result["run_dir"] == str(tmp_path / "run")
    assert_exactly_once(tmp_path / "run", 8)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint").glob("ps-*.pt")) == ["ps-0.pt", "ps-1.pt"]


def test_an_embedded_cluster_refuses_workers_it_cannot_hold(tmp_path, monkeypatch):
    """4 workers of 1 CPU on a cluster of 2 CPUs that nothing can grow (one the driver started
    itself): two workers never start, their replica holds its claims for ever and the search,
    and every resume of it, stalls after the other replica's children (reproduced: 14 of 16
    recorded, then silence). Refused before any actor starts, naming the field and the fix."""
    from raynas.common import ConfigError
    from raynas.controller.cluster import launch

    # The shared test cluster (2 CPUs) stands in for one this driver started.
    monkeypatch.setattr(launch, "connect", lambda address, quiet=False: True)
    monkeypatch.setattr(launch, "shutdown", lambda: None)
    spec = table_spec(strategy="ppo", evaluations=16, children=2, workers=4, cpus_per_child=1.0)
    with pytest.raises(ConfigError) as refused:
        SearchJob(spec, tmp_path / "run", progress=False).run()
    assert refused.value.field == "workers"
    assert "need 4 CPUs" in refused.value.problem and "2 CPUs" in refused.value.problem
    assert "at most 2 workers" in str(refused.value) and "cpus_per_child 0.5 for 4 workers" in str(refused.value)
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()
