"""The ledger (budget and exactly-once log) and resuming a stopped search in one process."""

import json
import time

import pytest

from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.ledger import Ledger, evaluation_id
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.spec import SearchSpec
from raynas.workers.evaluation import EvalResult


def result(reward=0.5):
    return EvalResult(arch="a", reward=reward)


def test_claims_cover_the_budget_once_and_records_are_deduplicated(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, budget=5, seed=0)
    a = ledger.claim("controller-0", 3)
    b = ledger.claim("controller-1", 3)
    assert [c.id for c in a + b] == [evaluation_id(i) for i in range(5)]
    assert ledger.claim("controller-0", 1) == []
    task = a[0].task("arch")
    assert ledger.record(task, result()) is True
    assert ledger.record(task, result()) is False
    assert len(run.evaluations()) == 1


def test_released_claims_are_handed_out_again(tmp_path):
    ledger = Ledger(None, budget=4, seed=0)
    first = ledger.claim("controller-0", 2)
    ledger.claim("controller-1", 2)
    ledger.release("controller-0")
    assert [c.id for c in ledger.claim("controller-2", 4)] == [c.id for c in first]


def test_a_reopened_log_skips_what_is_recorded(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, budget=3, seed=7)
    claims = ledger.claim("p", 3)
    ledger.record(claims[1].task("x"), result())
    again = Ledger(RunDirectory(tmp_path / "run"), budget=3, seed=7)
    assert [c.id for c in again.claim("p", 3)] == [claims[0].id, claims[2].id]
    # Seeds depend only on the search seed and the index.
    assert [c.seed for c in again.claim("q", 3)] == []
    assert Ledger(None, 3, 7).claim("p", 3)[2].seed == claims[2].seed


def test_deadline_and_stop_end_the_claims():
    assert Ledger(None, budget=10, seed=0, deadline=time.time() - 1).claim("p", 1) == []
    ledger = Ledger(None, budget=10, seed=0)
    ledger.stop()
    assert ledger.claim("p", 1) == [] and ledger.finished()


@pytest.mark.parametrize("strategy", ["evolution", "rl", "random"])
def test_resumed_local_search_equals_an_uninterrupted_one(tmp_path, strategy):
    spec = SearchSpec(space="nb201", strategy=strategy, evaluator="table", evaluations=30, seed=4, runtime="local",
                      strategy_options={"batch_size": 4} if strategy == "rl" else {})
    whole = SearchJob(spec, tmp_path / "whole", progress=False).run()
    assert whole["state"] == "done"

    def stop_at_11(record):
        if record["index"] == 10:
            job.stop()

    job = SearchJob(spec, tmp_path / "cut", progress=False, on_record=stop_at_11)
    assert job.run()["state"] == "stopped"
    resumed = SearchJob.resume_from(tmp_path / "cut", progress=False).run()
    assert resumed["state"] == "done"

    def archs(name):
        return [json.loads(line)["arch"] for line in (tmp_path / name / "evaluations.jsonl").open()]

    assert len(archs("cut")) == 30 and archs("cut") == archs("whole")


def test_time_budget_ends_a_search(tmp_path):
    spec = SearchSpec(space="nb201", strategy="random", evaluator="table", evaluations=10**6, runtime="local",
                      max_wall_time_s=0.5)
    result = SearchJob(spec, tmp_path / "run", progress=False).run()
    assert result["state"] == "done" and 0 < result["evaluations"] < 10**6
