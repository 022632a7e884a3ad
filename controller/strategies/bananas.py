"""Predictor-guided search in the manner of BANANAS (White, Neiswanger & Savani, "BANANAS:
Bayesian Optimization with Neural Architectures for Neural Architecture Search", AAAI 2021):
an ensemble of small neural networks predicts the reward of an architecture from its
encoding, the ensemble's spread is the uncertainty, and the acquisition is maximised over
mutations of the best architectures found so far.

Here the encoding is the space's one-hot token encoding (for NB201 its adjacency one-hot; the
path encoding of the paper is specific to cell DAGs and White et al.'s later study of
encodings finds the two close on NAS-Bench-201), so the strategy runs on every token space.
Candidates are the unproposed one-token neighbours of the best results; the acquisition is
independent Thompson sampling (one draw per candidate from a normal with the ensemble's mean
and spread), as in the paper, or an upper confidence bound.

Asynchronous: the ranked candidates of the last fit are handed out one by one, so proposals
go out while results are outstanding; architectures in flight are never proposed again, and
independent draws (rather than one shared draw) keep a batch diverse. The ensemble is refit
after every `refit_every` new results.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raynas.common import check_int, check_number
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.controller.strategies import register
from raynas.controller.strategies.base import Strategy
from raynas.controller.strategies.neighbourhood import fresh, neighbours, one_hot
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult

ACQUISITIONS = ("its", "ucb")


@dataclass(frozen=True)
class BananasOptions:
    initial: int = option(10, "uniform random architectures before the predictor is used (BANANAS: 10)", most=100_000)
    ensemble: int = option(5, "neural predictors in the ensemble (BANANAS: 5)", most=100)
    hidden: int = option(20, "units in each hidden layer of a predictor (BANANAS: 20)", most=4096)
    layers: int = option(3, "hidden layers of a predictor", most=32)
    epochs: int = option(200, "full-batch Adam steps per fit (BANANAS: 200 epochs)", most=100_000)
    lr: float = option(0.01, "Adam's learning rate for the predictors (BANANAS: 0.01)")
    parents: int = option(10, "best results whose one-token neighbours are the candidates (BANANAS mutates its "
                          "top 10)", most=100_000)
    candidates: int = option(200, "candidates scored per fit, a random subset of the parents' neighbours",
                             most=1_000_000)
    acquisition: str = option("its", "its: independent Thompson sampling (BANANAS); ucb: mean + beta x spread",
                              choices=ACQUISITIONS)
    beta: float = option(0.5, "the spread's weight in ucb", most=100.0)
    refit_every: int = option(10, "new results between fits of the ensemble (BANANAS proposes 10 per fit)",
                              most=100_000)

    def __post_init__(self):
        for name in ("initial", "ensemble", "hidden", "layers", "epochs", "parents", "candidates", "refit_every"):
            check_int(name, getattr(self, name))
        check_number("lr", self.lr, 0.0, low_open=True)
        check_number("beta", self.beta, 0.0)


class Ensemble:
    """`members` MLPs (ReLU, `layers` hidden layers of `hidden` units) trained side by side on the
    same data from different random initialisations, full batch with Adam on the mean absolute
    error (as BANANAS), their weights stacked so that one batched product serves every member
    (a fit costs a few hundred small products whatever the ensemble's size)."""

    def __init__(self, options: BananasOptions, inputs: int, rng: np.random.Generator):
        sizes = [inputs] + [options.hidden] * options.layers + [1]
        # Drawn from the strategy's generator, so the same seed gives the same predictors.
        self.weights = [torch.from_numpy(rng.normal(0.0, np.sqrt(2.0 / n_in), (options.ensemble, n_in, n_out)))
                        .float().requires_grad_() for n_in, n_out in zip(sizes, sizes[1:])]
        self.biases = [torch.zeros(options.ensemble, 1, n_out, requires_grad=True) for n_out in sizes[1:]]
        self.options = options

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.expand(self.options.ensemble, *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = h.relu()
        return h[..., 0]

    @torch_threads(1)  # tiny tensors: a second thread only adds synchronisation on a busy machine
    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        optimizer = torch.optim.Adam(self.weights + self.biases, lr=self.options.lr)
        for _ in range(self.options.epochs):
            # Summed over members: each member's gradient is its own mean absolute error's.
            loss = (self._forward(inputs) - targets).abs().mean(dim=1).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(members, architectures) predictions."""
        with torch.no_grad():
            return self._forward(torch.from_numpy(x).float()).double().numpy()


@register
class BananasStrategy(Strategy):
    """`initial` random architectures, then the ensemble's best-scored unproposed neighbours of
    the best `parents` results. Failed results never train the predictor nor parent a
    candidate. Rewards are standardised before each fit, so any reward scale works."""

    name = "bananas"
    summary = "predictor-guided search: an MLP ensemble, Thompson sampling over mutations of the best, BANANAS-style"
    Options = BananasOptions

    def __init__(self, space: SearchSpace, seed: int = 0, options: BananasOptions | None = None):
        super().__init__(space, seed, options)
        self.seen: set[str] = set()
        #: (architecture, reward) of every successful result, in the order observed.
        self.results: list[tuple[Hashable, float]] = []
        #: Results since the last fit, and the last fit's candidates, best first.
        self.unfitted = 0
        self.ranked: list[Hashable] = []

    def propose(self, n: int = 1) -> list[Hashable]:
        return [self._next() for _ in range(n)]

    def _next(self) -> Hashable:
        if len(self.seen) >= self.options.initial and self.results:
            if self.unfitted >= self.options.refit_every or not self.ranked:
                self._rank()
            while self.ranked:
                arch = self.ranked.pop(0)
                if str(arch) not in self.seen:
                    return self._take(arch)
        return self._take(fresh(self.space, self.rng, self.seen))

    def _take(self, arch: Hashable) -> Hashable:
        self.seen.add(str(arch))
        return arch

    def _rank(self) -> None:
        """Fit the ensemble to every result and rank fresh candidates by the acquisition."""
        self.unfitted = 0
        best = sorted(self.results, key=lambda r: -r[1])[: self.options.parents]
        pool: dict[str, Hashable] = {}
        for arch, _ in best:
            for other in neighbours(self.space, arch):
                if str(other) not in self.seen:
                    pool.setdefault(str(other), other)
        candidates = list(pool.values())
        if len(candidates) > self.options.candidates:
            picks = self.rng.choice(len(candidates), size=self.options.candidates, replace=False)
            candidates = [candidates[i] for i in sorted(picks)]
        if not candidates:
            self.ranked = []
            return
        rewards = np.array([r for _, r in self.results])
        scale = rewards.std() or 1.0
        ensemble = Ensemble(self.options, len(one_hot(self.space, candidates[:1])[0]), self.rng)
        ensemble.fit(one_hot(self.space, [a for a, _ in self.results]), (rewards - rewards.mean()) / scale)
        predictions = ensemble.predict(one_hot(self.space, candidates))
        mean, spread = predictions.mean(axis=0), predictions.std(axis=0)
        if self.options.acquisition == "its":
            score = self.rng.normal(mean, spread)
        else:
            score = mean + self.options.beta * spread
        self.ranked = [candidates[i] for i in np.argsort(-score, kind="stable")]

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        if result.ok and result.reward is not None:
            # Scaled by the share of the full budget reached (as rl's reward): under a scheduler that
            # stops children early, a 1-epoch accuracy must not pass for a 200-epoch one.
            self.results.append((arch, float(result.reward) * self.fidelity(result)))
            self.unfitted += 1

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(seen=sorted(self.seen), results=[[str(a), r] for a, r in self.results], unfitted=self.unfitted,
                     ranked=[str(a) for a in self.ranked])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = set(state["seen"])
        self.results = [(self.space.parse(text), reward) for text, reward in state["results"]]
        self.unfitted = state["unfitted"]
        self.ranked = [self.space.parse(text) for text in state["ranked"]]
