"""The project's error hierarchy.

It lives in the lowest package so that every other package can raise and catch
the same types; the CLI prints them on one line and the gRPC servicer maps them
to status codes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any


class NasError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(NasError, ValueError):
    """A bad input: names the field, what was wrong and what is allowed."""

    def __init__(self, field: str, problem: str, allowed: Iterable[object] | str | None = None):
        self.field = field
        self.problem = problem
        if allowed is None or isinstance(allowed, str):
            self.allowed = allowed
        else:
            self.allowed = ", ".join(str(a) for a in allowed)
        message = f"{field}: {problem}"
        if self.allowed:
            message += f" (allowed: {self.allowed})"
        super().__init__(message)

    def __reduce__(self):
        # Ray pickles exceptions raised in actors; rebuild from the parts, not the message.
        return (type(self), (self.field, self.problem, self.allowed))


class NotFound(NasError, LookupError):
    """A search (or other named object) that does not exist."""


class Busy(NasError):
    """A request the service cannot take now (e.g. too many running searches); retry later."""


class NotReady(NasError):
    """A request that needs a state the object has not reached (e.g. a result before the search ran)."""


class InvalidArchitecture(ConfigError):
    """An architecture string or value that does not belong to its search space."""


class EvaluationError(NasError):
    """A child could not be evaluated (raised inside evaluators, turned into a failed result)."""


class DataError(NasError):
    """A data file (a user's dataset or a packaged table) that does not hold what it should."""


def check_int(field: str, value: object, low: int = 1, *, optional: bool = False) -> int | None:
    """`value` if it is an integer >= `low` (or None when `optional`), else a ConfigError naming `field`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")
        raise ConfigError(field, f"must be {kind}{' or None' if optional else ''}, got {value!r}")
    return value


def check_number(field: str, value: object, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> float | None:
    """`value` as a float if it is finite and in the interval (or None when `optional`), else a ConfigError."""
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(field, f"must be a number in {interval}{' or None' if optional else ''}, got {value!r}")
    return float(value)


@contextlib.contextmanager
def prefixed_errors(prefix: str, names: Iterable[str]) -> Iterator[None]:
    """Errors about one of `names` (the keys of an options mapping) name it `<prefix>.<name>`."""
    try:
        yield
    except ConfigError as exc:
        if exc.field not in names:
            raise
        raise ConfigError(f"{prefix}.{exc.field}", exc.problem, exc.allowed) from None


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`, else a ConfigError naming `field` and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(field, f"unknown value {value!r}", choices)
    return value
