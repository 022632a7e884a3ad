"""The papers' protocols around the DARTS core: search data (the whole training set halved, both
halves augmented), which data a search trained on and which scored it, NoisyDARTS' skip
drop-path, darts2 with noise, supernets too shallow to search, the NB201 schedule, the collapse
monitors acting (warm-up, DARTS+ early stop, best epoch), resumable searches and an idempotent
epoch log, DARTS' selection training, and `nas train` as DARTS' final evaluation."""

import dataclasses
import json
import threading

import pytest
import torch

from raynas.common import ConfigError
from raynas.common.threads import torch_threads
from raynas.controller.cli import main
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.rundir import ONE_SHOT_LOG, RunDirectory
from raynas.controller.runtime.runners.base import Context
from raynas.controller.runtime.spec import SearchSpec
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.datasets.images import ImageData
from raynas.workers.execution import Task
from raynas.workers.oneshot import NoisyDartsConfig, OneShotConfig, search_epochs
from raynas.workers.oneshot.search import cosine_lr
from raynas.workers.oneshot.supernet import MixedOp
from raynas.workers.retrain import recipe, retrain, retrain_seeds

TINY = dict(epochs=3, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2, device="cpu", num_threads=1)
ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, val_fraction=0.05, max_train=200)


def strip(reports):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "images_per_s")} for r in reports]


def search(digits, seed=0, checkpoint=None, config=OneShotConfig, **options):
    with torch_threads(1):
        return list(search_epochs(get_space("nb201"), digits, config(**{**TINY, **options}), seed, checkpoint))


def test_the_search_halves_the_whole_training_set_and_keeps_augmentation():
    data = load_dataset("digits", seed=0)
    w_half, a_half = dataclasses.replace(data, augment=True).halves(0.5)
    whole = data.sizes["train"] + data.sizes["val"]  # CIFAR-10: 25k / 25k, not 22.5k / 22.5k
    assert (w_half.sizes["train"], a_half.sizes["train"]) == (whole // 2, whole - whole // 2)
    assert w_half.augment and a_half.augment
    assert torch.equal(torch.cat([w_half.tensors("train")[0], a_half.tensors("train")[0]]),
                       torch.cat([data.tensors("train")[0], data.tensors("val")[0]]))


def test_noisy_darts_drops_the_skip_branch_in_training_and_evaluation():
    assert NoisyDartsConfig().resolved("nb201").skip_drop_path == 0.3  # their search default
    assert OneShotConfig().resolved("nb201").skip_drop_path == 0.0
    ops = [torch.nn.Identity() if n == "skip_connect" else torch.nn.AvgPool2d(3, 1, 1)
           for n in ("none", "skip_connect", "avg_pool_3x3")]
    op = MixedOp(("none", "skip_connect", "avg_pool_3x3"), ops, skip_drop_path=0.3).eval()
    x = torch.ones(400, 2, 3, 3)
    torch.manual_seed(0)
    out = op(x, torch.tensor([0.0, 1.0, 0.0]))
    per_example = out.flatten(1)[:, 0]
    assert torch.allclose(per_example.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert abs((per_example == 0).float().mean().item() - 0.3) < 0.07
    assert torch.equal(x, torch.ones_like(x))  # the input state is never scaled in place
    assert torch.equal(op(x, torch.tensor([0.0, 0.0, 1.0])), op(x, torch.tensor([0.0, 0.0, 1.0])))


def test_a_darts_supernet_without_a_normal_cell_is_refused():
    for layers in (1, 2):
        with pytest.raises(ConfigError) as err:
            resolve(SearchSpec(space="darts", strategy="darts", strategy_options={"layers": layers}))
        assert err.value.field == "strategy_options.layers" and "at least 3" in str(err.value)
    assert OneShotConfig(layers=3).resolved("darts").layers == 3


def test_nb201_steps_its_cosine_every_iteration():
    nb201, darts = OneShotConfig(epochs=2).resolved("nb201"), OneShotConfig(epochs=2).resolved("darts")
    assert nb201.lr_schedule == "step" and darts.lr_schedule == "epoch"
    assert cosine_lr(darts, 0, 5, 10) == darts.lr == cosine_lr(nb201, 0, 0, 10)
    assert cosine_lr(nb201, 0, 5, 10) == pytest.approx(0.001 + 0.5 * 0.024 * (1 + 2 ** -0.5))
    assert cosine_lr(nb201, 1, 0, 10) == pytest.approx(0.001 + 0.024 / 2)


@pytest.mark.slow
def test_warm_up_freezes_the_alphas_then_they_move(digits):
    frozen = search(digits, warmup_epochs=2, arch_lr=0.5)
    moving = search(digits, arch_lr=0.5)
    assert [r["alphas_frozen"] for r in frozen] == [True, True, False]

    def spread(report):
        return max(max(row) - min(row) for row in report["alphas"][0])

    assert spread(frozen[1]) < 0.01 < spread(moving[1])  # 1e-3 N(0, 1) at the start: softmax nearly uniform
    assert spread(frozen[2]) > 0.01


@pytest.mark.slow
def test_early_stop_and_best_epoch(digits):
    reports = search(digits, seed=1, early_stop_skips=1, epochs=4)
    collapsed = [r["skip_count"] >= 1 for r in reports]
    assert collapsed[:-1] == [False] * (len(reports) - 1)
    assert ("stopped_early" in reports[-1]) == collapsed[-1] and ("stopped_early" in reports[-1] or len(reports) == 4)
    assert reports[-1]["candidates"] == [reports[-1]["genotype"]]
    best = search(digits, seed=1, keep_best=True, epochs=4)
    assert best[-1]["candidates"] == [max(best, key=lambda r: r["val_acc"])["genotype"]]


@pytest.mark.slow
def test_a_stopped_search_continues_from_its_last_epoch(digits, tmp_path):
    options = dict(config=NoisyDartsConfig)  # noise, drop-path, both optimizers, the RNG all in play
    straight = search(digits, 2, str(tmp_path / "straight.ckpt"), **options)
    with torch_threads(1):
        stopped = search_epochs(get_space("nb201"), digits, NoisyDartsConfig(**TINY), 2,
                                str(tmp_path / "stopped.ckpt"))
        first = next(stopped)
        stopped.close()  # the process dies after epoch 1's checkpoint
    continued = search(digits, 2, str(tmp_path / "stopped.ckpt"), **options)
    assert strip(continued[:1]) == strip([first]) and strip(continued) == strip(straight)
    with pytest.raises(ConfigError) as err:
        search(digits, 3, str(tmp_path / "stopped.ckpt"), **options)  # another seed
    assert err.value.field == "checkpoint"


SPEC = dict(space="nb201", strategy="darts", evaluator="table", evaluations=1, runtime="local",
            strategy_options={k: v for k, v in TINY.items() if k != "device"})


def test_the_search_data_is_recorded_and_a_proxy_must_be_asked_for(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve(SearchSpec(**SPEC))  # digits searched, CIFAR-10 figures scored
    assert err.value.field == "dataset" and "proxy" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve(SearchSpec(**{**SPEC, "strategy": "random", "strategy_options": {}, "proxy_dataset": True}))
    assert err.value.field == "proxy_dataset"
    resolve(SearchSpec(**{**SPEC, "dataset": "cifar10", "data_path": "x.npz"}))  # the table's own data
    spec = SearchSpec(**{**SPEC, "proxy_dataset": True, "strategy_options": {**SPEC["strategy_options"], "epochs": 1}})
    result = SearchJob(spec, tmp_path / "run", progress=False).run()
    assert (result["dataset"], result["search_dataset"], result["proxy_dataset"]) == ("cifar10", "digits", True)
    plain = SearchJob(SearchSpec(space="nb201", strategy="random", evaluator="table", evaluations=1,
                                 runtime="local"), tmp_path / "random", progress=False).run()
    assert "search_dataset" not in plain


def test_the_proxy_flag_reaches_the_spec(capsys, tmp_path):
    code = main(["search", "--space", "nb201", "--strategy", "darts", "--evaluator", "table", "--evaluations", "1",
                 "--runtime", "local", "--strategy-option", "epochs=1", "--strategy-option", "channels=4",
                 "--strategy-option", "layers=1", "--strategy-option", "max_batches_per_epoch=1",
                 "--out", str(tmp_path / "no"), "--quiet"])
    assert code == 2 and "--proxy-dataset" in capsys.readouterr().err
    assert main(["search", "--space", "nb201", "--strategy", "darts", "--evaluator", "table", "--evaluations", "1",
                 "--runtime", "local", "--proxy-dataset", "--strategy-option", "epochs=1", "--strategy-option",
                 "channels=4", "--strategy-option", "layers=1", "--strategy-option", "max_batches_per_epoch=1",
                 "--out", str(tmp_path / "yes"), "--quiet"]) == 0
    assert json.loads((tmp_path / "yes" / "spec.json").read_text())["proxy_dataset"] is True


def test_one_shot_epochs_are_logged_once_and_every_search_has_a_checkpoint(tmp_path):
    spec = SearchSpec(**{**SPEC, "proxy_dataset": True, "strategy_options": {**SPEC["strategy_options"],
                                                                             "epochs": 2}})
    job = SearchJob(spec, tmp_path / "run", progress=False)
    job.run()
    run = RunDirectory(tmp_path / "run")
    (record,) = run.evaluations()
    checkpoint = record["checkpoint"]
    assert checkpoint.startswith(str(tmp_path / "run" / "checkpoint" / "evaluations"))
    assert torch.load(checkpoint, weights_only=False)["history"][-1]["candidates"] == [record["arch"]]
    logged = run.records(ONE_SHOT_LOG)
    assert [(r["run"], r["epoch"]) for r in logged] == [(0, 1), (0, 2)]
    # A retried task or a resumed job replays the epochs its checkpoint holds: none is logged twice.
    plan = resolve(spec)
    report = Context(plan, run, resume=True, deadline=None, namespace="test", address=None, stop=threading.Event(),
                     evaluator=None, progress=lambda r: None, on_record=lambda r: None).reporter()
    task = Task("e0", None, record["seed"], None, checkpoint)
    for epoch in logged:
        report(task, {k: v for k, v in epoch.items() if k != "run"})
    report(task, {**logged[-1], "epoch": 3})
    assert [r["epoch"] for r in run.records(ONE_SHOT_LOG)] == [1, 2, 3]


def test_searched_cells_are_trained_as_darts_selects_them():
    spec = SearchSpec(space="darts", strategy="darts", runtime="local", evaluator_options={"epochs": 2, "cutout": 0})
    selection = resolve(spec).evaluator_options
    # DARTS sec. 3.3: each searched cell trained from scratch briefly with the evaluation recipe, kept by val acc.
    assert (selection.epochs, selection.channels, selection.layers, selection.batch_size, selection.auxiliary_weight,
            selection.drop_path, selection.reward, selection.autocast, selection.cutout) == (
        2, 36, 20, 96, 0.4, 0.2, "last", False, 0)
    nb201 = resolve(SearchSpec(space="nb201", strategy="rsws", runtime="local")).evaluator_options
    assert (nb201.epochs, nb201.batch_size, nb201.lr, nb201.weight_decay) == (12, 256, 0.1, 5e-4)
    child = resolve(SearchSpec(space="nb201", strategy="random", runtime="local")).evaluator_options
    assert child.epochs == 3  # other strategies keep the generic child training


def _with_test_split(data: ImageData) -> ImageData:
    return dataclasses.replace(data, splits={**data.splits, "test": data.splits["val"][:40]})


@pytest.mark.slow
def test_nas_train_trains_on_the_whole_training_set_and_reports_test_accuracy(digits, tmp_path):
    data = _with_test_split(digits)
    config = recipe("nb201", epochs=1, channels=4, layers=1, max_train_batches_per_epoch=2, device="cpu",
                    num_threads=1)
    assert config.autocast is False and recipe("nb201", autocast=True).autocast  # fp32 unless asked for bf16
    result = retrain("nb201", ARCH, data, config, tmp_path / "one", log=lambda _: None)
    assert result["test_split"] == "test" and result["train_samples"] == data.sizes["train"] + data.sizes["val"]
    assert result["test_acc"] == result["val_curve"][-1]
    seeds = retrain_seeds("nb201", ARCH, data, config, tmp_path / "many", [0, 1, 2], log=lambda _: None)
    accs = [r["test_acc"] for r in seeds["runs"]]
    assert seeds["state"] == "done" and [r["seed"] for r in seeds["runs"]] == [0, 1, 2]
    assert seeds["test_acc"] == pytest.approx(sum(accs) / 3)
    assert seeds["test_acc_std"] == pytest.approx(torch.tensor(accs).std().item())
    again = retrain_seeds("nb201", ARCH, data, config, tmp_path / "many", [0, 1, 2], resume=True,
                          log=lambda line: pytest.fail(f"a finished seed was trained again: {line}"))
    assert again["test_acc"] == seeds["test_acc"]
