"""Local search (White, Nolen, Ru, Zela & Hutter, "Local Search is State of the Art for Neural
Architecture Search Benchmarks", 2020/2021): climb from a random architecture through its
one-token neighbours, and start again from a random one at a local optimum.

Asynchronous by design. Proposals come from a queue (the start's random architectures, then
the centre's unproposed neighbours in random order), so W workers stay busy while results are
outstanding. When the queue runs dry before the results are in, the strategy believes that
the outstanding ones will not improve on what it knows (a constant liar at minus infinity):
with a better result than the centre in hand it moves there now, without one it starts the
next climb. A late result that beats the centre still moves the climb, whichever climb
proposed it, so no result is wasted. With one worker this is exactly the sequential algorithm.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from raynas.common import check_int
from raynas.common.options import option
from raynas.controller.strategies import register
from raynas.controller.strategies.base import Strategy
from raynas.controller.strategies.neighbourhood import fresh, neighbours
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult

MOVES = ("best", "first")


@dataclass(frozen=True)
class LocalSearchOptions:
    starts: int = option(1, "random architectures drawn at each (re)start; the climb begins from the best of them",
                         most=100_000)
    move: str = option("first", "first: move as soon as a result beats the centre (chosen on NB201, seeds 1000-1029); "
                       "best: propose the whole neighbourhood, then move to its best result (White et al.)",
                       choices=MOVES)
    max_neighbours: int = option(0, "neighbours proposed around each centre, a random subset (0: all of them, "
                                 "White et al.; large spaces such as darts have hundreds)", most=1_000_000)

    def __post_init__(self):
        check_int("starts", self.starts)
        check_int("max_neighbours", self.max_neighbours, 0)


@register
class LocalSearchStrategy(Strategy):
    """Hill climbing over one-token changes with random restarts.

    The climb's centre is the best result of its start; its unproposed neighbours are
    proposed in random order (never an architecture proposed before). `move=best`: once all
    are proposed, the climb moves to the best result that beats the centre; `move=first`: it
    moves the moment one does. No better result: a local optimum, and a new start. Failed
    results never become a centre. Under a scheduler that stops children early, a result
    that reached more of the full budget beats one that reached less, as in evolution.
    """

    name = "local_search"
    summary = "local search over one-token neighbours with random restarts, White et al."
    Options = LocalSearchOptions

    def __init__(self, space: SearchSpace, seed: int = 0, options: LocalSearchOptions | None = None):
        super().__init__(space, seed, options)
        #: Canonical strings of every architecture proposed, so that none is proposed twice.
        self.seen: set[str] = set()
        #: Random architectures still to propose for the current start.
        self.starts_left = self.options.starts
        self.centre: tuple[Hashable, tuple[float, float]] | None = None
        #: The centre's neighbours not proposed yet, next first.
        self.queue: list[Hashable] = []
        #: Whether any of the centre's neighbours went out (until then a better start may replace it).
        self.expanded = False
        #: The best result that beats the centre (the next centre), if any.
        self.better: tuple[Hashable, tuple[float, float]] | None = None

    def propose(self, n: int = 1) -> list[Hashable]:
        return [self._next() for _ in range(n)]

    def _next(self) -> Hashable:
        while True:
            if self.starts_left > 0 or self.centre is None:
                self.starts_left = max(0, self.starts_left - 1)
                return self._take(fresh(self.space, self.rng, self.seen))
            if self.queue:
                arch = self.queue.pop()
                if str(arch) not in self.seen:
                    self.expanded = True
                    return self._take(arch)
                continue
            if self.better is not None:
                self._move(*self.better)
                continue
            # A local optimum (as far as the results in hand tell): the next climb.
            self.centre, self.starts_left = None, self.options.starts

    def _take(self, arch: Hashable) -> Hashable:
        self.seen.add(str(arch))
        return arch

    def _move(self, arch: Hashable, score: tuple[float, float]) -> None:
        self.centre, self.better, self.expanded = (arch, score), None, False
        around = [a for a in neighbours(self.space, arch) if str(a) not in self.seen]
        self.rng.shuffle(around)
        limit = self.options.max_neighbours
        # Popped from the end: the last `limit` of the shuffled list are the random subset.
        self.queue = around[-limit:] if limit else around

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        if not result.ok or result.reward is None:
            return
        score = (self.fidelity(result), result.reward)
        if self.centre is None or (not self.expanded and score > self.centre[1]):
            self._move(arch, score)
        elif score > self.centre[1] and (self.better is None or score > self.better[1]):
            self.better = (arch, score)
            if self.options.move == "first":
                self._move(arch, score)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()

        def scored(entry):
            return None if entry is None else [str(entry[0]), list(entry[1])]

        state.update(seen=sorted(self.seen), starts_left=self.starts_left, centre=scored(self.centre),
                     queue=[str(a) for a in self.queue], expanded=self.expanded, better=scored(self.better))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)

        def scored(entry):
            return None if entry is None else (self.space.parse(entry[0]), tuple(entry[1]))

        self.seen = set(state["seen"])
        self.starts_left = state["starts_left"]
        self.centre, self.better = scored(state["centre"]), scored(state["better"])
        self.queue = [self.space.parse(text) for text in state["queue"]]
        self.expanded = state["expanded"]
