"""The evaluator interface: architecture in, `EvalResult` out, never an exception.

Evaluators run inside worker processes (in-process for tests, Ray actors for
real), so results are plain data that serialise to one JSON line.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable

OK = "ok"
FAILED = "failed"


@dataclass
class EvalResult:
    """What one evaluation produced.

    `reward` is what strategies optimise (None when the evaluation failed);
    `metrics` carries everything else: `val_curve`, `params`, `flops`,
    `wall_time_s`, `device`, and evaluator-specific figures such as the
    table's `test_acc_200ep` or `simulated_time_s`.
    """

    arch: str
    reward: float | None
    status: str = OK
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        return cls(**{k: data[k] for k in ("arch", "reward", "status", "reason", "metrics") if k in data})

    @classmethod
    def failure(cls, arch: str, reason: str, **metrics) -> "EvalResult":
        return cls(arch=arch, reward=None, status=FAILED, reason=reason, metrics=metrics)


def resolve_arch(space, arch: Hashable) -> Hashable:
    """`arch` as a validated architecture of `space`; strings (what specs, logs and
    the wire carry) are parsed first. Raises InvalidArchitecture."""
    return space.validate(space.parse(arch) if isinstance(arch, str) else arch)


class Evaluator(ABC):
    """Scores architectures of one search space."""

    #: Name used in specs and on the command line.
    name: str = ""

    @abstractmethod
    def _evaluate(self, arch: Hashable, seed: int) -> EvalResult:
        """Do the work; may raise, the public `evaluate` turns that into a failed result."""

    def evaluate(self, arch: Hashable, seed: int = 0) -> EvalResult:
        """Evaluate `arch` with a per-evaluation seed. Never raises: a crash,
        NaN or out-of-memory becomes a failed result naming the reason."""
        start = time.perf_counter()
        try:
            result = self._evaluate(arch, seed)
        except Exception as exc:  # noqa: BLE001 - a crashed child must not crash the search
            reason = f"{type(exc).__name__}: {exc}"
            if "out of memory" in str(exc).lower():
                reason = f"out of memory: {exc}"
            return EvalResult.failure(
                str(arch), reason,
                wall_time_s=time.perf_counter() - start,
                traceback=traceback.format_exc(limit=5),
            )
        result.metrics.setdefault("wall_time_s", time.perf_counter() - start)
        return result
