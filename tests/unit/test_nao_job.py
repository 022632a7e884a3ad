"""NAO inside a search job and the service: its signals in strategy.jsonl and the event stream,
a stopped search resumed to the same result, and NAO-WS end to end, its best cell retrained
with `nas train`."""

import json

import numpy as np
import pytest
import torch

from raynas.common.threads import torch_threads
from raynas.controller.api.servicer import event_to_message, struct_to_dict
from raynas.controller.cli.main import main
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import STRATEGY_LOG
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service.manager import SearchManager, ThreadLauncher
from raynas.controller.strategies import strategy_class
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import CANCELLED, Cancelled, EvalResult, Evaluator
from raynas.workers.oneshot.derive import darts_path
from raynas.workers.oneshot.supernet import DartsSupernet

TINY = {"seed_archs": 6, "new_archs": 4, "top_k": 4, "epochs": 5, "batch_size": 16, "hidden_size": 8,
        "embedding_size": 4, "mlp_layers": 1, "mlp_hidden_size": 8}
SPEC = dict(space="nb201", strategy="nao", evaluator="table", evaluations=26, runtime="local", seed=3,
            strategy_options=TINY)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_signals_go_to_strategy_jsonl_and_a_stopped_search_resumes_to_the_same_end(tmp_path):
    whole = tmp_path / "whole"
    SearchJob(SearchSpec(**SPEC), whole, progress=False).run()
    signals = lines(whole / STRATEGY_LOG)
    assert [s["iteration"] for s in signals] == [1, 2, 3, 4, 5]  # rounds after 6, 10, 14, 18, 22 proposals
    assert {"predictor_mae", "predictor_tau", "reconstruction_acc", "new_proposals", "trained_on"} <= set(signals[0])
    assert all(s["predictor_tau"] is not None for s in signals[1:])

    part = tmp_path / "part"

    def stop(record):
        if record["index"] >= 12:
            job.stop()

    job = SearchJob(SearchSpec(**SPEC), part, progress=False, on_record=stop)
    assert job.run()["state"] == "stopped"
    assert SearchJob.resume_from(part, progress=False).run()["state"] == "done"
    archs = [r["arch"] for r in lines(whole / "evaluations.jsonl")]
    assert [r["arch"] for r in lines(part / "evaluations.jsonl")] == archs
    assert lines(part / STRATEGY_LOG) == signals


def test_the_service_streams_strategy_signals(tmp_path):
    manager = SearchManager(tmp_path / "state", ThreadLauncher(), poll_s=0.02)
    try:
        record = manager.submit({**SPEC, "evaluations": 14})
        events = list(manager.watch(record.id))
    finally:
        manager.close()
    signals = [e for e in events if e["kind"] == "strategy_signal"]
    assert [e["iteration"] for e in signals] == [1, 2]
    message = event_to_message(record.id, signals[1], "nb201")
    assert message.WhichOneof("event") == "strategy_signal" and message.strategy_signal.iteration == 2
    assert struct_to_dict(message.strategy_signal.signals)["new_proposals"] == signals[1]["new_proposals"]


def test_a_child_through_the_supernet_is_the_supernet_with_only_its_ops():
    """A genotype's single path (a node may read one input twice: both its ops run on that edge)
    equals the whole supernet with one-hot op weights on the genotype's (node, input, op) choices
    and zero elsewhere."""
    torch.manual_seed(0)
    model = DartsSupernet(4, 3, in_channels=1, num_classes=10).eval()
    space = get_space("darts")
    genotype = space.sample(np.random.default_rng(2))
    weights = []
    for pairs in (genotype.normal, genotype.reduce):
        w = torch.zeros(14, len(model.primitives))
        start = 0
        for node in range(4):
            for op, source in pairs[2 * node:2 * node + 2]:
                w[start + source, model.primitives.index(op)] += 1
            start += 2 + node
        weights.append(w)
    model.arch_weights = lambda: weights
    x = torch.randn(3, 1, 8, 8)
    assert any(len(set(sources)) == 1 for cell in (genotype.normal, genotype.reduce)
               for sources in zip(*[iter(s for _, s in cell)] * 2))  # a node that reads one input twice
    assert torch.allclose(model(x, darts_path(genotype, model.primitives)), model(x), atol=1e-5)


@pytest.mark.slow
def test_nao_ws_searches_the_darts_space_end_to_end_and_its_cell_retrains(tmp_path, capsys):
    out = tmp_path / "run"
    options = {"epochs": 4, "eval_every": 2, "channels": 4, "layers": 3, "batch_size": 32,
               "max_batches_per_epoch": 3, "score_batch_size": 64,
               "controller": {"seed_archs": 8, "new_archs": 3, "top_k": 8, "epochs": 40, "expand": 2,
                              "hidden_size": 8, "embedding_size": 4, "mlp_hidden_size": 8}}
    options.update({f"nao.{k}": v for k, v in options.pop("controller").items()})
    argv = ["search", "--runtime", "local", "--space", "darts", "--strategy", "nao-ws", "--evaluations", "1",
            "--dataset", "digits", "--out", str(out), "--quiet", "--json"]
    argv += [a for k, v in options.items() for a in ("--strategy-option", f"{k}={v}")]
    argv += ["--train-option", "epochs=1", "--train-option", "channels=4", "--train-option", "layers=3",
             "--train-option", "max_train_batches_per_epoch=2"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["state"] == "done" and result["failed"] == 0
    (record,) = lines(out / "evaluations.jsonl")
    summary = record["metrics"]["one_shot"]
    assert summary["algorithm"] == "nao-ws" and record["arch"] == summary["genotype"] and summary["epochs"] == 4
    assert [s["epoch"] for s in summary["nao"]] == [2, 4]
    # NAO's steps found new architectures; the supernet then scored them, and the predictor's error on them is known.
    assert 1 <= summary["nao"][0]["new_proposals"] <= 3 and summary["nao"][1]["predictor_mae"] is not None
    epochs = lines(out / "oneshot.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and epochs[-1]["genotype"] == record["arch"]

    trained = tmp_path / "trained"
    assert main(["train", "--run", str(out), "--out", str(trained), "--epochs", "1", "--channels", "4",
                 "--layers", "3", "--cutout", "0", "--auxiliary-weight", "0", "--drop-path", "0",
                 "--max-train-batches-per-epoch", "2", "--json"]) == 0
    retrained = json.loads((trained / "result.json").read_text())
    assert retrained["arch"] == record["arch"] and retrained["state"] == "done"


class Spelled(Evaluator):
    """Scores an architecture by its string: the search's answer, without training it."""

    name = "spelled"

    def _evaluate(self, arch, seed, budget, report, checkpoint):
        return EvalResult(str(arch), float(sum(map(ord, str(arch))) % 997))


WS_OPTIONS = {"epochs": 4, "eval_every": 2, "channels": 4, "layers": 3, "batch_size": 32, "max_batches_per_epoch": 2,
              "score_batch_size": 32, "num_threads": 1, "device": "cpu", "nao.seed_archs": 6, "nao.new_archs": 3,
              "nao.top_k": 6, "nao.epochs": 5, "nao.hidden_size": 8, "nao.embedding_size": 4,
              "nao.mlp_hidden_size": 8}


@pytest.mark.slow
def test_a_stopped_nao_ws_search_continues_from_its_checkpoint(tmp_path):
    """Stopped after the first scoring and NAO iteration (epoch 2), the search replays the epochs its
    checkpoint holds and continues: the supernet, NAO and the pool as they were, the end the same."""
    strategy, space = strategy_class("nao-ws"), get_space("darts")
    evaluator = strategy.needs.search(strategy.parse_options(space, WS_OPTIONS), space,
                                      load_dataset("digits", seed=0, val_fraction=0.05, max_train=200), Spelled())
    checkpoint = str(tmp_path / "search.ckpt")

    def stop_after(epochs, heard):
        def report(epoch):
            if epoch["epoch"] > epochs:
                raise Cancelled("the worker died")
            heard.append(epoch)
        return report

    straight, stopped, continued = [], [], []
    with torch_threads(1):
        whole = evaluator.evaluate(None, seed=2, report=straight.append)
        cut = evaluator.evaluate(None, seed=2, report=stop_after(2, stopped), checkpoint=checkpoint)
        result = evaluator.evaluate(None, seed=2, report=continued.append, checkpoint=checkpoint)
    # Replayed from the checkpoint, timings and all: not searched again.
    assert cut.status == CANCELLED and continued[:2] == stopped

    def timeless(reports):
        return [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in reports]

    assert timeless(continued) == timeless(straight) and [r["epoch"] for r in continued] == [1, 2, 3, 4]
    assert result.ok and result.arch == whole.arch == continued[-1]["genotype"]


def test_nas_watch_prints_strategy_signals(capsys):
    from raynas.controller.cli.service import _follow

    event = {"kind": "strategy_signal", "iteration": 3, "new_proposals": 10, "predictor_tau": 0.4213,
             "predictor_mae": None}

    class Client:
        def watch(self, search_id, skip):
            yield event_to_message(search_id, event, "nb201")

    _follow(Client(), "s1", 0)
    line = capsys.readouterr().out.strip()
    assert line.startswith("  strategy iteration 3:".strip()) and "new_proposals 10" in line
    assert "predictor_tau 0.4213" in line
