"""Zoph & Le's search (NAS with RL, 2017): an LSTM controller trained with
REINFORCE and a moving-average baseline, in one process.

The distributed version (parameter shards, controller replicas) runs the same
policy and the same functions from controller/reinforce.py.
"""

from __future__ import annotations

import copy
from typing import Any, Hashable

import torch

from search_spaces.errors import check_int, check_number
from controller.reinforce import apply_gradients
from controller.replica import PolicyCore, reward_of
from controller.strategy import Strategy, register
from search_spaces import ConfigError, SearchSpace
from workers.evaluator import EvalResult

@register
class RLStrategy(Strategy):
    """Options (defaults from Zoph & Le unless noted):

    - lr: Adam learning rate, 6e-4.
    - batch_size: architectures per policy update (the paper's m = 8 per replica).
    - baseline_decay: decay of the moving-average baseline, 0.95 (ENAS: 0.99).
    - entropy_weight: weight of an entropy bonus in the loss, 0 (NASNet: 1e-5;
      ENAS adds 1e-4 x entropy to the reward instead).
    - temperature, tanh_constant: ENAS's logit temperature and tanh clipping, off.
    - start_depth, depth_step, depth_every, max_depth: the depth schedule for spaces
      with a depth (macro): from the space's num_layers (macro's default 6 is the
      paper's start), +2 layers every 1,600 samples, up to the space's max_layers.
      Other spaces reject these options.

    A failed evaluation gets reward 0 (see `reward_of`).

    The update uses the policy as it is when the batch completes; samples
    proposed before an earlier update are thus slightly off-policy, the same
    staleness the asynchronous distributed controller accepts.
    """

    name = "rl"

    def __init__(self, space: SearchSpace, seed: int = 0, lr: float = 6e-4, batch_size: int = 8,
                 baseline_decay: float = 0.95, entropy_weight: float = 0.0, temperature: float | None = None,
                 tanh_constant: float | None = None, start_depth: int | None = None, depth_step: int | None = None,
                 depth_every: int | None = None, max_depth: int | None = None):
        super().__init__(space, seed)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.core = PolicyCore(space, seed, baseline_decay=baseline_decay, entropy_weight=entropy_weight,
                               temperature=temperature, tanh_constant=tanh_constant, start_depth=start_depth,
                               depth_step=depth_step, depth_every=depth_every, max_depth=max_depth)
        self.policy = self.core.policy
        self.baseline = self.core.baseline
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=check_number("lr", lr, 0, low_open=True))
        self._proposed = 0
        # Decision values of proposals not yet observed, per architecture (an
        # architecture may be in flight more than once).
        self._pending: dict[Hashable, list[tuple]] = {}
        # (values, reward) observed since the last update.
        self._batch: list[tuple[tuple, float]] = []

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
        self._batch.append((values, reward_of(result)))
        if len(self._batch) == self.batch_size:
            values_batch, rewards = zip(*self._batch)
            apply_gradients(self.policy, self.optimizer, self.core.gradients(values_batch, rewards))
            self._batch = []

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Deep copies: the policy's and Adam's tensors change in place as the search goes on.
        state.update(copy.deepcopy({
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "core": self.core.state_dict(),
            "proposed": self._proposed,
            "pending": [[self.space.format(arch), queue] for arch, queue in self._pending.items()],
            "batch": [[values, reward] for values, reward in self._batch],
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
        self._pending = {self.space.parse(text): queue for text, queue in state["pending"]}
        self._batch = [(values, reward) for values, reward in state["batch"]]
