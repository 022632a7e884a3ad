"""The contracts of the plug-in interfaces, as functions any test can run on any implementation:
the contract suites (tests/contract/) run them on every registered dataset and evaluator, and a
plug-in's own tests (tests/unit/test_plugins.py) on theirs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.workers.datasets import LANGUAGE_MODEL, Dataset
from raynas.workers.datasets.images import MemorySource
from raynas.workers.evaluation import CANCELLED, FAILED, Cancelled, Evaluator

# -- datasets ------------------------------------------------------------------------------------


def check_dataset(dataset: Dataset, seed: int = 3) -> None:
    """The whole contract, for any dataset; a plug-in's own tests call it too."""
    data = dataset.load(seed)
    assert data.task == dataset.task and data.name == dataset.name
    for described in (data.info(), data.preprocessing(), dataset.describe()):
        json.dumps(described)
    assert data.sizes["train"] > 0 and data.sizes["val"] > 0
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.load(seed).sizes == data.sizes
    with pytest.raises(ConfigError) as bad:
        type(dataset)(dataset.path, {"no_such_option": 1})
    assert bad.value.field == "dataset_options.no_such_option"
    if data.task == LANGUAGE_MODEL:
        _check_text(data)
    else:
        _check_images(dataset, data, seed)


def _check_text(data) -> None:
    for split in ("train", "val", "test"):
        stream = getattr(data, split)
        assert stream.dtype == torch.int64 and 0 <= int(stream.min()) and int(stream.max()) < data.vocab_size
    assert data.batchify("train", 2).shape == (data.sizes["train"] // 2, 2)
    assert len(data.preprocessing()["vocab"]) == data.vocab_size


def _check_images(dataset: Dataset, data, seed: int) -> None:
    splits = data.splits
    parts = [set(splits[s].tolist()) for s in splits if s != "test" or "val" in splits]
    assert sum(len(p) for p in parts) == len(set().union(*parts)), "splits overlap"
    assert all(np.array_equal(splits[s], dataset.load(seed).splits[s]) for s in splits), "the seed fixes the splits"
    channels, height, width = data.in_channels, data.raw["height"], data.raw["width"]
    prep = data.preprocessing()
    assert len(prep["mean"]) == len(prep["std"]) == channels and len(prep["class_names"]) == data.num_classes

    def epoch(generator_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(data.train_batches(16, torch.Generator().manual_seed(generator_seed), max_batches=3))

    batches = epoch(0)
    assert 0 < len(batches) <= 3
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (channels, height, width)
        assert y.dtype == torch.int64 and len(y) == len(x)
        labelled = y[y != data.ignore_index] if data.task == "segmentation" else y
        assert ((0 <= labelled) & (labelled < data.num_classes)).all()
        if data.task == "segmentation":
            assert y.shape[1:] == (height, width)
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    if data.sizes["train"] > 16:
        assert not torch.equal(batches[0][1], epoch(1)[0][1]) or not torch.equal(batches[0][0], epoch(1)[0][0])
    seen = sum(len(y) for _, y in data.eval_batches("val", 7))
    assert seen == data.sizes["val"]
    x, _ = data.tensors("train")
    if isinstance(data.source, MemorySource):
        # Normalised by the training split's own statistics.
        assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert data.sample_input().shape == (1, channels, height, width)
    whole = data.whole_training_set()
    if data.has_test:
        assert whole.sizes["train"] == data.sizes["train"] + data.sizes["val"]
        assert whole.sizes["val"] == data.sizes["test"]
    else:
        assert whole is data
    first, second = data.halves(0.5)
    assert first.sizes["train"] + second.sizes["train"] == data.sizes["train"] + data.sizes["val"]


# -- evaluators -----------------------------------------------------------------------------------


def check_evaluator(evaluator: Evaluator, arch, tmp_path: Path, other=None) -> None:
    """The whole contract for `evaluator` on `arch` (None: it derives its own); `other` is another
    architecture of the space, for the checkpoint check."""
    check_plain_results(evaluator, arch)
    check_reports(evaluator, arch)
    for budget in (0, -1, 10**6, "3", 2.5):
        check_bad_budget(evaluator, arch, budget)
    check_bad_architecture(evaluator, arch)
    check_seeded(evaluator, arch)
    check_cancel(evaluator, arch)
    check_continue(evaluator, arch, tmp_path, other)


def check_plain_results(evaluator, arch):
    result = evaluator.evaluate(arch, seed=1)
    assert result.ok, result.reason
    assert result.metrics["budget"] == evaluator.fidelity.default
    assert json.loads(json.dumps(result.to_dict()))["reward"] == result.reward


def check_reports(evaluator, arch):
    reports = []
    result = evaluator.evaluate(arch, seed=1, report=reports.append)
    # A staged search (rsws) numbers the reports of its later stages within each stage.
    epochs = [r["epoch"] for r in reports if r.get("stage", "train") == "train"]
    assert epochs and epochs == sorted(set(epochs)) and epochs[-1] == result.metrics["budget"]
    staged = [(r["stage"], r["epoch"]) for r in reports if r.get("stage", "train") != "train"]
    assert len(staged) == len(set(staged))


def check_bad_budget(evaluator, arch, budget):
    result = evaluator.evaluate(arch, seed=1, budget=budget)
    assert result.status == FAILED and "budget" in result.reason


def check_bad_architecture(evaluator, arch):
    result = evaluator.evaluate("not an architecture" if arch is not None else "|bogus|", seed=1)
    assert result.status == FAILED and result.reason


def check_seeded(evaluator, arch):
    first, second = evaluator.evaluate(arch, seed=5), evaluator.evaluate(arch, seed=5)
    assert first.reward == second.reward and first.arch == second.arch


def check_cancel(evaluator, arch):
    def stop(report):
        raise Cancelled("stopped by the scheduler")

    result = evaluator.evaluate(arch, seed=1, report=stop)
    assert result.status == CANCELLED and result.reward is None


def check_continue(evaluator, arch, tmp_path, other=None):
    fidelity = evaluator.fidelity
    budgets = fidelity.choices or tuple(range(1, fidelity.maximum + 1))
    if len(budgets) < 2:
        return
    low, high = budgets[0], budgets[-1]
    checkpoint = str(tmp_path / "evaluation.ckpt")
    first = evaluator.evaluate(arch, seed=2, budget=low, checkpoint=checkpoint)
    continued = evaluator.evaluate(arch, seed=2, budget=high, checkpoint=checkpoint)
    straight = evaluator.evaluate(arch, seed=2, budget=high)
    assert first.ok and continued.ok and straight.ok
    assert first.metrics["budget"] == low and continued.metrics["budget"] == high
    assert continued.metrics["continued_from_epoch"] == low
    assert continued.reward == straight.reward
    assert continued.metrics.get("val_curve") == straight.metrics.get("val_curve")
    if other is None:
        return
    # A checkpoint belongs to its architecture: another one is refused, not silently continued.
    refused = evaluator.evaluate(other, seed=2, budget=high, checkpoint=checkpoint)
    assert refused.status == FAILED and "checkpoint" in refused.reason


def run_sequential(strategy, reward, evaluations: int) -> list:
    """Propose one architecture at a time and observe `reward(arch)` for it; the architectures proposed."""
    from raynas.workers.evaluation import EvalResult

    proposed = []
    for _ in range(evaluations):
        (arch,) = strategy.propose(1)
        proposed.append(arch)
        strategy.observe(arch, EvalResult(str(arch), reward(arch)))
    return proposed


def check_resumes_with_results_outstanding(make, reward, in_flight: int, before: int, after: int,
                                           outstanding_first: bool = False) -> None:
    """A strategy checkpointed with `in_flight` proposals unobserved (proposed after `before`
    observed ones, or before them with `outstanding_first`) and restored by `make()` goes on as the
    uninterrupted one once the outstanding results arrive: the next `after` proposals are the same."""
    from raynas.workers.evaluation import EvalResult

    original = make()
    if outstanding_first:
        pending = original.propose(in_flight)
        run_sequential(original, reward, before)
    else:
        run_sequential(original, reward, before)
        pending = original.propose(in_flight)
    resumed = make()
    resumed.load_state_dict(original.state_dict())
    for arch in pending:
        for s in (original, resumed):
            s.observe(arch, EvalResult(str(arch), reward(arch)))
    expected = [str(a) for a in run_sequential(original, reward, after)]
    assert [str(a) for a in run_sequential(resumed, reward, after)] == expected
