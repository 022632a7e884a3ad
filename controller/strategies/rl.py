"""Zoph & Le's search (NAS with RL, 2017): an LSTM controller trained with
REINFORCE and a moving-average baseline.

In one process (the local runtime, `nas bench`) it is an ordinary proposer with its
own Adam. On a Ray cluster it declares `shared_policy` and the runtime runs it as the
paper's scheme: its policy's weights on parameter shards, K controller replicas with
m children each, the same `PolicyCore` and REINFORCE math in every replica.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.controller.strategies import register
from raynas.controller.strategies.base import Needs, SchemeSettings, Strategy
from raynas.controller.strategies.reinforce import DepthSchedule, PolicyCore, RLOptions, apply_gradients
from raynas.controller.strategies.rewards import EmaBaseline, reward_of
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import EvalResult

#: Architectures per policy update in one process: the paper's m.
DEFAULT_BATCH = 8


@register
class RLStrategy(Strategy):
    """Options: `RLOptions` (learning rate, batch, baseline decay, entropy bonus, ENAS's
    temperature and tanh constant, the depth schedule). A failed evaluation gets reward 0
    (see `reward_of`).

    The update uses the policy as it is when the batch completes; samples
    proposed before an earlier update are thus slightly off-policy, the same
    staleness the asynchronous distributed controller accepts.
    """

    name = "rl"
    summary = "Zoph & Le's LSTM controller trained by REINFORCE (the distributed scheme on Ray)"
    needs = Needs(shared_policy=True)
    Options = RLOptions

    def __init__(self, space: SearchSpace, seed: int = 0, options: RLOptions | None = None):
        super().__init__(space, seed, options)
        self.batch_size = self.options.batch_size or DEFAULT_BATCH
        self.core = self.shared_policy(space, seed, self.options)
        self.policy = self.core.policy
        self.baseline = EmaBaseline(self.options.baseline_decay)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.options.lr)
        self._proposed = 0
        # Decision values of proposals not yet observed, per architecture (an
        # architecture may be in flight more than once).
        self._pending: dict[Hashable, list[tuple]] = {}
        # (values, reward) observed since the last update.
        self._batch: list[tuple[tuple, float]] = []
        #: Each update's figures (the baseline, the batch's mean reward, the policy's entropy): its signals.
        self.updates: list[dict[str, Any]] = []

    @classmethod
    def check_space(cls, space: SearchSpace, options: RLOptions) -> None:
        DepthSchedule.for_space(space, options)

    @classmethod
    def shared_policy(cls, space: SearchSpace, seed: int, options: RLOptions) -> PolicyCore:
        return PolicyCore(space, seed, options)

    @classmethod
    def scheme(cls, options: RLOptions) -> SchemeSettings:
        if options.batch_size is not None:
            raise ConfigError("strategy_options.batch_size", "in the distributed scheme the batch is --children (m)")
        return SchemeSettings(lr=options.lr, baseline_decay=options.baseline_decay)

    def propose(self, n: int = 1) -> list[Hashable]:
        archs: list[Hashable] = []
        depths = self.core.depths
        while len(archs) < n:
            left = None if depths is None else depths.samples_left(self._proposed)
            count = n - len(archs) if left is None else min(n - len(archs), left)
            for arch, values in self.core.sample(count, self._proposed):
                self._pending.setdefault(arch, []).append(values)
                archs.append(arch)
            self._proposed += count
        return archs

    def observe(self, arch: Hashable, result: EvalResult) -> None:
        queue = self._pending.get(arch)
        if not queue:
            raise ConfigError("arch", f"{arch} was not proposed by this strategy, or was observed already")
        values = queue.pop(0)
        if not queue:
            del self._pending[arch]
        self._batch.append((values, reward_of(result) * self.fidelity(result)))
        if len(self._batch) == self.batch_size:
            values_batch, rewards = zip(*self._batch)
            self.updates.append(self.learn(values_batch, rewards))
            self.baseline.update(rewards)
            self._batch = []

    def learn(self, values_batch: tuple, rewards: tuple) -> dict[str, float]:
        """One update of the policy from a completed batch, against the baseline before it; its figures."""
        apply_gradients(self.policy, self.optimizer, self.core.gradients(values_batch, rewards, self.baseline.value))
        return self.core.last_update

    def signals(self) -> list[dict[str, Any]]:
        return self.updates

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Deep copies: the policy's and Adam's tensors change in place as the search goes on.
        state.update(copy.deepcopy({
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "core": self.core.state_dict(),
            "baseline": self.baseline.state_dict(),
            "proposed": self._proposed,
            "pending": [[self.space.format(arch), queue] for arch, queue in self._pending.items()],
            "batch": [[values, reward] for values, reward in self._batch],
            "updates": self.updates,
        }))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # Copied so that two strategies loaded from one state never share tensors.
        state = copy.deepcopy(state)
        self._proposed = state["proposed"]
        self.core.space_at(self._proposed)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.core.load_state_dict(state["core"])
        self.baseline.load_state_dict(state["baseline"])
        self._pending = {self.space.parse(text): queue for text, queue in state["pending"]}
        self._batch = [(values, reward) for values, reward in state["batch"]]
        self.updates = state["updates"]
