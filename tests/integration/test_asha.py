"""`--scheduler asha`: the strategy proposes through Ray Tune, Tune's ASHAScheduler stops
children at the rungs its rule gives, the run directory holds every trial once, and a stopped
search resumes (Tune's own restore) into the same search as one never stopped."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from events import scalars

from raynas.controller.api.servicer import event_to_message
from raynas.controller.cli import main
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import RUNG_LOG, RunDirectory
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service.manager import SearchManager, ThreadLauncher

pytestmark = pytest.mark.usefixtures("ray_cluster")


def replay_asha(events: list[dict], eta: float) -> list[str]:
    """ASHA's rule (Li et al. 2020, as Ray Tune implements it), written out: a child arriving at a
    rung is promoted unless its value is below the (1 - 1/eta) quantile of the values that
    arrived there before it (promoted while the rung is empty)."""
    seen: dict[float, list[float]] = {}
    decisions = []
    for e in events:
        before = seen.setdefault(e["rung"], [])
        cutoff = np.nanpercentile(before, (1 - 1 / eta) * 100) if before else None
        decisions.append("stop" if cutoff is not None and e["value"] < cutoff else "continue")
        before.append(e["value"])
    return decisions


def check_rungs(run: RunDirectory, eta: float, maximum: int) -> tuple[list[dict], list[dict]]:
    records, events = run.evaluations(), run.records(RUNG_LOG)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an evaluation was recorded twice"
    assert [e["decision"] for e in events] == replay_asha(events, eta)
    stops = {e["evaluation"]: e["rung"] for e in events if e["decision"] == "stop"}
    for r in records:
        assert r["status"] == "ok"
        budget = r["metrics"]["budget"]
        # Stopped where ASHA stopped it, or trained to R.
        assert budget == stops.get(r["id"], maximum), r["id"]
        # The curve reaches exactly the budget (the train evaluator's per-epoch validation).
        if "val_curve" in r["metrics"]:
            assert len(r["metrics"]["val_curve"]) == budget
    return records, events


def test_table_asha_stops_at_the_rungs_asha_gives(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--strategy", "evolution", "--evaluator", "table",
                 "--scheduler", "asha", "--evaluations", "24", "--workers", "2", "--seed", "3",
                 "--out", str(out), "--quiet"]) == 0
    run = RunDirectory(out)
    records, events = check_rungs(run, 4.0, 200)
    assert len(records) == 24
    budgets = {r["metrics"]["budget"] for r in records}
    assert budgets == {12, 200}, "ASHA stopped none or all of the children"
    # Every child arrives at the first rung (12 epochs), the only one the table's budgets meet.
    assert sorted(e["evaluation"] for e in events) == sorted(r["id"] for r in records)
    result = run.result()
    summary = result["scheduler"]
    assert summary["rungs"][0]["rung"] == 12 and summary["rungs"][0]["reached"] == 24
    assert summary["full_budget"] + summary["stopped_early"] == 24
    assert result["best"]["metrics"]["budget"] == 200
    svg = ET.fromstring((out / "progress.svg").read_text())
    stopped = svg.find(".//{*}g[@data-label='stopped at a rung (epochs)']")
    assert len(stopped.findall("{*}circle")) + len(stopped.findall("{*}polygon")) == summary["stopped_early"]
    board = scalars(out)
    assert len(board["evaluation/reward"]) == 24 and len(board["evaluation/budget"]) == 24
    assert board["rung/12/cutoff"], "the rung decisions' TensorBoard view"


@pytest.mark.slow
def test_train_asha_on_digits_stops_at_epoch_rungs(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--strategy", "random", "--evaluator", "train",
                 "--scheduler", "asha", "--grace-period", "1", "--max-budget", "4", "--reduction-factor", "2",
                 "--evaluations", "8",
                 "--workers", "2", "--train-option", "channels=4", "--train-option", "layers=1",
                 "--dataset-option", "max_train=300", "--train-option", "batch_size=100", "--out", str(out),
                 "--quiet"]) == 0
    run = RunDirectory(out)
    records, events = check_rungs(run, 2.0, 4)
    assert len(records) == 8
    assert {e["rung"] for e in events} <= {1.0, 2.0}
    assert any(r["metrics"]["budget"] < 4 for r in records), "nothing was stopped"
    # A child's record is its evaluation at the budget it reached, continued from the rung before.
    before = {1: 0, 2: 1, 4: 2}
    assert all(r["metrics"]["continued_from_epoch"] == before[r["metrics"]["budget"]] for r in records)
    # Tune heard every epoch: the trials' own results hold a line per epoch reached.
    for r in records:
        (trial,) = (out / "checkpoint" / "tune").glob(f"{r['id']}_*")
        epochs = [json.loads(line)["epoch"] for line in (trial / "result.json").read_text().splitlines()]
        assert epochs == list(range(1, r["metrics"]["budget"] + 1))


def table_spec(**changes) -> SearchSpec:
    return SearchSpec(**{**dict(space="nb201", strategy="evolution", evaluator="table", scheduler="asha",
                                evaluations=30, workers=1, seed=5,
                                strategy_options={"population_size": 5, "sample_size": 2}), **changes})


def test_a_stopped_search_resumes_into_the_same_search(tmp_path):
    """One worker makes the search deterministic: stopped after 12 records and resumed, it must
    equal a search never stopped, which it can only if the strategy's state (evolution's
    population, its generator) and ASHA's rungs came back with Tune's experiment."""
    straight = SearchJob(table_spec(), tmp_path / "straight", progress=False).run()
    assert straight["state"] == "done"

    job = SearchJob(table_spec(), tmp_path / "stopped", progress=False,
                    on_record=lambda record: job.stop() if record["index"] >= 12 else None)
    first = job.run()
    assert first["state"] == "stopped"
    stopped = RunDirectory(tmp_path / "stopped")
    assert 12 <= len(stopped.evaluations()) < 30
    # What Tune saved of the strategy holds every record in the log (evolution's last five).
    (saved,) = (tmp_path / "stopped" / "checkpoint" / "tune").glob("searcher-state-*.pkl")
    state = torch.load(saved, weights_only=True)
    ok = [r for r in stopped.evaluations() if r["status"] == "ok"]
    assert [p for p, _ in state["strategy"]["population"]] == [r["arch"] for r in ok[-5:]]

    resumed = SearchJob.resume_from(tmp_path / "stopped", progress=False).run()
    assert resumed["state"] == "done"
    one, other = RunDirectory(tmp_path / "straight"), RunDirectory(tmp_path / "stopped")

    def key(r):
        return r["id"], r["arch"], r["metrics"]["budget"], r["reward"]

    assert sorted(map(key, other.evaluations())) == sorted(map(key, one.evaluations()))
    assert [(e["evaluation"], e["decision"]) for e in other.records(RUNG_LOG)] == \
        [(e["evaluation"], e["decision"]) for e in one.records(RUNG_LOG)]
    check_rungs(other, 4.0, 200)


def test_spec_and_config_file_reach_the_tuner(tmp_path):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps({"space": "nb201", "strategy": "rl", "evaluator": "table", "scheduler": "asha",
                                  "evaluations": 16, "workers": 2, "reduction_factor": 3, "brackets": 2}))
    out = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    result = RunDirectory(out).result()
    assert result["scheduler"]["reduction_factor"] == 3 and result["evaluations"] == 16
    # Asynchronous Hyperband: the second bracket starts at r*eta, past the table's 12 epochs, so
    # its children run to 200; the first bracket's meet the rung at 12.
    assert result["scheduler"]["rungs_per_bracket"] == [[12, 36, 108], [36, 108]]
    _, events = check_rungs(RunDirectory(out), 3.0, 200)
    assert 0 < len(events) < 16


def test_the_service_streams_rung_decisions_and_cancels_a_tune_search(tmp_path):
    """Through the service the job runs in a thread (no signal handler for Tune): its rung
    decisions reach the watchers, and a cancel stops it resumably."""
    manager = SearchManager(tmp_path / "state", ThreadLauncher(), poll_s=0.02)
    try:
        record = manager.submit(table_spec(evaluations=12, workers=2).to_dict())
        events = list(manager.watch(record.id))
        rungs = [e for e in events if e["kind"] == "rung"]
        assert len(rungs) == 12 and events[-1]["state"] == "succeeded"
        message = event_to_message(record.id, rungs[-1], "nb201")
        assert message.rung_decision.rung == 12 and message.rung_decision.evaluation == rungs[-1]["evaluation"]
        assert message.rung_decision.promoted == (rungs[-1]["decision"] == "continue")

        slow = manager.submit(table_spec(evaluations=400, workers=1, evaluator_options={"sleep": 0.0005}).to_dict())
        for event in manager.watch(slow.id):
            if event["kind"] == "evaluation" and event["record"]["index"] >= 3:
                manager.cancel(slow.id)
        state = manager.get(slow.id).state
        assert state == "cancelled", state
        done = RunDirectory(manager.get(slow.id).run_dir).evaluations()
        assert 3 <= len(done) < 400 and len({r["id"] for r in done}) == len(done)
    finally:
        manager.close()


def test_nao_under_asha_writes_its_signals(tmp_path):
    tiny = {"seed_archs": 6, "new_archs": 4, "top_k": 4, "epochs": 5, "batch_size": 16, "hidden_size": 8,
            "embedding_size": 4, "mlp_layers": 1, "mlp_hidden_size": 8}
    out = tmp_path / "run"
    argv = ["search", "--space", "nb201", "--strategy", "nao", "--evaluator", "table", "--scheduler", "asha",
            "--evaluations", "14", "--workers", "2", "--out", str(out), "--quiet"]
    argv += [a for k, v in tiny.items() for a in ("--strategy-option", f"{k}={v}")]
    assert main(argv) == 0
    signals = RunDirectory(out).records("strategy.jsonl")
    # One line per round NAO proposed (after the seed pool, 6 + 4 + 4 of the 14), numbered from 1.
    assert [s["iteration"] for s in signals] == list(range(1, len(signals) + 1)) and len(signals) >= 2
    assert all(s["new_proposals"] + s["random_fill"] == 4 for s in signals)
