"""One-shot strategies inside a search job and the service: R searches, each derived
genotype evaluated like any child, monitors in the log and the event stream."""

import json

import pytest
from events import histograms, scalars

from raynas.common import ConfigError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service.manager import SearchManager, ThreadLauncher
from raynas.controller.strategies import strategy_class, strategy_names

TINY = {"epochs": 2, "channels": 4, "layers": 1, "batch_size": 32, "max_batches_per_epoch": 2}
#: Trained on the bundled digits, scored by the table's CIFAR-10 figures: a proxy search, said so.
SPEC = dict(space="nb201", strategy="darts", evaluator="table", proxy_dataset=True, evaluations=2, runtime="local",
            strategy_options=TINY)


@pytest.mark.slow
def test_darts_on_nb201_runs_r_searches_and_scores_their_genotypes_on_the_table(tmp_path):
    result = SearchJob(SearchSpec(**SPEC), tmp_path / "run", progress=False).run()
    assert result["state"] == "done" and result["evaluations"] == 2 and result["failed"] == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    epochs = [json.loads(x) for x in (tmp_path / "run" / "oneshot.jsonl").read_text().splitlines()]
    assert sorted((e["run"], e["epoch"]) for e in epochs) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for r in records:
        monitors = r["metrics"]["one_shot"]
        assert monitors["algorithm"] == "darts" and len(monitors["skip_count_per_epoch"]) == 2
        last = [e for e in epochs if e["run"] == r["index"]][-1]
        assert r["arch"] == last["genotype"] == monitors["genotype"]
        assert "test_acc_200ep" in r["metrics"]  # scored by the ordinary (table) evaluator
    assert records[0]["seed"] != records[1]["seed"]
    # The epochs' TensorBoard view: monitors as scalars, the alphas as a histogram per epoch.
    assert [step for step, _ in scalars(tmp_path / "run")["oneshot/run1/skip_count"]] == [1, 2]
    assert [step for step, _ in histograms(tmp_path / "run")["oneshot/run0/alphas"]] == [1, 2]


@pytest.mark.slow
def test_nas_search_shows_each_one_shot_epoch_as_it_ends(tmp_path, capsys):
    """A one-shot search's first result comes after its whole supernet training: its terminal
    says each epoch meanwhile, not only that it waits for a first child."""
    SearchJob(SearchSpec(**{**SPEC, "evaluations": 1}), tmp_path / "run").run()
    lines = [line.split("] ", 1)[-1] for line in capsys.readouterr().err.splitlines()]
    epochs = [line for line in lines if line.startswith("one-shot run 0 epoch")]
    assert [line.split(":")[0] for line in epochs] == ["one-shot run 0 epoch 1", "one-shot run 0 epoch 2"]
    assert "skip-connections" in epochs[0] and "val_acc 0." in epochs[0] and "|" in epochs[0]


def test_one_shot_specs_are_checked_up_front():
    with pytest.raises(ConfigError) as bad:
        resolve(SearchSpec(**{**SPEC, "space": "macro"}))
    assert bad.value.field == "space"
    with pytest.raises(ConfigError) as bad:
        resolve(SearchSpec(**{**SPEC, "strategy_options": {"epoch": 3}}))
    assert bad.value.field == "strategy_options.epoch"
    with pytest.raises(ConfigError) as bad:
        resolve(SearchSpec(**{**SPEC, "strategy": "noisy-darts", "strategy_options": {"noise_lambda": -1}}))
    assert bad.value.field == "strategy_options.noise_lambda"


@pytest.mark.slow
def test_the_service_streams_one_shot_epochs(tmp_path):
    manager = SearchManager(tmp_path / "state", ThreadLauncher(), poll_s=0.02)
    try:
        record = manager.submit({**SPEC, "strategy": "noisy-darts", "evaluations": 1})
        events = list(manager.watch(record.id))
    finally:
        manager.close()
    kinds = [e["kind"] for e in events]
    assert kinds.count("one_shot_epoch") == 2 and kinds.count("evaluation") == 1
    assert kinds.index("one_shot_epoch") < kinds.index("evaluation")
    assert events[-1] == {"kind": "state", "state": "succeeded", "error": ""}
    epoch = next(e for e in events if e["kind"] == "one_shot_epoch")
    assert {"skip_count", "alpha_entropy", "genotype", "val_acc"} <= set(epoch)


def test_every_one_shot_strategy_names_its_search_after_itself():
    """Reports and result.json's one_shot.algorithm say the search's name: the strategy's."""
    searching = [strategy_class(name) for name in strategy_names() if strategy_class(name).needs.search is not None]
    assert {cls.name for cls in searching} >= {"darts", "darts2", "noisy-darts", "rsws", "nao-ws", "autodeeplab"}
    assert all(cls.Options.algorithm == cls.name for cls in searching)
