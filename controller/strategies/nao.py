"""Neural Architecture Optimization (Luo et al., NeurIPS 2018): `nao`, which evaluates every
architecture it proposes, and `nao-ws`, NAO with weight sharing (one evaluation = one
NAO-WS search on a supernet, workers/oneshot/nao_ws.py).

`nao` works in rounds, as NAO_pytorch does, fitted to the asynchronous loop:
- the first `seed_archs` proposals are distinct uniform samples; given the search's budget of
  evaluations, a preset's seed phase and rounds too long for it are scaled down in proportion
  (`NAOConfig.resolved`), and seeds asked for that leave NAO no evaluation are refused;
- then each round trains the encoder, predictor and decoder on every result observed so
  far (the pool) and queues up to `new_archs` new architectures, decoded from the top_k
  best of the pool moved along the predictor's gradient (workers/nao.py). Moved far
  enough, every parent decodes to the few architectures the predictor likes best, so the
  top_k may run dry before `new_archs` are found: then the next top_k of the pool are
  stepped from (NAO_pytorch proposes fewer instead);
- `propose` hands out the queue one architecture at a time; the next round starts when the
  queue is empty, trained on whatever results have come back by then. With W workers, up
  to W of the last round's proposals are thus still in flight when the next is trained:
  they are excluded from the new proposals and trained on in the round after.
- a round whose steps find fewer than `new_archs` new architectures (every decoded one was
  seen before) fills up with unseen uniform samples, so that every round is as long as
  planned and retraining stays once per round (the signals count these); before any
  evaluation succeeded there is nothing to train on and proposals are uniform samples.

Before each retraining, the model as it stood predicts the results it has not been trained
on yet: that error and rank correlation, the reconstruction accuracy on the pool after
training and the number of new proposals are the round's signals (`signals()`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from raynas.common import ConfigError
from raynas.common.options import parse_options
from raynas.controller.strategies import register
from raynas.controller.strategies.base import Strategy, option_errors
from raynas.controller.strategies.oneshot import OneShotStrategy
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult
from raynas.workers.nao import NAOConfig, NAOController, kendall_tau
from raynas.workers.oneshot.nao_ws import NAO_PREFIX, NAOWSConfig

#: Uniform samples tried for one unseen architecture before a repeat is accepted (a tiny space).
SAMPLE_TRIES = 100


@register
class NAOStrategy(Strategy):
    """Options: `NAOConfig` (preset v1 / v2 / ws of NAO_pytorch, then any field)."""

    name = "nao"
    summary = "neural architecture optimization: encoder, performance predictor, decoder (Luo et al.)"
    Options = NAOConfig

    def __init__(self, space: SearchSpace, seed: int = 0, options: NAOConfig | None = None,
                 budget: int | None = None):
        """`budget`: the search's evaluations, which the seed phase must leave room in (None: unknown)."""
        super().__init__(space, seed, options)
        self.config = self.options.resolved(budget)
        # Its own stream: the strategy's rng draws the seed architectures.
        nao_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        self.controller = NAOController(space, self.options, nao_seed, budget)
        #: Successful results, in the order observed: architecture -> reward.
        self.pool: dict[Hashable, float] = {}
        self.failed: list[Hashable] = []
        self.in_flight: list[Hashable] = []
        self.queue: list[Hashable] = []
        #: Successes observed since the last training.
        self.fresh: list[Hashable] = []
        self.proposed = 0
        #: Results the model was last trained on.
        self.fit_size = 0
        self.rounds: list[dict[str, Any]] = []
        self._seen: set[tuple[int, ...]] = set()

    def signals(self) -> list[dict[str, Any]]:
        return self.rounds

    def propose(self, n: int = 1) -> list[Hashable]:
        archs = []
        for _ in range(n):
            arch = self._next()
            self._seen.add(self.controller.codec.encode(arch))
            self.in_flight.append(arch)
            self.proposed += 1
            archs.append(arch)
        return archs

    def _next(self) -> Hashable:
        if self.proposed < self.config.seed_archs:
            return self._sample()
        if not self.queue:
            self._round()
        if self.queue:
            return self.queue.pop(0)
        return self._sample()

    def _sample(self) -> Hashable:
        for _ in range(SAMPLE_TRIES):
            arch = self.space.sample(self.rng)
            if self.controller.codec.encode(arch) not in self._seen:
                return arch
        return arch

    def _round(self) -> None:
        nao = self.controller
        if not self.pool:
            return
        signal: dict[str, Any] = {"round": len(self.rounds) + 1, "proposed": self.proposed,
                                  "new_results": len(self.fresh), "predictor_trained_on": self.fit_size,
                                  "predictor_mae": None, "predictor_tau": None}
        if self.fresh and nao.fitted:
            predicted = nao.predict(self.fresh)
            actual = [self.pool[a] for a in self.fresh]
            signal["predictor_mae"] = float(np.mean(np.abs(np.subtract(predicted, actual))))
            signal["predictor_tau"] = kendall_tau(predicted, actual)
        if self.fresh or not nao.fitted:
            archs = list(self.pool)
            signal.update(nao.fit(archs, [self.pool[a] for a in archs]))
            rebuilt = nao.reconstruct(archs)
            signal["reconstruction_acc"] = float(np.mean([a == b for a, b in zip(archs, rebuilt)]))
            self.fresh = []
            self.fit_size = len(archs)
        signal["trained_on"] = len(self.pool)
        ranked = sorted(self.pool, key=self.pool.__getitem__, reverse=True)
        new: list[Hashable] = []
        step = 0.0
        for start in range(0, len(ranked), self.config.top_k):
            more, step = nao.propose(ranked[start:start + self.config.top_k], self.config.new_archs - len(new),
                                     self._seen)
            self._seen.update(nao.codec.encode(a) for a in more)
            new += more
            if len(new) >= self.config.new_archs:
                break
        self.queue = list(new)
        while len(self.queue) < self.config.new_archs:
            self.queue.append(self._sample())
            self._seen.add(nao.codec.encode(self.queue[-1]))
        signal.update({"new_proposals": len(new), "step_size": step, "random_fill": len(self.queue) - len(new)})
        self.rounds.append(signal)

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        try:
            self.in_flight.remove(arch)
        except ValueError:
            raise ConfigError("arch", f"{arch} was not proposed by this strategy, or was observed already") from None
        if result.ok and result.reward is not None:
            self.pool[arch] = float(result.reward)
            self.fresh.append(arch)
        else:
            self.failed.append(arch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        fmt = self.space.format
        state.update({
            "controller": self.controller.state_dict(),
            "pool": [[fmt(a), r] for a, r in self.pool.items()],
            "failed": [fmt(a) for a in self.failed],
            "in_flight": [fmt(a) for a in self.in_flight],
            "queue": [fmt(a) for a in self.queue],
            "fresh": [fmt(a) for a in self.fresh],
            "proposed": self.proposed,
            "fit_size": self.fit_size,
            "rounds": [dict(r) for r in self.rounds],
        })
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        parse = self.space.parse
        self.controller.load_state_dict(state["controller"])
        self.pool = {parse(a): float(r) for a, r in state["pool"]}
        self.failed = [parse(a) for a in state["failed"]]
        self.in_flight = [parse(a) for a in state["in_flight"]]
        self.queue = [parse(a) for a in state["queue"]]
        self.fresh = [parse(a) for a in state["fresh"]]
        self.proposed = state["proposed"]
        self.fit_size = state["fit_size"]
        self.rounds = [dict(r) for r in state["rounds"]]
        encode = self.controller.codec.encode
        self._seen = {encode(a) for a in [*self.pool, *self.failed, *self.in_flight, *self.queue]}


@register
class NAOWS(OneShotStrategy):
    """NAO-WS: each evaluation is one NAO search whose candidates are scored with the shared
    weights of a supernet trained on NAO's current pool; its best cell is then evaluated
    like any architecture. Several evaluations are independent searches (seeds) in
    parallel, as for the DARTS family. Options: `NAOWSConfig`'s, and NAO's as `nao.<field>`."""

    name = "nao-ws"
    summary = "NAO with weight sharing on the darts supernet (one-shot)"
    Options = NAOWSConfig

    @classmethod
    def parse_options(cls, space: SearchSpace, options: Mapping[str, Any]) -> NAOWSConfig:
        """NAOWSConfig's fields, and NAO's own options as `nao.<field>` (nao.epochs=200)."""
        if not isinstance(options, Mapping):
            raise ConfigError("strategy_options", f"must be a mapping of option names to values, got {options!r}")
        nao = {k: v for k, v in options.items() if isinstance(k, str) and k.startswith(NAO_PREFIX)}
        rest = {k: v for k, v in options.items() if k not in nao}
        try:
            config = parse_options(NAOWSConfig, rest, "strategy_options", f"the {cls.name} strategy",
                                   controller={k[len(NAO_PREFIX):]: v for k, v in nao.items()})
        except ConfigError as exc:
            if not exc.field.startswith(NAO_PREFIX):
                raise
            raise ConfigError(f"strategy_options.{exc.field}", exc.problem, exc.allowed) from None
        with option_errors(f.name for f in dataclasses.fields(NAOWSConfig)):
            cls.check_space(space, config)
        return config
