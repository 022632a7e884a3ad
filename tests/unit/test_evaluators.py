"""The table and train evaluators, through the `get_evaluator` registry."""

import functools
import math
import time

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import get_evaluator
from raynas.workers.evaluation import train as train_module
from raynas.workers.evaluation.table import MEAN_SIMULATED_TIME_S, load_table
from raynas.workers.training import TrainConfig

INDEX_0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
# Small enough to train in about a second per epoch on two CPU cores; one thread, because
# two threads on tiny convolutions lose badly to anything else running on the machine.
TINY = dict(channels=8, layers=1, batch_size=64, num_threads=1)


@functools.cache
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def nb201():
    return get_space("nb201")


@pytest.fixture(scope="module")
def table(nb201):
    return get_evaluator("table", nb201)


# -- table -------------------------------------------------------------------------------------


def test_table_row_of_index_0(table):
    result = table.evaluate(INDEX_0)
    assert result.ok and result.arch == INDEX_0
    assert result.reward == pytest.approx(0.63364)
    m = result.metrics
    assert (m["index"], m["params"], m["flops"]) == (0, 129306, 17958592)
    assert (m["valid_acc_12ep"], m["test_acc_12ep"], m["test_acc_200ep"]) == pytest.approx((63.364, 69.55, 85.863333))


def test_table_published_cells(table, nb201):
    skip = table.evaluate(nb201.parse(ALL_SKIP))
    assert round(skip.metrics["test_acc_200ep"], 2) == 54.30 and skip.metrics["params"] == 73306
    resnet = table.evaluate(RESNET, seed=7)
    assert round(resnet.metrics["test_acc_200ep"], 2) == 93.91 and resnet.metrics["index"] == 11472
    assert resnet.reward == pytest.approx(0.83742)
    # More FLOPs, proportionally more simulated training time.
    assert resnet.metrics["simulated_time_s"] / skip.metrics["simulated_time_s"] == pytest.approx(
        resnet.metrics["flops"] / skip.metrics["flops"])


@pytest.mark.parametrize("dataset, optimum", [("cifar10", 94.37), ("cifar100", 73.51), ("imagenet16", 47.31)])
def test_table_optimum_and_calibration(nb201, dataset, optimum):
    evaluator = get_evaluator("table", nb201, dataset=dataset)
    assert round(evaluator.optimum()["test_acc_200ep"], 2) == optimum
    t = load_table(dataset)
    assert t is load_table(dataset)
    assert len(t.archs) == 15625
    rewards = [v / 100 for v in t.columns["valid_acc_12ep"]]
    assert 0 <= min(rewards) and max(rewards) <= 1
    mean = sum(f * t.seconds_per_mflop for f in t.columns["flops_M"]) / len(t.archs)
    assert mean == pytest.approx(MEAN_SIMULATED_TIME_S)


def test_table_sleep_waits_the_scaled_simulated_time(nb201):
    evaluator = get_evaluator("table", nb201, sleep=0.002)
    start = time.perf_counter()
    result = evaluator.evaluate(ALL_SKIP)
    assert time.perf_counter() - start >= 0.002 * result.metrics["simulated_time_s"]


def test_table_bad_arch_is_a_failed_result(table):
    result = table.evaluate("|nor_conv_3x3~0|+|bogus~0|none~1|+|none~0|none~1|none~2|")
    assert not result.ok and result.reward is None and "bogus" in result.reason


@pytest.mark.parametrize("name, space, data, options, field, text", [
    ("nope", "nb201", None, {}, "evaluator", "table"),
    ("table", "darts", None, {}, "evaluator", "nb201"),
    ("table", "nb201", None, {"dataset": "svhn"}, "evaluator_options.dataset", "cifar100"),
    ("table", "nb201", None, {"sleep": -1}, "evaluator_options.sleep", "number"),
    ("table", "nb201", None, {"sleep": 1000}, "evaluator_options.sleep", "at most 100"),
    ("table", "nb201", None, {"epochs": 3}, "evaluator_options.epochs", "sleep"),
    ("train", "nb201", "digits", {"epoch": 3}, "evaluator_options.epoch", "epochs"),
    ("train", "nb201", "digits", {"epochs": 0}, "evaluator_options.epochs", "positive"),
    ("train", "nb201", "digits", {"epochs": 10**9}, "evaluator_options.epochs", "at most"),
    ("train", "nb201", "digits", {"lr": -0.1}, "evaluator_options.lr", "number"),
    ("train", "nb201", "digits", {"reward": "best"}, "evaluator_options.reward", "zoph"),
    ("train", "nb201", "digits", {"reward": "ppl"}, "evaluator_options.reward", "zoph"),
    ("train", "nb201", "digits", {"auxiliary_weight": 0.4}, "auxiliary", "nb201"),
    ("train", "nb201", None, {}, "dataset", "load_dataset"),
    ("train", "rnn", "digits", {}, "dataset", "ptb"),
])
def test_bad_configuration_names_the_field(name, space, data, options, field, text):
    with pytest.raises(ConfigError) as exc:
        get_evaluator(name, space, data and load_dataset(data), **options)
    assert exc.value.field == field and text in str(exc.value)


def test_train_config_resolves_task_defaults():
    image = TrainConfig().resolved("classification")
    assert (image.lr, image.momentum, image.weight_decay, image.reward) == (0.1, 0.9, 1e-4, "zoph")
    text = TrainConfig(lr=5.0).resolved("language_model")
    assert (text.lr, text.reward) == (5.0, "ppl")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device"):
            get_evaluator("train", "nb201", digits(), device="cuda")


# -- train -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(nb201):
    return get_evaluator("train", nb201, digits(), epochs=4, **TINY)


@pytest.mark.slow
def test_training_on_digits_beats_chance(trainer):
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    result = trainer.evaluate(RESNET, seed=0)
    assert result.ok, result.reason
    m = result.metrics
    assert len(m["val_curve"]) == len(m["train_loss_curve"]) == m["epochs"] == 4
    assert m["val_acc_best"] > 0.5  # chance is 0.1
    assert m["train_loss_curve"][-1] < m["train_loss_curve"][0]
    assert result.reward == pytest.approx(max(m["val_curve"][-5:]) ** 3)
    assert m["params"] > 0 and m["flops"] > 0 and m["device"] == "cpu"
    assert m["images_per_s"] > 0 and 0 < m["train_time_s"] <= m["wall_time_s"]
    # The caller's global RNG and thread count are untouched.
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads


def test_same_seed_same_result(nb201):
    evaluator = get_evaluator("train", nb201, digits(), epochs=1, reward="last", max_train_batches_per_epoch=5, **TINY)
    first, again, other = (evaluator.evaluate(INDEX_0, seed=s) for s in (3, 3, 4))
    assert first.ok and first.reward == first.metrics["val_curve"][-1]
    assert (first.reward, first.metrics["train_loss_curve"]) == (again.reward, again.metrics["train_loss_curve"])
    assert first.metrics["train_loss_curve"] != other.metrics["train_loss_curve"]


class _NaNAfter(torch.nn.Module):
    """Wraps a child so that its output turns NaN from the `bad_step`-th call on."""

    def __init__(self, model, bad_step):
        super().__init__()
        self.model, self.calls, self.bad_step = model, 0, bad_step

    def forward(self, x):
        self.calls += self.training
        out = self.model(x)
        return out * float("nan") if self.training and self.calls >= self.bad_step else out


def test_nan_loss_is_a_failed_result(monkeypatch, nb201):
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a: _NaNAfter(build(*a), bad_step=5))
    evaluator = get_evaluator("train", nb201, digits(), epochs=2, max_train_batches_per_epoch=3, **TINY)
    result = evaluator.evaluate(RESNET)
    assert not result.ok and result.reward is None
    assert result.reason == "nan loss at epoch 2 step 2"
    assert len(result.metrics["val_curve"]) == 1


def test_exploding_learning_rate_is_a_failed_result(nb201):
    evaluator = get_evaluator("train", nb201, digits(), epochs=1, lr=1e30, grad_clip=0, max_train_batches_per_epoch=10,
                              **TINY)
    result = evaluator.evaluate(RESNET)
    assert not result.ok and result.reason.startswith("nan loss at epoch 1 step ")


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("boom"), "RuntimeError: boom"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory: CUDA out of memory"),
])
def test_a_crashing_child_is_a_failed_result(monkeypatch, trainer, error, reason):
    def explode(*args):
        raise error

    monkeypatch.setattr(train_module, "build_model", explode)
    result = trainer.evaluate(RESNET)
    assert not result.ok and result.reward is None and result.reason.startswith(reason)


def test_an_invalid_arch_is_a_failed_result(trainer):
    result = trainer.evaluate("garbage")
    assert not result.ok and "InvalidArchitecture" in result.reason


def test_auxiliary_head_and_drop_path_ramp(monkeypatch):
    built = []
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a: built.append(build(*a)) or built[-1])
    darts = get_space("darts")
    evaluator = get_evaluator("train", darts, digits(), epochs=2, max_train_batches_per_epoch=2, auxiliary_weight=0.4,
                              drop_path=0.2, channels=4, layers=3, num_threads=1)
    result = evaluator.evaluate(darts.sample(np.random.default_rng(0)), seed=0)
    assert result.ok, result.reason
    # Ramped linearly from 0: the last of 2 epochs trains at 0.2 * 1/2.
    assert built[-1].drop_path_prob == pytest.approx(0.1)
    assert result.metrics["params"] < sum(p.numel() for p in built[-1].parameters())


def test_scheduled_drop_path_ramps_per_step_and_by_depth(monkeypatch):
    """NASNet's ScheduledDropPath: cell i of n at step t of T drops with p (i + 1) / n * t / T."""
    from raynas.workers.nets import cell as cell_module

    seen = []
    forward = cell_module.Cell.forward
    monkeypatch.setattr(cell_module.Cell, "forward",
                        lambda self, s0, s1, p: (self.training and seen.append(p)) or forward(self, s0, s1, p))
    darts = get_space("darts")
    evaluator = get_evaluator("train", darts, digits(), epochs=2, max_train_batches_per_epoch=2, drop_path=0.2,
                              drop_path_schedule="nasnet", channels=4, layers=3, num_threads=1)
    result = evaluator.evaluate(darts.sample(np.random.default_rng(0)), seed=0)
    assert result.ok, result.reason
    # 2 epochs x 2 steps, 3 cells per step.
    expected = [0.2 * (i + 1) / 3 * t / 4 for t in range(4) for i in range(3)]
    assert seen == pytest.approx(expected)


def test_language_model_on_a_tiny_corpus(tmp_path):
    words = "the cat sat on the mat and the dog ran to the cat".split()
    for split, lines in (("train", 40), ("valid", 6), ("test", 6)):
        (tmp_path / f"ptb.{split}.txt").write_text(
            "\n".join(" ".join(words[(i + j) % len(words)] for j in range(8)) for i in range(lines)) + "\n")
    evaluator = get_evaluator("train", "rnn", load_dataset("ptb", tmp_path), epochs=2, batch_size=4,
                              bptt=10, channels=16, num_threads=1)
    result = evaluator.evaluate(get_space("rnn").sample(np.random.default_rng(0)), seed=0)
    assert result.ok, result.reason
    ppl = result.metrics["val_curve"]
    assert len(ppl) == 2 and all(1 < p < math.inf for p in ppl)
    assert result.metrics["val_ppl_best"] == min(ppl)
    assert result.reward == pytest.approx(80 / min(ppl) ** 2)
    assert result.metrics["tokens_per_s"] > 0
