"""The project's error hierarchy.

It lives in the lowest package so that every other package can raise and catch
the same types; the CLI prints them on one line and the gRPC servicer maps them
to status codes.
"""

from __future__ import annotations

from typing import Iterable


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


class InvalidArchitecture(ConfigError):
    """An architecture string or value that does not belong to its search space."""


class EvaluationError(NasError):
    """A child could not be evaluated (raised inside evaluators, turned into a failed result)."""
