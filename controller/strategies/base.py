"""The strategy interface: propose architectures, observe their results, and declare what
the runtime must provide.

Strategies are plain Python: they own a seeded RNG, never touch Ray or the
filesystem, and checkpoint through `state_dict`. Each has a typed, frozen `Options`
dataclass validated from the spec's `strategy_options` without building anything
heavy. The same contract suite (tests/contract/test_strategy_contract.py) runs against
every registered strategy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from raynas.common import ConfigError, prefixed_errors
from raynas.common.options import NoOptions, parse_options
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult


class SharedPolicy(Protocol):
    """A policy whose weights can live on parameter shards (Zoph & Le's scheme): what a
    controller replica holds. Built by `Strategy.shared_policy`."""

    def weights(self) -> dict[str, Any]: ...

    def load_weights(self, weights: Mapping[str, Any]) -> None: ...

    def sample(self, n: int, first: int) -> list[tuple[Hashable, tuple]]: ...

    def gradients(self, values_batch: Sequence[tuple], rewards: Sequence[float],
                  baseline: float | None) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class SchemeSettings:
    """What the distributed scheme needs from a shared-policy strategy's options: the shards'
    learning rate and the decay of the reward baseline the ledger keeps for every replica."""

    lr: float
    baseline_decay: float


@dataclass(frozen=True)
class Needs:
    """What a strategy asks of the runtime; the runtime picks the execution path from this,
    never from the strategy's name.

    - `shared_policy`: the strategy can run as Zoph & Le's scheme on a cluster: its policy's
      weights on S parameter shards, K controller replicas sampling m children each. The class
      provides `shared_policy(space, seed, options)` and `scheme(options)`. Elsewhere (the
      local runtime, `nas bench`) it runs as an ordinary proposer.
    - `search`: each evaluation is a weight-sharing search that derives its own architecture
      (`propose` returns None): `search(options, space, dataset, evaluator)` returns the
      evaluator that runs one such search and then scores its result with `evaluator`. A
      module-level function, so that Ray workers can rebuild it.
    - `budgets`: `propose` returns `Proposal`s with budgets (multi-fidelity: successive
      halving, Hyperband); a proposal may continue an earlier evaluation from its checkpoint.
    """

    shared_policy: bool = False
    search: Callable[..., Any] | None = None
    budgets: bool = False


@dataclass(frozen=True)
class Proposal:
    """An architecture with the budget to evaluate it at (strategies that need budgets).

    `resume` names an earlier evaluation (its id) of the same architecture whose checkpoint
    this one continues, at a higher budget (a promotion).
    """

    arch: Hashable | None
    budget: int | None = None
    resume: str | None = None


def option_errors(names: Iterable[str]) -> contextlib.AbstractContextManager:
    """Errors about one of the options `names` name it as `strategy_options.<name>`."""
    return prefixed_errors("strategy_options", names)


class Strategy(ABC):
    """Proposes architectures and learns from their results.

    `propose` may be called again before earlier proposals are observed
    (asynchronous dispatch); `observe` receives every proposed architecture
    exactly once, in any order, failed (and cancelled) results included.
    """

    name: ClassVar[str] = ""
    #: One line for help texts.
    summary: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    Options: ClassVar[type] = NoOptions
    #: The budget a whole evaluation reaches when a scheduler (Ray Tune's ASHA) may stop
    #: children before it: set by whoever runs the strategy so; None, every result is whole.
    full_budget: int | None = None

    def __init__(self, space: SearchSpace, seed: int = 0, options: Any = None):
        self.space = space
        self.seed = seed
        self.options = self.parse_options(space, {}) if options is None else options
        self.rng = np.random.default_rng(seed)

    @classmethod
    def parse_options(cls, space: SearchSpace, options: Mapping[str, Any]) -> Any:
        """The typed options from the spec's `strategy_options`, checked against `space`.
        Cheap: nothing is built. Errors name `strategy_options.<field>`."""
        parsed = parse_options(cls.Options, options, "strategy_options", f"the {cls.name} strategy")
        with option_errors(f.name for f in dataclasses.fields(cls.Options)):
            cls.check_space(space, parsed)
        return parsed

    @classmethod  # noqa: B027 - most strategies take any space: not abstract
    def check_space(cls, space: SearchSpace, options: Any) -> None:
        """Refuse a space (or options that the space cannot honour) with a ConfigError."""

    @abstractmethod
    def propose(self, n: int = 1) -> list[Any]:
        """Return `n` architectures to evaluate next (`Proposal`s if the strategy needs budgets)."""

    @abstractmethod
    def observe(self, arch: Hashable, result: EvalResult) -> None:
        """Learn from one finished evaluation of an architecture this strategy proposed."""

    def fidelity(self, result: EvalResult) -> float:
        """The share of the full budget `result` reached (its `metrics["budget"]`): 1.0 unless a
        scheduler stopped the child early, so that a 1-epoch accuracy never passes for a 300-epoch one."""
        budget = result.metrics.get("budget")
        if self.full_budget is None or budget is None:
            return 1.0
        return min(1.0, budget / self.full_budget)

    def signals(self) -> list[dict[str, Any]]:
        """The strategy's own figures, one dict of numbers per iteration, oldest first (NAO: its
        predictor's error on new results, reconstruction accuracy, new proposals). Part of the
        state, so a resumed strategy has them all; the job appends those it has not written yet
        to the run's strategy.jsonl and the `nas_strategy_signal` gauges. Most strategies have none."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this strategy is (JSON/pickle-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    @classmethod
    def shared_policy(cls, space: SearchSpace, seed: int, options: Any) -> SharedPolicy:
        raise ConfigError("strategy", f"{cls.name} has no policy to share over parameter shards")

    @classmethod
    def scheme(cls, options: Any) -> SchemeSettings:
        """The scheme's settings; refuses options that mean nothing once the policy is shared."""
        raise ConfigError("strategy", f"{cls.name} has no policy to share over parameter shards")
