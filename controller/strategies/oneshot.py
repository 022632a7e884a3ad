"""One-shot strategies (DARTS first and second order, NoisyDARTS, random search with weight
sharing; Auto-DeepLab's and NAO-WS are beside theirs): each evaluation is one supernet search
with its own seed, then the ordinary evaluation of the architecture(s) it names. DARTS'
selection protocol (run the search several times, train each derived cell briefly, keep the
best) is a job of R evaluations, run in parallel on the cluster, whose child training is the
space's shortened `nas train` recipe (controller/runtime/work.py).

They declare `Needs(search=...)`, so the runtime puts the search in front of the
evaluator (workers/oneshot/evaluator.py); the strategy itself has nothing to propose
but "one more search" and nothing to learn from results. Each names its search's settings
(workers/oneshot: their defaults are its paper's); the search and the space's supernet do the
rest.
"""

from __future__ import annotations

from collections.abc import Hashable

from raynas.controller.strategies import register
from raynas.controller.strategies.base import Needs, Strategy
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult
from raynas.workers.oneshot import (
    Darts2Config,
    NoisyDartsConfig,
    OneShotConfig,
    RSWSConfig,
    SupernetConfig,
    search_evaluator,
)


class OneShotStrategy(Strategy):
    """Options: its search's settings (`Options`, e.g. `OneShotConfig`'s fields: epochs,
    channels, layers, batch_size, lr, ...); the search is named after the strategy
    (`Options.algorithm`)."""

    needs = Needs(search=search_evaluator)
    Options: type[SupernetConfig] = OneShotConfig

    @classmethod
    def check_space(cls, space: SearchSpace, options: SupernetConfig) -> None:
        options.resolved(space.name)  # a supernet for this search, and what only the space decides

    def propose(self, n: int = 1) -> list[None]:
        return [None] * n

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        """Each search stands alone; the job keeps the best of them."""


@register
class Darts(OneShotStrategy):
    """DARTS, first order: alphas stepped on validation batches with the current weights."""

    name = "darts"
    summary = "DARTS, first order (one-shot, gradient-based)"


@register
class Darts2(OneShotStrategy):
    """DARTS, second order: the unrolled virtual step and its finite-difference Hessian-vector product."""

    name = "darts2"
    summary = "DARTS, second order: the unrolled step (one-shot)"
    Options = Darts2Config


@register
class NoisyDarts(OneShotStrategy):
    """NoisyDARTS: unbiased Gaussian noise on the skip connection's output while training."""

    name = "noisy-darts"
    summary = "NoisyDARTS: noise on the skip connection (one-shot)"
    Options = NoisyDartsConfig


@register
class RandomWeightSharing(OneShotStrategy):
    """Random search with weight sharing (Li & Talwalkar): shared weights trained one uniformly
    sampled architecture per minibatch, many architectures ranked with them, the best handed to
    the evaluator. Options: `RSWSConfig`'s fields."""

    name = "rsws"
    summary = "random search with weight sharing, Li & Talwalkar (one-shot)"
    Options = RSWSConfig
