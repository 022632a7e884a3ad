"""The contract every strategy keeps, run for every registered strategy on every
registered search space it accepts (macro at its default depth); a new strategy or
space is covered by adding its file."""

from __future__ import annotations

import copy
import io
import zlib

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.strategies import Proposal, get_strategy, strategy_class, strategy_names
from raynas.search_spaces import get_space, space_names
from raynas.workers.evaluation import EvalResult


def _accepts(strategy: str, space: str) -> bool:
    try:
        strategy_class(strategy).parse_options(get_space(space), {})
    except ConfigError:
        return False
    return True


CASES = [(strategy, space) for strategy in strategy_names() for space in space_names() if _accepts(strategy, space)]


def check_proposal(strategy, space_obj, proposal) -> None:
    """What `propose` may return: an architecture of the space; None from a strategy whose
    evaluations derive their own (a weight-sharing search); a Proposal from one that needs budgets."""
    needs = type(strategy).needs
    if needs.search is not None:
        assert proposal is None
    elif needs.budgets:
        assert isinstance(proposal, Proposal) and space_obj.validate(proposal.arch) == proposal.arch
    else:
        assert space_obj.validate(proposal) == proposal


def test_every_strategy_accepts_some_space():
    assert {strategy for strategy, _ in CASES} == set(strategy_names())


def result_for(arch) -> EvalResult:
    """A deterministic result per architecture; about one in five fails."""
    code = zlib.crc32(str(arch).encode())
    if code % 5 == 0:
        return EvalResult.failure(str(arch), "synthetic failure")
    return EvalResult(str(arch), reward=(code % 1000) / 1000)


class Driver:
    """Drives a strategy like an asynchronous executor: proposes 1-3 at a time,
    observes a random subset of what is in flight, in random order, and
    always leaves something in flight.

    Its own state is plain data, so a deep copy continues identically.
    """

    def __init__(self, seed: int = 123):
        self.rng = np.random.default_rng(seed)
        self.in_flight: list = []

    def run(self, strategy, rounds: int) -> list[str]:
        proposed = []
        for _ in range(rounds):
            archs = strategy.propose(int(self.rng.integers(1, 4)))
            proposed += [str(a) for a in archs]
            self.in_flight += archs
            self.rng.shuffle(self.in_flight)
            done = int(self.rng.integers(0, len(self.in_flight)))
            for arch in self.in_flight[:done]:
                strategy.observe(arch, result_for(arch))
            self.in_flight = self.in_flight[done:]
        return proposed


def make(strategy: str, space: str, seed: int = 0):
    space_obj = get_space(space)
    return get_strategy(strategy, space_obj, seed=seed), space_obj


@pytest.mark.parametrize("strategy,space", CASES)
def test_propose_returns_n_valid_architectures(strategy, space):
    s, space_obj = make(strategy, space)
    for n in (1, 4):
        archs = s.propose(n)
        assert len(archs) == n
        for arch in archs:
            check_proposal(s, space_obj, arch)
    assert s.propose(0) == []


@pytest.mark.parametrize("strategy,space", CASES)
def test_observes_in_any_order_with_failures_and_keeps_proposing_valid_archs(strategy, space):
    s, space_obj = make(strategy, space)
    driver = Driver()
    driver.run(s, 15)
    for arch in driver.in_flight:
        s.observe(arch, EvalResult.failure(str(arch), "worker lost"))
    for arch in s.propose(3):
        check_proposal(s, space_obj, arch)


@pytest.mark.parametrize("strategy,space", CASES)
def test_same_seed_same_proposals(strategy, space):
    first = Driver().run(make(strategy, space, seed=7)[0], 12)
    second = Driver().run(make(strategy, space, seed=7)[0], 12)
    assert first == second


def assert_same_state(a, b, where="state"):
    """Equal nested state, tensors compared exactly (catches state that only
    nudges later proposals, such as optimizer moments)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _through_torch_save(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    # weights_only (torch's default): checkpoints must not need arbitrary unpickling.
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("round_trip", [lambda state: state, _through_torch_save], ids=["dict", "torch.save"])
@pytest.mark.parametrize("strategy,space", CASES)
def test_resumes_exactly_from_state_dict(strategy, space, round_trip):
    original, _ = make(strategy, space, seed=3)
    driver = Driver()
    driver.run(original, 10)
    state = round_trip(original.state_dict())
    resumed_driver = copy.deepcopy(driver)

    expected = driver.run(original, 10)
    resumed, _ = make(strategy, space, seed=3)
    resumed.load_state_dict(state)
    assert resumed_driver.run(resumed, 10) == expected
    assert_same_state(resumed.state_dict(), original.state_dict())


@pytest.mark.parametrize("strategy,space", CASES)
def test_several_proposals_in_flight_before_any_result(strategy, space):
    s, space_obj = make(strategy, space)
    in_flight = [arch for _ in range(3) for arch in s.propose(1)]
    for arch in reversed(in_flight):
        s.observe(arch, result_for(arch))
    for arch in s.propose(2):
        check_proposal(s, space_obj, arch)
