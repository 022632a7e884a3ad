"""The search-space interface.

A space is an ordered list of decisions, the vocabulary an autoregressive
controller speaks. Everything generic (sampling, mutation, token encoding,
counting) is derived from that list here, so a concrete space only says what
its decisions are and how an architecture maps to and from their values and
its canonical string.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from raynas.common import ConfigError, InvalidArchitecture


@dataclass(frozen=True)
class Categorical:
    """Pick one of `choices`.

    `group` names the decisions that share a controller head (same choices,
    same role), so a policy's parameter set does not depend on depth.
    """

    name: str
    choices: tuple
    group: str

    def __post_init__(self):
        if not self.choices:
            raise ConfigError(self.name, "a decision needs at least one choice")


@dataclass(frozen=True)
class Subset:
    """Pick any subset of `candidates` (Zoph & Le's anchor-point skip connections).

    The value is a sorted tuple of the chosen candidates.
    """

    name: str
    candidates: tuple[int, ...]
    group: str


Decision = Categorical | Subset


class SearchSpace(ABC):
    """One search space. Architectures are frozen, hashable dataclasses whose
    `str()` is the canonical string that `parse` reads back."""

    name: ClassVar[str]
    #: One line for help texts.
    summary: ClassVar[str] = ""
    #: What the space offers beyond this interface, for strategies that check before they rely
    #: on it. "depth": `num_layers`, `max_layers` and `with_depth(n)`, the same space at another
    #: depth (Zoph & Le's growing depth schedule).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def decisions(self) -> tuple[Decision, ...]:
        """The ordered decisions that define one architecture."""

    @abstractmethod
    def from_values(self, values: Sequence[Any]) -> Hashable:
        """Build the architecture from one value per decision (a choice, or a tuple for a Subset)."""

    @abstractmethod
    def to_values(self, arch: Hashable) -> tuple:
        """The decision values of `arch` (inverse of `from_values`)."""

    @abstractmethod
    def parse(self, text: str) -> Hashable:
        """Read an architecture from its string (or a published name); raises InvalidArchitecture."""

    def format(self, arch: Hashable) -> str:
        return str(self.validate(arch))

    def validate(self, arch: Hashable) -> Hashable:
        """Return `arch` if it is well formed for this space, else raise InvalidArchitecture.

        Well formed means builders can turn it into a network. A space may accept
        more here than its decisions express (the darts space loads NASNet's
        5-node cells for inspection); `to_values` is the stricter test of
        whether a strategy can search from `arch`.
        """
        values = self.to_values(arch)
        self.check_values(values)
        return arch

    def published_size(self, text: str) -> tuple[int, float, int | None] | None:
        """(width, parameters in millions, depth or None for the builder's) of the published network
        named `text`, for `nas inspect` to build it at that size and show its figure; None where the
        space records none."""
        return None

    def draw(self, arch: Hashable) -> str:
        """A few lines picturing `arch` for people (`nas inspect`); by default its decision values."""
        return "\n".join(f"{d.name} = {v}" for d, v in zip(self.decisions(), self.to_values(arch)))

    def check_values(self, values: Sequence[Any]) -> None:
        decisions = self.decisions()
        if len(values) != len(decisions):
            raise InvalidArchitecture(
                "arch", f"{self.name} expects {len(decisions)} decisions, got {len(values)}"
            )
        for d, v in zip(decisions, values):
            if isinstance(d, Categorical):
                if v not in d.choices:
                    raise InvalidArchitecture(f"arch.{d.name}", f"invalid value {v!r}", d.choices)
            else:
                if not isinstance(v, tuple) or tuple(sorted(set(v))) != v or not set(v) <= set(d.candidates):
                    raise InvalidArchitecture(
                        f"arch.{d.name}", f"invalid subset {v!r}; must be a sorted tuple of distinct candidates",
                        d.candidates,
                    )

    # -- derived from the decisions -------------------------------------------------

    def sample(self, rng: np.random.Generator) -> Hashable:
        """Uniform over the decision values (each anchor independently with p = 0.5)."""
        values = []
        for d in self.decisions():
            if isinstance(d, Categorical):
                values.append(d.choices[int(rng.integers(len(d.choices)))])
            else:
                values.append(tuple(c for c in d.candidates if rng.random() < 0.5))
        return self.from_values(values)

    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        """Change exactly one decision to a different value (regularized evolution's mutation)."""
        values = list(self.to_values(arch))
        decisions = self.decisions()
        mutable = [
            i for i, d in enumerate(decisions)
            if (len(d.choices) > 1 if isinstance(d, Categorical) else len(d.candidates) > 0)
        ]
        if not mutable:
            return arch
        i = mutable[int(rng.integers(len(mutable)))]
        d = decisions[i]
        if isinstance(d, Categorical):
            others = [c for c in d.choices if c != values[i]]
            values[i] = others[int(rng.integers(len(others)))]
        else:
            flip = d.candidates[int(rng.integers(len(d.candidates)))]
            values[i] = tuple(sorted(set(values[i]) ^ {flip}))
        return self.from_values(values)

    def encode(self, arch: Hashable) -> list[int]:
        """Token sequence for sequence models (NAO): one token per categorical
        decision, one 0/1 token per subset candidate, in a shared vocabulary
        where every (decision group, value) pair has its own id."""
        tokens = []
        offsets = self._token_offsets()
        for d, v in zip(self.decisions(), self.to_values(arch)):
            if isinstance(d, Categorical):
                tokens.append(offsets[d.group] + d.choices.index(v))
            else:
                tokens.extend(offsets[d.group] + int(c in v) for c in d.candidates)
        return tokens

    def decode(self, tokens: Sequence[int]) -> Hashable:
        offsets = self._token_offsets()
        values, pos = [], 0
        try:
            for d in self.decisions():
                if isinstance(d, Categorical):
                    values.append(d.choices[tokens[pos] - offsets[d.group]])
                    pos += 1
                else:
                    bits = tokens[pos: pos + len(d.candidates)]
                    values.append(tuple(c for c, b in zip(d.candidates, bits) if b - offsets[d.group] == 1))
                    pos += len(d.candidates)
        except (IndexError, TypeError) as exc:
            raise InvalidArchitecture("tokens", f"cannot decode {list(tokens)!r}: {exc}") from None
        if pos != len(tokens):
            raise InvalidArchitecture("tokens", f"expected {pos} tokens, got {len(tokens)}")
        self.check_values(values)
        return self.from_values(values)

    def vocab_size(self) -> int:
        return self._token_offsets(with_total=True)[1]

    def token_choices(self) -> list[tuple[int, ...]]:
        """The tokens `decode` accepts at each position of `encode`'s sequence: a sequence model
        that picks every token among these always yields an architecture of the space."""
        offsets = self._token_offsets()
        choices: list[tuple[int, ...]] = []
        for d in self.decisions():
            if isinstance(d, Categorical):
                choices.append(tuple(offsets[d.group] + i for i in range(len(d.choices))))
            else:
                choices += [(offsets[d.group], offsets[d.group] + 1)] * len(d.candidates)
        return choices

    def _token_offsets(self, with_total: bool = False):
        offsets: dict[str, int] = {}
        total = 0
        for d in self.decisions():
            if d.group not in offsets:
                offsets[d.group] = total
                total += len(d.choices) if isinstance(d, Categorical) else 2
        return (offsets, total) if with_total else offsets

    def size(self) -> int:
        """Number of distinct decision-value combinations."""
        total = 1
        for d in self.decisions():
            total *= len(d.choices) if isinstance(d, Categorical) else 2 ** len(d.candidates)
        return total

    def log10_size(self) -> float:
        return sum(
            math.log10(len(d.choices)) if isinstance(d, Categorical) else len(d.candidates) * math.log10(2)
            for d in self.decisions()
        )
