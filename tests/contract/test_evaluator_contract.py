"""The contract every evaluator keeps (workers/evaluation/base.py), run on each registered one,
built in or plugged in, and on the one-shot searches in front of one, at a tiny size: plain-data
results that name their budget, a report per epoch up to the budget, no exception ever, the same
seed giving the same result, cancellation through the report callback, a continued evaluation
equal to one that ran straight through, and declarations (options, budgets, scoring) that agree
with what it does. The checks are tests/contracts.py's, which a plug-in's own tests run too."""

from __future__ import annotations

import numpy as np
import pytest
from contracts import (
    check_bad_architecture,
    check_bad_budget,
    check_cancel,
    check_continue,
    check_plain_results,
    check_reports,
    check_seeded,
)

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import Evaluator, evaluator_names, get_evaluator
from raynas.workers.oneshot import AutoDeepLabConfig, NAOWSConfig, OneShotConfig, RSWSConfig, search_evaluator

TINY_TRAIN = {"epochs": 3, "batch_size": 64, "channels": 4, "layers": 1, "max_train_batches_per_epoch": 3}


def table() -> Evaluator:
    return get_evaluator("table", "nb201")


def train() -> Evaluator:
    return get_evaluator("train", "nb201", load_dataset("digits", max_train=256), **TINY_TRAIN)


def one_shot() -> Evaluator:
    space = get_space("nb201")
    config = OneShotConfig(epochs=2, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2)
    return search_evaluator(config, space, load_dataset("digits", max_train=256), table())


def rsws() -> Evaluator:
    config = RSWSConfig(epochs=2, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2, archs=4,
                        score_batches=1, block=2, rescore_top=1)
    return search_evaluator(config, get_space("nb201"), load_dataset("digits", max_train=256), table())


def nao_ws() -> Evaluator:
    config = NAOWSConfig(epochs=2, eval_every=1, channels=4, layers=3, batch_size=32, max_batches_per_epoch=2,
                         score_batch_size=32, controller={"seed_archs": 4, "new_archs": 2, "top_k": 4, "epochs": 3,
                                                          "hidden_size": 8, "embedding_size": 4, "mlp_hidden_size": 8})
    data = load_dataset("digits", max_train=256)
    child = get_evaluator("train", "darts", data, epochs=1, batch_size=32, channels=4, layers=3, cutout=0,
                          auxiliary_weight=0, drop_path=0, max_train_batches_per_epoch=2)
    return search_evaluator(config, get_space("darts"), data, child)


def recurrent(tmp_path_factory) -> Evaluator:
    import datafiles

    data, space = load_dataset("ptb", datafiles.ptb_folder(tmp_path_factory.mktemp("ptb"))), get_space("rnn", steps=3)
    child = get_evaluator("train", space, data, epochs=1, batch_size=8, channels=8, bptt=10)
    config = OneShotConfig(epochs=2, channels=8, batch_size=8, max_batches_per_epoch=2)
    return search_evaluator(config, space, data, child)


def autodeeplab() -> Evaluator:
    data = load_dataset("digits-seg", max_train=64, val_fraction=0.05)
    child = get_evaluator("train", "autodeeplab", data, epochs=1, channels=2, batch_size=8,
                          max_train_batches_per_epoch=1)
    config = AutoDeepLabConfig(epochs=2, channels=2, layers=1, batch_size=8, max_batches_per_epoch=2)
    return search_evaluator(config, get_space("autodeeplab"), data, child)


EVALUATORS = {"table": table, "train": train, "one-shot": one_shot, "rsws": rsws, "nao-ws": nao_ws,
              "recurrent": recurrent, "autodeeplab": autodeeplab}
#: Every one-shot search behind the one wrapper, on each kind of data: images (classification and
#: segmentation) and text.
ONE_SHOT = ("one-shot", "rsws", "nao-ws", "recurrent", "autodeeplab")


def test_every_registered_evaluator_has_a_case():
    assert set(evaluator_names()) <= set(EVALUATORS)


@pytest.fixture(scope="module", params=sorted(EVALUATORS))
def case(request, tmp_path_factory):
    make = EVALUATORS[request.param]
    evaluator = make(tmp_path_factory) if request.param == "recurrent" else make()
    # A one-shot search derives its own architecture; the others take one of the space's.
    arch = None if request.param in ONE_SHOT else get_space("nb201").sample(np.random.default_rng(3))
    return evaluator, arch


def test_results_are_plain_data_that_name_their_budget(case):
    check_plain_results(*case)


def test_reports_every_epoch_up_to_the_budget(case):
    check_reports(*case)


@pytest.mark.parametrize("budget", [0, -1, 10**6, "3", 2.5])
def test_a_bad_budget_is_a_failed_result_naming_it(case, budget):
    check_bad_budget(*case, budget)


def test_a_bad_architecture_is_a_failed_result(case):
    check_bad_architecture(*case)


def test_the_same_seed_gives_the_same_result(case):
    check_seeded(*case)


def test_a_report_raising_cancelled_cancels(case):
    check_cancel(*case)


def test_continuing_from_its_checkpoint_equals_a_straight_run(case, tmp_path):
    evaluator, arch = case
    if len(evaluator.fidelity.choices or range(evaluator.fidelity.maximum)) < 2:
        pytest.skip(f"{evaluator.name} offers one budget only")
    check_continue(evaluator, arch, tmp_path, get_space("nb201").sample(np.random.default_rng(4)))


@pytest.mark.parametrize("name", ["table", "train"])
def test_the_declarations_agree_with_the_evaluator(name):
    cls = type(EVALUATORS[name]())
    options = cls.Options()
    space = get_space("nb201")
    data = load_dataset("digits") if cls.needs_data else None
    assert cls.budgets(options).default == cls.create(space, data, options).fidelity.default
    scoring = cls.scoring(space, data, options)
    assert scoring.mode in ("max", "min") and scoring.metric.startswith("val_")
    assert scoring.dataset == (data.name if cls.needs_data else options.dataset)
