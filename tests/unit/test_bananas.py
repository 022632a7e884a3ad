"""The BANANAS-style strategy: its ensemble learns, proposals are the ranked unproposed
neighbours of the best results, distinct while results are outstanding, on any token space,
and a resumed strategy continues exactly."""

from __future__ import annotations

import numpy as np
import pytest
from contracts import check_resumes_with_results_outstanding, run_sequential

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.bananas import BananasOptions, Ensemble
from raynas.controller.strategies.neighbourhood import neighbours, one_hot
from raynas.search_spaces import get_space
from raynas.workers.evaluation import EvalResult

NB201 = get_space("nb201")
#: Small and quick: the tests check behaviour, not the predictor's quality at BANANAS' sizes.
QUICK = {"initial": 5, "epochs": 60, "ensemble": 3, "hidden": 16, "layers": 2, "refit_every": 3}


def convs(arch) -> float:
    return float(sum(op == "nor_conv_3x3" for op in arch.ops))


def test_the_ensemble_learns_a_reward_it_can_express():
    rng = np.random.default_rng(0)
    archs = list({str(a): a for a in (NB201.sample(rng) for _ in range(300))}.values())
    x, y = one_hot(NB201, archs), np.array([convs(a) for a in archs])
    ensemble = Ensemble(BananasOptions(epochs=300), x.shape[1], rng)
    ensemble.fit(x[:200], (y[:200] - y.mean()) / y.std())
    predictions = ensemble.predict(x[200:])
    assert predictions.shape == (5, len(archs) - 200)
    assert np.corrcoef(predictions.mean(axis=0), y[200:])[0, 1] > 0.9
    assert predictions.std(axis=0).mean() > 0  # members differ: the spread the acquisition reads


def test_random_until_initial_then_neighbours_of_the_best_results():
    s = get_strategy("bananas", NB201, seed=1, **QUICK)
    proposed = run_sequential(s, convs, 5)
    assert len({str(a) for a in proposed}) == 5
    for _ in range(10):
        (arch,) = s.propose(1)
        # Every parent is a result in hand (QUICK's 10 parents are all of them here).
        assert any(str(arch) in {str(n) for n in neighbours(NB201, p)} for p in proposed)
        proposed.append(arch)
        s.observe(arch, EvalResult(str(arch), convs(arch)))


def test_finds_better_architectures_than_its_random_start():
    s = get_strategy("bananas", NB201, seed=2, **QUICK)
    proposed = run_sequential(s, convs, 40)
    assert max(map(convs, proposed[5:])) > max(map(convs, proposed[:5]))


def test_distinct_proposals_while_results_are_outstanding():
    s = get_strategy("bananas", NB201, seed=3, **QUICK)
    run_sequential(s, convs, 5)
    batch = s.propose(8)  # eight workers, no result back yet
    assert len({str(a) for a in batch}) == 8
    for arch in batch[:4]:
        s.observe(arch, EvalResult(str(arch), convs(arch)))
    more = s.propose(8)
    assert not {str(a) for a in more} & {str(a) for a in batch}


def test_failed_results_neither_train_nor_parent():
    s = get_strategy("bananas", NB201, seed=4, **QUICK)
    for arch in s.propose(6):
        s.observe(arch, EvalResult.failure(str(arch), "crashed"))
    assert s.results == []
    assert len(s.propose(3)) == 3  # still random: nothing to learn from


@pytest.mark.parametrize("space_name,acquisition", [("macro", "its"), ("darts", "ucb")])
def test_resume_continues_like_the_uninterrupted_run_on_other_spaces(space_name, acquisition):
    space = get_space(space_name)

    def reward(arch):
        return float(sum(space.encode(arch)) % 13)

    check_resumes_with_results_outstanding(
        lambda: get_strategy("bananas", space, seed=5, acquisition=acquisition, **QUICK), reward,
        in_flight=2, before=8, after=8)


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="strategy_options.acquisition"):
        get_strategy("bananas", NB201, acquisition="ei")
    with pytest.raises(ConfigError, match="strategy_options.lr"):
        get_strategy("bananas", NB201, lr=0.0)
    with pytest.raises(ConfigError, match="strategy_options.ensemble"):
        get_strategy("bananas", NB201, ensemble=1000)
