"""The ledger (budget and exactly-once log) and resuming a stopped search in one process."""

import json
import time

import pytest

from raynas.common import DataError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.ledger import Claim, Ledger, evaluation_id
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
    # Handed out again: counted with the worker pools' retries in result.json.
    assert ledger.scheme_stats()["resent"] == 2


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


def test_the_baseline_is_shared_by_every_replica():
    """Each replica's advantage is measured against every replica's rewards (Zoph & Le's K
    replicas learn one policy); with m=1 a replica's first gradient is no longer zero."""
    ledger = Ledger(None, 8, seed=0, baseline_decay=0.5)
    first = ledger.start("controller-0", 1)
    assert first.baseline is None
    task = first.claims[0].task("a")
    ledger.record_update([(task, EvalResult("a", 0.8), {})], "controller-0", 1, cycle=0, synced=-1, state={})
    second = ledger.start("controller-1", 1)
    assert second.baseline == 0.8  # another replica's reward, before controller-1 saw any of its own
    receipt = ledger.record_update([(second.claims[0].task("b"), EvalResult("b", 0.4), {})], "controller-1", 1,
                                   cycle=0, synced=-1, state={})
    assert receipt.baseline == pytest.approx(0.6) and receipt.number == 1 and receipt.staleness == 1


def test_a_restarted_ledger_rebuilds_numbers_baseline_and_claims(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    checkpoints = tmp_path / "run" / "checkpoint"
    checkpoints.mkdir()
    ledger = Ledger(run, 8, seed=0, baseline_decay=0.5, checkpoints=checkpoints)
    claims = ledger.start("controller-0", 2).claims
    ledger.record_update([(c.task("a"), EvalResult("a", 1.0), {}) for c in claims], "controller-0", 2, 0, -1,
                         {"pending": {"grads": {}}})
    held = ledger.start("controller-1", 2).claims + [Claim("e000002", 2, 0)]  # in flight when the ledger dies
    back = Ledger(run, 8, seed=0, baseline_decay=0.5, checkpoints=checkpoints)
    assert back.updates == 1 and back.baseline.value == 1.0
    assert {c.id for c in held} <= set(back.claims)  # not handed out again while their holder lives
    assert [c.id for c in back.claim("controller-2", 2)] == ["e000006", "e000007"]
    # A retried record (the caller never got the answer) is the same update, not a new one.
    again = back.record_update([(c.task("a"), EvalResult("a", 1.0), {}) for c in claims], "controller-0", 2, 0, -1,
                               {"pending": {"grads": {}}})
    assert again.number == 0 and back.updates == 1 and len(run.evaluations()) == 2


def test_a_torn_last_line_is_cut_before_anything_is_appended(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, 4, seed=0)
    for claim in ledger.claim("p", 2):
        ledger.record(claim.task("a"), EvalResult("a", 0.5))
    with open(tmp_path / "run" / "evaluations.jsonl", "a") as f:
        f.write('{"id": "e000002", "rew')  # the process died mid-append
    back = Ledger(run, 4, seed=0)
    assert back.torn_bytes > 0 and back.done == 2
    for claim in back.claim("p", 4):
        back.record(claim.task("b"), EvalResult("b", 0.5))
    assert [r["id"] for r in run.evaluations()] == ["e000000", "e000001", "e000002", "e000003"]


def test_a_damaged_line_inside_the_log_is_an_error_naming_it(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, 4, seed=0)
    for claim in ledger.claim("p", 3):
        ledger.record(claim.task("a"), EvalResult("a", 0.5))
    path = tmp_path / "run" / "evaluations.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2 is damaged"):
        Ledger(run, 4, seed=0)
