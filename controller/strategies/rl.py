"""Zoph & Le's search (NAS with RL, 2017): an LSTM controller trained with
REINFORCE and a moving-average baseline, in one process.

The distributed version (parameter shards, controller replicas) runs the same
policy and the same functions from controller/reinforce.py.
"""

from __future__ import annotations

import copy
from typing import Any, Hashable

import torch

from controller.policy import LSTMPolicy, check_int, check_number
from controller.reinforce import EmaBaseline, apply_gradients, gradients, reinforce_loss
from controller.strategy import Strategy, register
from search_spaces import ConfigError, SearchSpace
from workers.evaluator import EvalResult

_DEPTH_OPTIONS = ("start_depth", "depth_step", "depth_every", "max_depth")


class DepthSchedule:
    """Zoph & Le's growing depth: `start` layers, `step` more every `every` samples, up to `maximum`.

    For spaces with a depth (macro: `num_layers`, `max_layers`, `with_depth`).
    """

    def __init__(self, space: SearchSpace, start: int | None, step: int | None, every: int | None,
                 maximum: int | None):
        self.maximum = check_int("max_depth", space.max_layers if maximum is None else maximum, 1)
        if self.maximum > space.max_layers:
            raise ConfigError("max_depth", f"{self.maximum} exceeds the space's max_layers", f"1..{space.max_layers}")
        self.start = check_int("start_depth", space.num_layers if start is None else start, 1)
        if self.start > self.maximum:
            raise ConfigError("start_depth", f"{self.start} exceeds max_depth", f"1..{self.maximum}")
        self.step = check_int("depth_step", 2 if step is None else step, 0)
        self.every = check_int("depth_every", 1600 if every is None else every, 1)

    def depth(self, sample: int) -> int:
        """The depth of the `sample`-th proposal (0-based)."""
        return min(self.maximum, self.start + self.step * (sample // self.every))

    def samples_left(self, sample: int) -> int | None:
        """How many proposals from `sample` on keep its depth (None: all of them)."""
        if self.depth(sample) == self.maximum or self.step == 0:
            return None
        return self.every - sample % self.every


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

    A failed evaluation gets reward 0, the worst an accuracy-like reward can
    be, so the controller learns to avoid architectures that crash (out of
    memory, NaN) rather than ignoring them.

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
        self.entropy_weight = check_number("entropy_weight", entropy_weight, 0)
        depth_options = (start_depth, depth_step, depth_every, max_depth)
        if hasattr(space, "with_depth"):
            self.depths: DepthSchedule | None = DepthSchedule(space, *depth_options)
            # The deepest space has every decision group the schedule will ever use,
            # so the policy's parameters (and Adam's state) never change shape.
            widest = space.with_depth(self.depths.maximum)
        else:
            given = [name for name, value in zip(_DEPTH_OPTIONS, depth_options) if value is not None]
            if given:
                raise ConfigError(given[0], f"the {space.name} space has no depth to schedule")
            self.depths = None
            widest = space
        self.generator = torch.Generator().manual_seed(seed)
        self.policy = LSTMPolicy(widest.decisions(), temperature=temperature, tanh_constant=tanh_constant,
                                 generator=self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=check_number("lr", lr, 0, low_open=True))
        self.baseline = EmaBaseline(baseline_decay)
        self._proposed = 0
        # Decision values of proposals not yet observed, per architecture (an
        # architecture may be in flight more than once).
        self._pending: dict[Hashable, list[tuple]] = {}
        # (values, reward) observed since the last update.
        self._batch: list[tuple[tuple, float]] = []
        self._depth: int | None = None
        self._depth_space: SearchSpace | None = None
        self._use_depth(self._proposed)

    def _use_depth(self, sample: int) -> None:
        """Make the space and policy speak the depth of the `sample`-th proposal."""
        depth = None if self.depths is None else self.depths.depth(sample)
        if self._depth_space is None or depth != self._depth:
            self._depth = depth
            self._depth_space = self.space if depth is None else self.space.with_depth(depth)
            self.policy.set_decisions(self._depth_space.decisions())

    def propose(self, n: int = 1) -> list[Hashable]:
        archs: list[Hashable] = []
        while len(archs) < n:
            self._use_depth(self._proposed)
            left = None if self.depths is None else self.depths.samples_left(self._proposed)
            count = n - len(archs) if left is None else min(n - len(archs), left)
            with torch.no_grad():
                values, _, _ = self.policy.sample(count, self.generator)
            for v in values:
                arch = self._depth_space.from_values(v)
                self._pending.setdefault(arch, []).append(v)
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
        reward = result.reward if result.ok and result.reward is not None else 0.0
        self._batch.append((values, reward))
        if len(self._batch) == self.batch_size:
            self._update()

    def _update(self) -> None:
        values, rewards = zip(*self._batch)
        loss = reinforce_loss(self.policy, values, rewards, self.baseline.value, self.entropy_weight)
        apply_gradients(self.policy, self.optimizer, gradients(self.policy, loss))
        self.baseline.update(rewards)
        self._batch = []

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Deep copies: the policy's and Adam's tensors change in place as the search goes on.
        state.update(copy.deepcopy({
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "generator": self.generator.get_state(),
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
        self._use_depth(self._proposed)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.generator.set_state(state["generator"])
        self._pending = {self.space.parse(text): queue for text, queue in state["pending"]}
        self._batch = [(values, reward) for values, reward in state["batch"]]
