"""Random search: uniform samples from the space, the baseline every other
strategy has to beat (NAS-Bench-201, 100 evaluations: 93.70 on CIFAR-10)."""

from __future__ import annotations

from collections.abc import Hashable

from raynas.controller.strategies import register
from raynas.controller.strategies.base import Strategy
from raynas.workers.evaluation import EvalResult


@register
class RandomStrategy(Strategy):
    name = "random"
    summary = "uniform random architectures (Li & Talwalkar's baseline)"

    def propose(self, n: int = 1) -> list[Hashable]:
        return [self.space.sample(self.rng) for _ in range(n)]

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        """Nothing to learn: every proposal is independent of past results."""
