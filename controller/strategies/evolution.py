"""Regularized evolution (Real et al. 2019, "aging evolution").

Defaults are NAS-Bench-201's REA settings for its 100-evaluation protocol:
population 10, tournament sample 3 (D-X-Y/AutoDL-Projects@f46486e,
scripts-search/NAS-Bench-201-algos/R-EA.sh and exps/NATS-algos/regularized_ea.py:
--ea_population 10 --ea_sample_size 3). As there and in Real et al.'s
reference code, tournament members are drawn with replacement.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from raynas.common import ConfigError, check_int
from raynas.common.options import option
from raynas.controller.strategies import register
from raynas.controller.strategies.base import Strategy
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult


@dataclass(frozen=True)
class EvolutionOptions:
    population_size: int = option(10, "members alive at once; the oldest dies when a new one joins", most=10_000)
    sample_size: int = option(3, "members drawn (with replacement) for each tournament", most=10_000)

    def __post_init__(self):
        check_int("population_size", self.population_size)
        check_int("sample_size", self.sample_size)
        if self.sample_size > self.population_size:
            raise ConfigError("sample_size", f"{self.sample_size} exceeds population_size",
                              f"1..{self.population_size}")


@register
class EvolutionStrategy(Strategy):
    """Random proposals until `population_size` results are in; then each
    proposal mutates the best of `sample_size` random members. Every result
    joins the population and the oldest member dies (aging, not the worst:
    the regularisation that gives the method its name). Failed results never
    join, so a crashing architecture cannot become a parent.

    Proposals read the population as it stands, so several may go out before
    any result comes back (asynchronous workers).

    Under a scheduler that stops children early (ASHA), a member that reached more of the
    full budget wins a tournament against one that reached less, whatever their rewards
    (it outlasted its peers at every rung it passed); rewards decide between members of
    the same fidelity. Early-stopped members join and age like any other.
    """

    name = "evolution"
    summary = "regularized (aging) evolution, Real et al."
    Options = EvolutionOptions

    def __init__(self, space: SearchSpace, seed: int = 0, options: EvolutionOptions | None = None):
        super().__init__(space, seed, options)
        self.population_size = self.options.population_size
        self.sample_size = self.options.sample_size
        #: (architecture, reward), oldest first.
        self.population: deque[tuple[Hashable, float]] = deque(maxlen=self.population_size)
        #: The share of the full budget each member reached, in the population's order.
        self.fidelities: deque[float] = deque(maxlen=self.population_size)

    def propose(self, n: int = 1) -> list[Hashable]:
        return [self._child() for _ in range(n)]

    def _child(self) -> Hashable:
        if len(self.population) < self.population_size:
            return self.space.sample(self.rng)
        picks = self.rng.integers(len(self.population), size=self.sample_size)
        best = max(picks, key=lambda i: (self.fidelities[i], self.population[i][1]))
        parent, _ = self.population[best]
        return self.space.mutate(parent, self.rng)

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        if result.ok and result.reward is not None:
            # The deque's maxlen drops the oldest member.
            self.population.append((arch, result.reward))
            self.fidelities.append(self.fidelity(result))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["population"] = [[self.space.format(arch), reward] for arch, reward in self.population]
        state["fidelities"] = list(self.fidelities)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = deque(
            ((self.space.parse(text), reward) for text, reward in state["population"]), maxlen=self.population_size
        )
        # States written before fidelities were kept hold whole results only.
        self.fidelities = deque(state.get("fidelities", [1.0] * len(self.population)), maxlen=self.population_size)
