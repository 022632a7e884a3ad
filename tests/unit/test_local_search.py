"""Local search (White et al.) and the neighbourhood it climbs through: one-token changes on
every token space, climbs to a local optimum and restarts, proposals while results are
outstanding, and resume that continues exactly."""

from __future__ import annotations

import numpy as np
import pytest
from contracts import check_resumes_with_results_outstanding, run_sequential

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.neighbourhood import fresh, neighbours, one_hot
from raynas.search_spaces import get_space
from raynas.search_spaces.nb201 import NB201Arch
from raynas.workers.evaluation import EvalResult

NB201 = get_space("nb201")
MACRO = get_space("macro")


def convs(arch: NB201Arch) -> float:
    """A reward with one optimum (every edge nor_conv_3x3) and no other local optimum."""
    return float(sum(op == "nor_conv_3x3" for op in arch.ops))


def token_distance(space, a, b) -> int:
    return sum(x != y for x, y in zip(space.encode(a), space.encode(b)))


@pytest.mark.parametrize("space_name", ["nb201", "macro", "darts", "nasrnn"])
def test_neighbours_are_one_token_away_each_once(space_name):
    space = get_space(space_name)
    arch = space.sample(np.random.default_rng(0))
    around = neighbours(space, arch)
    assert len({str(a) for a in around}) == len(around) > 0
    assert all(token_distance(space, arch, a) == 1 for a in around)
    assert all(space.validate(a) == a for a in around)


def test_nb201_has_24_neighbours_and_a_30_column_one_hot():
    arch = NB201.sample(np.random.default_rng(1))
    assert len(neighbours(NB201, arch)) == 6 * 4
    x = one_hot(NB201, [arch, *neighbours(NB201, arch)])
    assert x.shape == (25, 30) and (x.sum(axis=1) == 6).all()
    # A neighbour differs from the centre in one edge: two columns.
    assert ((x[1:] != x[0]).sum(axis=1) == 2).all()


def test_fresh_avoids_architectures_seen():
    rng = np.random.default_rng(2)
    seen = {str(NB201.sample(np.random.default_rng(2)))}
    assert str(fresh(NB201, rng, seen)) not in seen


@pytest.mark.parametrize("move", ["best", "first"])
def test_climbs_to_the_optimum_of_a_unimodal_reward(move):
    s = get_strategy("local_search", NB201, seed=0, move=move)
    proposed = run_sequential(s, convs, 6 * 24 + 1)
    assert max(map(convs, proposed)) == 6
    assert len({str(a) for a in proposed}) == len(proposed)  # nothing proposed twice


def test_best_move_proposes_the_whole_neighbourhood_first():
    s = get_strategy("local_search", NB201, seed=3, move="best")
    proposed = run_sequential(s, convs, 25)
    start = proposed[0]
    assert {str(a) for a in proposed[1:]} == {str(a) for a in neighbours(NB201, start)}
    # The next proposal is a neighbour of the best of them.
    best = max(proposed[1:], key=convs)
    assert token_distance(NB201, s.propose(1)[0], best) == 1


def test_first_move_leaves_the_centre_at_the_first_better_result():
    s = get_strategy("local_search", NB201, seed=3, move="first")
    (start,) = s.propose(1)
    s.observe(start, EvalResult(str(start), 0.5))
    (first,) = s.propose(1)
    s.observe(first, EvalResult(str(first), 0.9))
    assert token_distance(NB201, s.propose(1)[0], first) == 1


def test_restarts_from_a_random_architecture_at_a_local_optimum():
    s = get_strategy("local_search", NB201, seed=4, move="best")
    # The start beats every neighbour: a local optimum after 24 results.
    proposed = []
    (start,) = s.propose(1)
    s.observe(start, EvalResult(str(start), 1.0))
    for arch in s.propose(24):
        proposed.append(arch)
        s.observe(arch, EvalResult(str(arch), 0.0))
    assert {str(a) for a in proposed} == {str(a) for a in neighbours(NB201, start)}
    (restart,) = s.propose(1)
    assert token_distance(NB201, restart, start) > 1 and s.centre is None


def test_failed_results_never_become_the_centre():
    s = get_strategy("local_search", NB201, seed=5)
    (arch,) = s.propose(1)
    s.observe(arch, EvalResult.failure(str(arch), "crashed"))
    assert s.centre is None
    (other,) = s.propose(1)
    assert str(other) != str(arch)


def test_keeps_proposing_distinct_architectures_while_results_are_outstanding():
    s = get_strategy("local_search", NB201, seed=6, move="best")
    (start,) = s.propose(1)
    s.observe(start, EvalResult(str(start), 0.5))
    # W = 40 workers: the 24 neighbours, then, believing none will improve, a new start's.
    batch = s.propose(40)
    assert len({str(a) for a in batch}) == 40
    assert {str(a) for a in batch[:24]} == {str(a) for a in neighbours(NB201, start)}
    # A late result better than the centre still moves the climb.
    s.observe(batch[3], EvalResult(str(batch[3]), 0.9))
    assert s.centre is not None


def test_max_neighbours_proposes_a_random_subset():
    s = get_strategy("local_search", MACRO, seed=7, max_neighbours=5, move="best")
    (start,) = s.propose(1)
    s.observe(start, EvalResult(str(start), 0.5))
    around = s.propose(5)
    assert all(token_distance(MACRO, start, a) == 1 for a in around)
    assert s.queue == []


def test_resume_continues_like_the_uninterrupted_run_on_a_space_with_skip_connections():
    def reward(arch):
        return float(sum(MACRO.encode(arch)) % 17)

    check_resumes_with_results_outstanding(lambda: get_strategy("local_search", MACRO, seed=8), reward,
                                           in_flight=3, before=30, after=40, outstanding_first=True)


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="strategy_options.move"):
        get_strategy("local_search", NB201, move="steepest")
    with pytest.raises(ConfigError, match="strategy_options.starts"):
        get_strategy("local_search", NB201, starts=0)
