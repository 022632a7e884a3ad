"""The rewards a policy learns from, without torch: Zoph & Le's moving-average baseline and the
reward of a child whatever became of it. The scheme's recorder keeps the shared baseline, and
needs nothing else of the policy (controller/runtime/ledger.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raynas.common import check_number
from raynas.workers.evaluation import EvalResult


class EmaBaseline:
    """Zoph & Le's baseline: an exponential moving average of past rewards,
    b <- b - (1 - decay)(b - R) per reward (ENAS's update; ENAS uses decay 0.99).

    `value` is None until the first reward, so the first batch is not measured
    against an arbitrary starting point.
    """

    def __init__(self, decay: float = 0.95):
        self.decay = check_number("baseline_decay", decay, 0, 1, high_open=True)
        self.value: float | None = None

    def update(self, rewards: Sequence[float]) -> None:
        for r in rewards:
            self.value = float(r) if self.value is None else self.value - (1 - self.decay) * (self.value - r)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value, self.decay = state["value"], state["decay"]


def reward_of(result: EvalResult) -> float:
    """A failed (or cancelled) child gets the worst reward, so the controller learns to avoid crashes."""
    return result.reward if result.ok and result.reward is not None else 0.0
