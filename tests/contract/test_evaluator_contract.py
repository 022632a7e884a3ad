"""The contract every evaluator keeps (workers/evaluation/base.py), run on each of them at
a tiny size: plain-data results that name their budget, a report per epoch up to the
budget, no exception ever, the same seed giving the same result, cancellation through
the report callback, and a continued evaluation equal to one that ran straight through."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import CANCELLED, FAILED, Cancelled, Evaluator, get_evaluator
from raynas.workers.oneshot import OneShotConfig, RSWSConfig, rsws_evaluator, search_evaluator

TINY_TRAIN = {"epochs": 3, "batch_size": 64, "channels": 4, "layers": 1, "max_train_batches_per_epoch": 3,
              "max_train": 256}


def table() -> Evaluator:
    return get_evaluator("table", "nb201")


def train() -> Evaluator:
    return get_evaluator("train", "nb201", dataset="digits", **TINY_TRAIN)


def one_shot() -> Evaluator:
    space = get_space("nb201")
    config = OneShotConfig(algorithm="darts", epochs=2, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2)
    return search_evaluator(config, space, load_dataset("digits", max_train=256), table())


def rsws() -> Evaluator:
    config = RSWSConfig(epochs=2, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2, archs=4,
                        score_batches=1, block=2, rescore_top=1)
    return rsws_evaluator(config, get_space("nb201"), load_dataset("digits", max_train=256), table())


EVALUATORS = {"table": table, "train": train, "one-shot": one_shot, "rsws": rsws}
ONE_SHOT = ("one-shot", "rsws")


@pytest.fixture(scope="module", params=sorted(EVALUATORS))
def case(request):
    evaluator = EVALUATORS[request.param]()
    # A one-shot search derives its own architecture; the others take one of the space's.
    arch = None if request.param in ONE_SHOT else get_space("nb201").sample(np.random.default_rng(3))
    return evaluator, arch


def test_results_are_plain_data_that_name_their_budget(case):
    evaluator, arch = case
    result = evaluator.evaluate(arch, seed=1)
    assert result.ok, result.reason
    assert result.metrics["budget"] == evaluator.fidelity.default
    assert json.loads(json.dumps(result.to_dict()))["reward"] == result.reward


def test_reports_every_epoch_up_to_the_budget(case):
    evaluator, arch = case
    reports = []
    result = evaluator.evaluate(arch, seed=1, report=reports.append)
    # A staged search (rsws) numbers the reports of its later stages within each stage.
    epochs = [r["epoch"] for r in reports if r.get("stage", "train") == "train"]
    assert epochs and epochs == sorted(set(epochs)) and epochs[-1] == result.metrics["budget"]
    staged = [(r["stage"], r["epoch"]) for r in reports if r.get("stage", "train") != "train"]
    assert len(staged) == len(set(staged))


@pytest.mark.parametrize("budget", [0, -1, 10**6, "3", 2.5])
def test_a_bad_budget_is_a_failed_result_naming_it(case, budget):
    evaluator, arch = case
    result = evaluator.evaluate(arch, seed=1, budget=budget)
    assert result.status == FAILED and "budget" in result.reason


def test_a_bad_architecture_is_a_failed_result(case):
    evaluator, arch = case
    result = evaluator.evaluate("not an architecture" if arch is not None else "|bogus|", seed=1)
    assert result.status == FAILED and result.reason


def test_the_same_seed_gives_the_same_result(case):
    evaluator, arch = case
    first, second = evaluator.evaluate(arch, seed=5), evaluator.evaluate(arch, seed=5)
    assert first.reward == second.reward and first.arch == second.arch


def test_a_report_raising_cancelled_cancels(case):
    evaluator, arch = case

    def stop(report):
        raise Cancelled("stopped by the scheduler")

    result = evaluator.evaluate(arch, seed=1, report=stop)
    assert result.status == CANCELLED and result.reward is None


def test_continuing_from_its_checkpoint_equals_a_straight_run(case, tmp_path):
    evaluator, arch = case
    fidelity = evaluator.fidelity
    budgets = fidelity.choices or tuple(range(1, fidelity.maximum + 1))
    if len(budgets) < 2:
        pytest.skip(f"{evaluator.name} offers one budget only")
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
    # A checkpoint belongs to its architecture: another one is refused, not silently continued.
    other = get_space("nb201").sample(np.random.default_rng(4))
    refused = evaluator.evaluate(other, seed=2, budget=high, checkpoint=checkpoint)
    assert refused.status == FAILED and "checkpoint" in refused.reason
