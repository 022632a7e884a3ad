"""The ledger (budget and exactly-once log) and resuming a stopped search in one process."""

import json
import time

import pytest
import torch

from raynas.common import DataError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.ledger import Ledger, evaluation_id
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies.reinforce import PolicyCore
from raynas.search_spaces import get_space
from raynas.workers.evaluation import EvalResult


def result(reward=0.5):
    return EvalResult(arch="a", reward=reward)


def scheme_ledger(run, budget=6):
    return Ledger(run, budget, seed=0, baseline_decay=0.5, checkpoints=run.path / "checkpoint")


def test_claims_cover_the_budget_once_and_records_are_deduplicated(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, budget=5, seed=0)
    a = ledger.claim("controller-0", 3)
    b = ledger.claim("controller-1", 3)
    assert [c.id for c in a + b] == [evaluation_id(i) for i in range(5)]
    assert ledger.claim("controller-0", 1, holding=[c.id for c in a]) == []
    task = a[0].task("arch")
    assert ledger.record(task, result()) is True
    assert ledger.record(task, result()) is False
    assert len(run.evaluations()) == 1


def test_a_restarted_replica_gets_back_what_its_previous_life_held(tmp_path):
    ledger = Ledger(None, budget=4, seed=0, baseline_decay=0.5)
    first = ledger.start("controller-0", 2).claims
    ledger.start("controller-1", 2)
    again = ledger.start("controller-0", 2)  # Ray restarted it: its children died with it
    assert [c.id for c in again.claims] == [c.id for c in first] and again.cycle == 0
    # Handed out again: counted with the worker pools' retries in result.json.
    assert ledger.scheme_stats()["resent"] == 2


def test_a_reopened_log_skips_what_is_recorded(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    ledger = Ledger(run, budget=3, seed=7)
    claims = ledger.claim("p", 3)
    ledger.record(claims[1].task("x"), result())
    again = Ledger(RunDirectory(tmp_path / "run"), budget=3, seed=7)
    assert [c.id for c in again.claim("p", 3)] == [claims[0].id, claims[2].id]
    assert again.claim("q", 3) == []
    # Seeds depend only on the search seed and the index.
    assert Ledger(None, 3, 7).claim("p", 3)[2].seed == claims[2].seed


def test_deadline_and_stop_end_the_claims():
    assert Ledger(None, budget=10, seed=0, deadline=time.time() - 1).claim("p", 1) == []
    ledger = Ledger(None, budget=10, seed=0)
    held = ledger.claim("p", 2)
    ledger.stop()
    # What the claimant never got (the second claim's answer was lost) is given back, what it holds stays its.
    assert ledger.claim("p", 1, holding=[held[0].id]) == [] and list(ledger.claims) == [held[0].id]


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
    ledger.record_update([(task, EvalResult("a", 0.8), {})], "controller-0", 0, [task.id], -1, {})
    second = ledger.start("controller-1", 1)
    assert second.baseline == 0.8  # another replica's reward, before controller-1 saw any of its own
    task = second.claims[0].task("b")
    receipt = ledger.record_update([(task, EvalResult("b", 0.4), {})], "controller-1", 0, [task.id], -1, {})
    assert receipt.baseline == pytest.approx(0.6) and receipt.number == 1 and receipt.staleness == 1


def test_a_restarted_ledger_rebuilds_numbers_baseline_and_claims(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    (run.path / "checkpoint").mkdir()
    ledger = scheme_ledger(run, 8)
    claims = ledger.start("controller-0", 2).claims
    entries = [(c.task("a"), EvalResult("a", 1.0), {}) for c in claims]
    ledger.record_update(entries, "controller-0", 0, [c.id for c in claims], -1, {"pending": {"grads": {}}})
    held = ledger.start("controller-1", 2).claims + ledger.claim("controller-0", 1)  # in flight when the ledger dies
    back = scheme_ledger(run, 8)
    assert back.updates == 1 and back.baseline.value == 1.0
    assert {c.id for c in held} <= set(back.claims)  # not handed out again while their holders live
    assert [c.id for c in back.claim("controller-2", 2)] == ["e000005", "e000006"]
    # A retried record (the caller never got the answer) is the same update, not a new one.
    again = back.record_update(entries, "controller-0", 0, [c.id for c in claims], -1, {"pending": {"grads": {}}})
    assert again.number == 0 and back.updates == 1 and len(run.evaluations()) == 2
    assert run.records("gradients.jsonl") == [{"update": 0, "replica": "controller-0", "cycle": 0,
                                               "ids": ["e000000", "e000001"], "synced": -1}]


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


def test_a_call_retried_after_the_recorder_restarted_hands_out_the_same_evaluations(tmp_path):
    """Ray retries a replica's call once the restarted recorder is back; a retry that handed out
    new evaluations left the first ones claimed by a replica that never got them (22 of 24
    recorded, the run incomplete)."""
    run = RunDirectory.create(tmp_path / "run", {})
    (run.path / "checkpoint").mkdir()
    ledger = scheme_ledger(run)
    start = ledger.start("controller-0", 2)
    entries = [(c.task("a"), EvalResult("a", 0.5), {}) for c in start.claims]
    ids = [c.id for c in start.claims]
    first = ledger.record_update(entries, "controller-0", 0, ids, -1, {"pending": None}, 2)
    # The recorder dies after answering; the answer never reaches the replica.
    again = scheme_ledger(run).record_update(entries, "controller-0", 0, ids, -1, {"pending": None}, 2)
    assert [c.id for c in again.claims] == [c.id for c in first.claims]
    # A rolling replica's claim for a free worker, beside the one it holds.
    held = scheme_ledger(run).claim("controller-1", 1)
    claims = scheme_ledger(run).claim("controller-1", 2, holding=[c.id for c in held])
    again = scheme_ledger(run).claim("controller-1", 2, holding=[c.id for c in held])
    assert [c.id for c in again] == [c.id for c in claims] and not {c.id for c in held} & {c.id for c in again}


def test_a_replica_state_kept_by_torch_before_states_were_pickled_is_read_back(tmp_path):
    """Runs begun before the recorder dropped torch keep `controller-k.pt`: resuming one continues
    the replica from it (its sampling RNG as a tensor)."""
    run = RunDirectory.create(tmp_path / "run", {})
    (run.path / "checkpoint").mkdir()
    generator = torch.Generator().manual_seed(3)
    torch.save({"core": {"generator": generator.get_state()}, "cycle": 4, "synced": 2, "pending": None},
               run.path / "checkpoint" / "controller-0.pt")
    start = scheme_ledger(run).start("controller-0", 1)
    assert start.state["cycle"] == 4 and start.cycle == 5
    core = PolicyCore(get_space("nb201"), seed=0)
    core.load_state_dict(start.state["core"])
    assert torch.equal(core.generator.get_state(), generator.get_state())


def test_a_receipt_carries_no_replica_state(tmp_path):
    """The recorder keeps the replica's checkpoint; sending it back (gradient included) in every
    receipt cost a copy of the gradient per batch that the replica never read."""
    ledger = Ledger(None, 4, seed=0, baseline_decay=0.5)
    claims = ledger.start("controller-0", 2).claims
    receipt = ledger.record_update([(c.task("a"), EvalResult("a", 0.5), {}) for c in claims], "controller-0", 0,
                                   [c.id for c in claims], -1, {"pending": {"grads": {"w": torch.ones(3)}}}, 2)
    assert "state" not in vars(receipt)


def test_a_proposer_with_several_children_in_flight_claims_each_evaluation_once():
    from raynas.controller.runtime.loop import run_loop
    from raynas.controller.strategies import get_strategy
    from raynas.search_spaces import get_space
    from raynas.workers.evaluation import get_evaluator
    from raynas.workers.execution import InProcessExecutor

    space = get_space("nb201")
    ledger = Ledger(None, 10, seed=0)
    executor = InProcessExecutor(get_evaluator("table", space), capacity=3)
    run_loop(get_strategy("random", space, seed=0), executor, ledger)
    assert [r["id"] for r in ledger.records] == [evaluation_id(i) for i in range(10)]
