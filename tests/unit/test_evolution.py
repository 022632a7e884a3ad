"""Regularized evolution: random start, tournaments, aging."""

from __future__ import annotations

import numpy as np
import pytest

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy
from raynas.search_spaces import get_space
from raynas.search_spaces.nb201 import NB201Arch
from raynas.workers.evaluation import EvalResult

NB201 = get_space("nb201")
ALL_NONE = NB201Arch(("none",) * 6)
ALL_CONV = NB201Arch(("nor_conv_3x3",) * 6)


def ok(arch, reward: float) -> EvalResult:
    return EvalResult(str(arch), reward)


def differences(a: NB201Arch, b: NB201Arch) -> int:
    return sum(x != y for x, y in zip(a.ops, b.ops))


def test_defaults_are_nas_bench_201s_rea_settings():
    s = get_strategy("evolution", NB201)
    assert (s.population_size, s.sample_size) == (10, 3)


def test_random_proposals_until_the_population_is_full_of_results():
    s = get_strategy("evolution", NB201, seed=4, population_size=3, sample_size=2)
    reference = np.random.default_rng(4)
    proposed = s.propose(2)
    s.observe(proposed[0], ok(proposed[0], 0.5))
    s.observe(proposed[1], EvalResult.failure(str(proposed[1]), "crashed"))  # does not count
    proposed += s.propose(3)
    for arch in proposed[2:4]:
        s.observe(arch, ok(arch, 0.1))
    assert proposed == [NB201.sample(reference) for _ in range(5)]
    # Three results are in: from now on every proposal is one mutation of a member.
    members = [arch for arch, _ in s.population]
    for child in s.propose(20):
        assert any(differences(child, m) == 1 for m in members)


def test_aging_removes_the_oldest_even_when_it_is_the_best():
    s = get_strategy("evolution", NB201, population_size=3, sample_size=1)
    archs = s.propose(4)
    for arch, reward in zip(archs, [0.9, 0.1, 0.2, 0.3]):
        s.observe(arch, ok(arch, reward))
    assert list(s.population) == [(archs[1], 0.1), (archs[2], 0.2), (archs[3], 0.3)]


@pytest.mark.parametrize("sample_size,share_from_best", [(1, 0.5), (2, 0.75)])
def test_tournament_mutates_the_best_of_its_sample(sample_size, share_from_best):
    s = get_strategy("evolution", NB201, seed=1, population_size=2, sample_size=sample_size)
    s.observe(ALL_NONE, ok(ALL_NONE, 0.1))
    s.observe(ALL_CONV, ok(ALL_CONV, 0.9))
    children = s.propose(400)
    assert all(min(differences(c, ALL_NONE), differences(c, ALL_CONV)) == 1 for c in children)
    # The best member wins every tournament it enters: P(enters) = 1 - (1/2)^sample_size.
    from_best = sum(differences(c, ALL_CONV) == 1 for c in children) / len(children)
    assert from_best == pytest.approx(share_from_best, abs=0.07)


@pytest.mark.parametrize("options,field", [
    ({"population_size": 0}, "population_size"),
    ({"population_size": -5}, "population_size"),
    ({"sample_size": 0}, "sample_size"),
    ({"population_size": 3, "sample_size": 4}, "sample_size"),
    ({"population_size": 2.5}, "population_size"),
])
def test_bad_options_name_themselves(options, field):
    with pytest.raises(ConfigError) as err:
        get_strategy("evolution", NB201, **options)
    assert err.value.field == f"strategy_options.{field}"
