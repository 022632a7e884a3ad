"""The evaluator interface: architecture and budget in, `EvalResult` out, never an exception.

An evaluation trains (or looks up) a child up to a budget (epochs), reports what it
sees after each epoch, and can keep its state in a checkpoint file so that a later
evaluation of the same child at a higher budget continues from it instead of starting
over: what ASHA's promotions and Hyperband need. Evaluators run inside worker processes
(in-process for tests, Ray actors for real), so results are plain data that serialise
to one JSON line.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from raynas.common import ConfigError, NasError
from raynas.common.options import NoOptions

OK = "ok"
FAILED = "failed"
#: Stopped on request before its budget (an executor's `cancel`); its metrics hold what it reached.
CANCELLED = "cancelled"

#: Called with one dict per finished epoch (`epoch` counts from 1); may raise `Cancelled`.
Report = Callable[[dict[str, Any]], None]


class Cancelled(NasError):
    """Raised by a report callback to stop the evaluation at the end of the current epoch."""


@dataclass
class EvalResult:
    """What one evaluation produced.

    `reward` is what strategies optimise (None unless the evaluation succeeded);
    `metrics` carries everything else: `budget` (epochs reached), `val_curve`,
    `params`, `flops`, `wall_time_s`, `device`, and evaluator-specific figures such
    as the table's `test_acc_200ep` or `simulated_time_s`.
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
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**{k: data[k] for k in ("arch", "reward", "status", "reason", "metrics") if k in data})

    @classmethod
    def failure(cls, arch: str, reason: str, **metrics) -> EvalResult:
        return cls(arch=arch, reward=None, status=FAILED, reason=reason, metrics=metrics)

    @classmethod
    def cancelled(cls, arch: str, reason: str = "cancelled", **metrics) -> EvalResult:
        return cls(arch=arch, reward=None, status=CANCELLED, reason=reason, metrics=metrics)


@dataclass(frozen=True)
class Fidelity:
    """The budgets an evaluator trains to, in `unit`s.

    `choices` None: any whole number from 1 to `maximum`. `default` is the budget of
    an evaluation that names none (the train evaluator's full schedule; the NB201
    table's 12-epoch column, the benchmark's search protocol).
    """

    maximum: int
    default: int
    choices: tuple[int, ...] | None = None
    unit: str = "epochs"

    def check(self, budget: int | None, field_name: str = "budget") -> int:
        """`budget` (or the default) if this evaluator can train to it, else a ConfigError."""
        if budget is None:
            return self.default
        allowed = self.choices if self.choices is not None else f"1..{self.maximum} {self.unit}"
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ConfigError(field_name, f"must be a whole number of {self.unit}, got {budget!r}", allowed)
        if (self.choices is not None and budget not in self.choices) or not 1 <= budget <= self.maximum:
            raise ConfigError(field_name, f"{budget} {self.unit} is not a budget of this evaluator", allowed)
        return budget


def resolve_arch(space, arch: Hashable) -> Hashable:
    """`arch` as a validated architecture of `space`; strings (what specs, logs and
    the wire carry) are parsed first. Raises InvalidArchitecture."""
    return space.validate(space.parse(arch) if isinstance(arch, str) else arch)


def _ignore(report: dict[str, Any]) -> None:
    """The report callback of a caller that does not listen."""


@dataclass(frozen=True)
class Scoring:
    """What an evaluator's figures are: the dataset they score on (what result.json names), the
    validation metric each epoch reports (what a scheduler compares at its rungs), and whether a
    larger value of it is better (`mode` max) or a smaller (min). The reward a strategy gets is
    always better when larger."""

    dataset: str
    metric: str = "val_acc"
    mode: str = "max"


class Evaluator(ABC):
    """Scores architectures of one search space, at a budget.

    A plug-in declares, before anything is built (class attributes and class methods, what a
    search's plan asks): its `name`, a one-line `summary`, its typed options (`Options`, a frozen
    dataclass of `raynas.common.options.option` fields with their bounds), whether it trains on
    the search's dataset (`needs_data`), the option that sets its full budget (`budget_option`),
    and for given options its budgets (`budgets`), what it scores (`scoring`), and the space and
    data it can score (`check`). `create` builds it where the evaluations run. Registered with
    `register_evaluator` (workers/evaluation/__init__.py).
    """

    #: Name used in specs and on the command line.
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: Whether its evaluations train on the search's dataset (the table evaluator looks them up).
    needs_data: ClassVar[bool] = False
    #: The option whose value is the full budget, which a scheduler sets to its R; None when the
    #: budgets are fixed (`budgets(options).choices`).
    budget_option: ClassVar[str | None] = None
    fidelity: Fidelity = Fidelity(maximum=1, default=1)

    @classmethod  # noqa: B027 - most evaluators take any space and data: not abstract
    def check(cls, space: Any, dataset: Any, options: Any) -> None:
        """Refuse a space or data (a `Dataset` reference, None when `needs_data` is False) that
        this evaluator cannot score with these options, with a ConfigError; nothing is read."""

    @classmethod
    def budgets(cls, options: Any) -> Fidelity:
        """The budgets evaluations with these options train to."""
        return cls.fidelity

    @classmethod
    def scoring(cls, space: Any, dataset: Any, options: Any) -> Scoring:
        """What evaluations with these options score, on which data (by default: validation
        accuracy on the search's dataset)."""
        return Scoring(dataset.name if dataset is not None else cls.name)

    @classmethod
    def one_shot_defaults(cls, space: Any, dataset: Any) -> dict[str, Any]:
        """Options under the spec's own when this evaluator scores what a one-shot search derives
        (the train evaluator: DARTS' selection protocol, the space's recipe shortened)."""
        return {}

    @classmethod
    def create(cls, space: Any, data: Any, options: Any) -> Evaluator:
        """The evaluator, built where evaluations run (`data`: the loaded dataset, None when
        `needs_data` is False); by default `cls(space, data, options)`."""
        return cls(space, data, options)

    @abstractmethod
    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        """Do the work; may raise, the public `evaluate` turns that into a failed (or cancelled) result."""

    def evaluate(self, arch: Hashable, seed: int = 0, budget: int | None = None, report: Report | None = None,
                 checkpoint: str | None = None) -> EvalResult:
        """Evaluate `arch` with a per-evaluation seed up to `budget` (None: the fidelity's default).

        `report` hears each finished epoch. `checkpoint` is a file this evaluation may
        keep its state in: if it holds an earlier evaluation of the same architecture
        and seed at a lower budget, training continues from there and gives the same
        result as training straight to `budget`. Never raises: a crash, NaN or
        out-of-memory becomes a failed result naming the reason, a `Cancelled` raised
        by `report` a cancelled one.
        """
        start = time.perf_counter()
        try:
            budget = self.fidelity.check(budget)
            result = self._evaluate(arch, seed, budget, report or _ignore, checkpoint)
        except Cancelled as exc:
            return EvalResult.cancelled(str(arch), str(exc) or "cancelled", wall_time_s=time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a crashed child must not crash the search
            reason = f"{type(exc).__name__}: {exc}"
            if "out of memory" in str(exc).lower():
                reason = f"out of memory: {exc}"
            return EvalResult.failure(
                str(arch), reason,
                wall_time_s=time.perf_counter() - start,
                traceback=traceback.format_exc(limit=5),
            )
        result.metrics.setdefault("budget", budget)
        result.metrics.setdefault("wall_time_s", time.perf_counter() - start)
        return result
