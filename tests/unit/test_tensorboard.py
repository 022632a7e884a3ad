"""TensorBoard event files in the run directory: written through the run directory's one append,
read back with the protobuf classes of the writer's own library, and never a cause of lost work."""

import json
import logging
import subprocess
import sys

import pytest
from events import histograms, read_events, scalars

from raynas.controller.cli.main import main
from raynas.controller.runtime import tensorboard
from raynas.controller.runtime.rundir import ONE_SHOT_LOG, RUNG_LOG, STRATEGY_LOG, RunDirectory


def evaluation(index, reward, **metrics):
    return {"id": f"e{index}", "index": index, "arch": f"a{index}", "seed": index, "finished_at": 1000.0 + index,
            "status": "ok" if reward is not None else "failed", "reward": reward, "metrics": metrics}


def test_every_log_has_its_view(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    run.append_many([evaluation(0, 0.5, val_acc_best=0.5, params=1000, flops=2e6, train_time_s=3.0, budget=4),
                     evaluation(1, None)])
    run.append(evaluation(2, 0.7, params=900, budget=4))
    run.append({"run": 0, "epoch": 1, "skip_count": 2, "val_acc": 0.4, "genotype": "g",
                "alphas": [[0.1, 0.9], [0.5, 0.5]], "alpha_entropy": [0.3, 0.69]}, ONE_SHOT_LOG)
    run.append({"run": 0, "stage": "search", "epoch": 2, "skip_count": 3, "beta": [[[0.2, 0.8]]]}, ONE_SHOT_LOG)
    run.append({"iteration": 1, "predictor_tau": 0.4, "new_proposals": 10}, STRATEGY_LOG)
    run.append({"evaluation": "e0", "rung": 1.0, "decision": "continue", "value": 0.5, "cutoff": 0.45}, RUNG_LOG)

    got = scalars(run.path)
    assert got["evaluation/reward"] == [(0, 0.5), (2, 0.699999988079071)]
    assert got["evaluation/best_so_far"] == [(0, 0.5), (2, 0.699999988079071)]
    assert got["evaluation/failed"] == [(1, 1.0)]
    assert got["evaluation/params"] == [(0, 1000.0), (2, 900.0)]
    assert got["evaluation/flops"] == [(0, 2e6)]
    assert got["evaluation/train_time_s"] == [(0, 3.0)]
    assert got["evaluation/budget"] == [(0, 4.0), (2, 4.0)]
    assert got["evaluation/val_acc_best"] == [(0, 0.5)]
    assert got["oneshot/run0/skip_count"] == [(1, 2.0)]
    assert got["oneshot/run0/search/skip_count"] == [(2, 3.0)]
    assert got["strategy/predictor_tau"] == [(1, 0.4000000059604645)]
    assert got["strategy/new_proposals"] == [(1, 10.0)]
    assert got["rung/1/cutoff"] == [(1, 0.44999998807907104)]
    assert "oneshot/run0/genotype" not in got
    hist = histograms(run.path)
    (step, alphas), = hist["oneshot/run0/alphas"]
    assert step == 1 and alphas.num == 4 and alphas.min == 0.1 and alphas.max == 0.9
    assert hist["oneshot/run0/search/beta"][0][1].num == 2
    assert len(hist["oneshot/run0/alpha_entropy"]) == 1
    # Event times are the evaluations' own.
    times = {e.step: e.wall_time for e in read_events(run.path)
             if any(v.tag == "evaluation/reward" for v in e.summary.value)}
    assert times == {0: 1000.0, 2: 1002.0}


def test_a_resumed_run_goes_on_from_its_best(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    run.append(evaluation(0, 0.9))
    run.append(evaluation(1, None))
    again = RunDirectory(tmp_path / "run")  # a resumed job's own, in a new process
    again.append(evaluation(2, 0.6))
    again.append(evaluation(3, None))
    got = scalars(run.path)
    assert got["evaluation/best_so_far"] == [(0, 0.8999999761581421), (2, 0.8999999761581421)]
    assert got["evaluation/failed"] == [(1, 1.0), (3, 2.0)]
    assert len(list(run.path.glob("events.out.tfevents.*"))) == 2


def test_best_so_far_ranks_the_budget_first_as_the_result_does(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    run.append_many([evaluation(0, 0.8, budget=12), evaluation(1, 0.7, budget=200), evaluation(2, 0.9, budget=12),
                     evaluation(3, 0.75, budget=200)])
    assert scalars(run.path)["evaluation/best_so_far"] == [(0, 0.800000011920929), (1, 0.699999988079071),
                                                           (2, 0.699999988079071), (3, 0.75)]


def test_a_failing_writer_warns_once_and_loses_no_record(tmp_path, monkeypatch, caplog):
    def broken(board, records):
        raise OSError("No space left on device")

    monkeypatch.setattr(tensorboard.RunBoard, "evaluations", broken)
    run = RunDirectory.create(tmp_path / "run", {})
    with caplog.at_level(logging.WARNING, logger=tensorboard.__name__):
        run.append(evaluation(0, 0.5))
        run.append(evaluation(1, 0.6))
    assert [r["id"] for r in run.evaluations()] == ["e0", "e1"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()


def test_a_search_writes_its_event_files(capsys, tmp_path):
    out = tmp_path / "runs" / "evolution"
    assert main(["search", "--runtime", "local", "--evaluator", "table", "--strategy", "evolution",
                 "--evaluations", "12", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    got = scalars(out)
    assert [step for step, _ in got["evaluation/reward"]] == [r["index"] for r in records]
    assert got["evaluation/test_acc_200ep"] and got["evaluation/params"] and got["evaluation/flops"]
    best = max(r["reward"] for r in records)
    assert abs(got["evaluation/best_so_far"][-1][1] - best) < 1e-6


def test_a_reinforce_search_shows_its_baseline_and_entropy_per_update(capsys, tmp_path):
    out = tmp_path / "runs" / "rl"
    assert main(["search", "--runtime", "local", "--evaluator", "table", "--strategy", "rl", "--strategy-option",
                 "batch_size=4", "--evaluations", "12", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    logged = [json.loads(line) for line in (out / STRATEGY_LOG).read_text().splitlines()]
    got = scalars(out)
    for name in ("baseline", "entropy", "reward"):
        assert got[f"strategy/{name}"] == [(r["iteration"], pytest.approx(r[name])) for r in logged]
    assert [r["iteration"] for r in logged] == [1, 2, 3]


def test_the_view_begins_as_tensorboard_files_do_and_holds_each_histogram_whole(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    values = [0.1, 0.2, 0.2, 0.9, 0.5, 0.45]
    run.append({"run": 0, "epoch": 1, "alphas": values}, ONE_SHOT_LOG)
    first = read_events(run.path)[0]
    assert first.file_version == "brain.Event:2" and first.wall_time > 0
    (_, histo), = histograms(run.path)["oneshot/run0/alphas"]
    # Each bucket ends at its limit: the first, empty, ends at the lowest value.
    assert histo.bucket_limit[0] == min(values) and histo.bucket_limit[-1] == max(values)
    assert histo.bucket[0] == 0 and sum(histo.bucket) == len(values) == histo.num
    assert histo.sum == pytest.approx(sum(values)) and histo.sum_squares == pytest.approx(sum(v * v for v in values))


def test_the_recorder_writes_its_view_without_importing_torch(tmp_path):
    """tensorboardX imports torch as its package loads: the recorder, an actor that never touches
    a tensor, paid about a second of CPU for it at its first record, while the first result waited."""
    code = ("import sys; from raynas.controller.runtime.rundir import RunDirectory; "
            f"run = RunDirectory.create({str(tmp_path / 'run')!r}, {{}}); "
            "run.append({'id': 'e0', 'index': 0, 'arch': 'a', 'seed': 0, 'finished_at': 1.0, 'status': 'ok', "
            "'reward': 0.5, 'metrics': {}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert scalars(tmp_path / "run")["evaluation/reward"] == [(0, 0.5)]
