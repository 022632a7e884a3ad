"""REINFORCE for the controller policy: the baseline, the loss and its gradients, the
depth schedule, and `PolicyCore`, the policy with all of them.

The `rl` strategy and the distributed controller replicas share these: a replica
computes `gradients` of `reinforce_loss` and pushes them to the parameter shards,
which apply them; the in-process strategy applies them to its own optimizer with
`apply_gradients`, so both paths run the same math.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raynas.common import ConfigError, check_int, check_number
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.controller.strategies.policy import LSTMPolicy
from raynas.search_spaces import SearchSpace


def reinforce_loss(policy: LSTMPolicy, values_batch: Sequence[Sequence], rewards: Sequence[float],
                   baseline_value: float | None, entropy_weight: float = 0.0) -> torch.Tensor:
    """The loss whose gradient is REINFORCE's -(R - b) grad log p, averaged over the batch.

    `baseline_value` None (no history yet) uses the batch's mean reward.
    `entropy_weight` w subtracts w * entropy, a bonus that keeps the policy
    from collapsing early (NASNet's form; ENAS adds the entropy to the reward instead).
    """
    return reinforce_objective(*policy.log_prob(values_batch), rewards, baseline_value, entropy_weight)


def reinforce_objective(log_probs: torch.Tensor, entropies: torch.Tensor, rewards: Sequence[float],
                        baseline_value: float | None, entropy_weight: float = 0.0) -> torch.Tensor:
    """`reinforce_loss` from the batch's log-probabilities and entropies (`LSTMPolicy.log_prob`)."""
    rewards_t = torch.tensor([float(r) for r in rewards])
    baseline = rewards_t.mean() if baseline_value is None else baseline_value
    return -((rewards_t - baseline) * log_probs + entropy_weight * entropies).mean()


@torch_threads(1)
def gradients(policy: LSTMPolicy, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """d loss / d parameter for every parameter, by name (zeros where unused),
    the whole tensors a replica pushes to the shards that hold them."""
    named = list(policy.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], materialize_grads=True)
    return {name: g for (name, _), g in zip(named, grads)}


@torch_threads(1)
def apply_gradients(policy: LSTMPolicy, optimizer: torch.optim.Optimizer,
                    grads: Mapping[str, torch.Tensor]) -> None:
    """One optimizer step of `policy` along `grads` (as returned by `gradients`)."""
    for name, p in policy.named_parameters():
        p.grad = grads[name]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class RLOptions:
    """The rl strategy's options; defaults are Zoph & Le's unless noted."""

    lr: float = option(6e-4, "Adam learning rate of the policy (of the local optimizer, or of the parameter shards)")
    batch_size: int | None = option(None, "architectures per policy update in one process (default 8, the paper's "
                                          "m); in the distributed scheme the batch is each replica's m (--children), "
                                          "so this stays unset", most=4096)
    baseline_decay: float = option(0.95, "decay of the moving-average reward baseline (ENAS: 0.99)")
    entropy_weight: float = option(0.0, "weight of an entropy bonus in the loss (NASNet: 1e-5)")
    temperature: float | None = option(None, "ENAS's logit temperature (off by default)")
    tanh_constant: float | None = option(None, "ENAS's tanh clipping of the logits (off by default)")
    start_depth: int | None = option(None, "depth schedule (spaces with a depth: macro): the first depth (default: "
                                           "the space's num_layers, macro's 6 is the paper's)", most=1024)
    depth_step: int | None = option(None, "layers added at each step of the depth schedule (default 2)", most=1024)
    depth_every: int | None = option(None, "samples between two steps of the depth schedule (default 1,600)",
                                     most=100_000_000)
    max_depth: int | None = option(None, "the depth schedule's last depth (default: the space's max_layers)",
                                   most=1024)
    hidden_size: int = option(35, "units per layer of the controller's LSTM (Zoph & Le: 35; NASNet: 100)", most=4096)
    num_layers: int = option(2, "layers of the controller's LSTM (Zoph & Le: 2; NASNet: 1)", most=16)
    init_range: float = option(0.08, "the controller's weights start uniform in +-init_range (Zoph & Le: 0.08; "
                                     "NASNet: 0.1)")

    def __post_init__(self):
        check_number("lr", self.lr, 0, low_open=True)
        check_int("batch_size", self.batch_size, optional=True)
        check_number("baseline_decay", self.baseline_decay, 0, 1, high_open=True)
        check_number("entropy_weight", self.entropy_weight, 0)
        check_number("temperature", self.temperature, 0, low_open=True, optional=True)
        check_number("tanh_constant", self.tanh_constant, 0, low_open=True, optional=True)
        for name in ("start_depth", "max_depth", "depth_every"):
            check_int(name, getattr(self, name), optional=True)
        check_int("depth_step", self.depth_step, 0, optional=True)
        check_int("hidden_size", self.hidden_size)
        check_int("num_layers", self.num_layers)
        check_number("init_range", self.init_range, 0, low_open=True)


class DepthSchedule:
    """Zoph & Le's growing depth: `start` layers, `step` more every `every` samples, up to `maximum`.

    For spaces with the "depth" capability (macro: `num_layers`, `max_layers`, `with_depth`).
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

    @classmethod
    def for_space(cls, space: SearchSpace, options: RLOptions) -> DepthSchedule | None:
        """The schedule `options` ask for on `space`; None on a space without depth, which
        refuses the depth options."""
        values = {name: getattr(options, name) for name in DEPTH_OPTIONS}
        if "depth" in space.capabilities:
            return cls(space, values["start_depth"], values["depth_step"], values["depth_every"], values["max_depth"])
        given = [name for name, value in values.items() if value is not None]
        if given:
            raise ConfigError(given[0], f"the {space.name} space has no depth to schedule")
        return None

    def depth(self, sample: int) -> int:
        """The depth of the `sample`-th proposal (0-based)."""
        return min(self.maximum, self.start + self.step * (sample // self.every))

    def samples_left(self, sample: int) -> int | None:
        """How many proposals from `sample` on keep its depth (None: all of them)."""
        if self.depth(sample) == self.maximum or self.step == 0:
            return None
        return self.every - sample % self.every


DEPTH_OPTIONS = ("start_depth", "depth_step", "depth_every", "max_depth")


class PolicyCore:
    """The controller's policy with its depth schedule and sampling RNG.

    The single-process `rl` strategy and every distributed replica hold one;
    they differ only in where the weights are updated (a local Adam, or the
    parameter shards) and where the baseline lives (the strategy's own, or the
    ledger's, shared by every replica). `options` is the rl strategy's `RLOptions`.
    """

    def __init__(self, space: SearchSpace, seed: int, options: RLOptions | None = None):
        options = options or RLOptions()
        self.space = space
        self.depths: DepthSchedule | None = DepthSchedule.for_space(space, options)
        # The deepest space has every decision group the schedule will ever use,
        # so the policy's parameters never change shape as the network grows.
        widest = space if self.depths is None else space.with_depth(self.depths.maximum)
        self.generator = torch.Generator().manual_seed(seed)
        self.policy = LSTMPolicy(widest.decisions(), hidden_size=options.hidden_size, num_layers=options.num_layers,
                                 init_range=options.init_range, temperature=options.temperature,
                                 tanh_constant=options.tanh_constant, generator=self.generator)
        self.entropy_weight = options.entropy_weight
        #: The last gradient's figures (`gradients`), what a strategy round reports: the baseline the
        #: batch was measured against, the batch's mean reward, and the policy's entropy (nats, summed
        #: over a child's decisions, averaged over the batch's children) at the weights it was taken at.
        self.last_update: dict[str, float] | None = None
        self._depth_space: SearchSpace | None = None
        self._depth: int | None = None

    def space_at(self, sample: int) -> SearchSpace:
        """The space (at its scheduled depth) of the `sample`-th architecture, and make the policy speak it."""
        depth = None if self.depths is None else self.depths.depth(sample)
        if self._depth_space is None or depth != self._depth:
            self._depth = depth
            self._depth_space = self.space if depth is None else self.space.with_depth(depth)
            self.policy.set_decisions(self._depth_space.decisions())
        return self._depth_space

    def sample(self, n: int, first: int) -> list[tuple[Hashable, tuple]]:
        """`n` architectures (with their decision values) as samples `first`, `first + 1`, ...

        One batch shares the depth of its first sample."""
        space = self.space_at(first)
        with torch.no_grad():
            values, _, _ = self.policy.sample(n, self.generator)
        return [(space.from_values(v), v) for v in values]

    def gradients(self, values_batch: Sequence[tuple], rewards: Sequence[float],
                  baseline: float | None) -> dict[str, torch.Tensor]:
        """The gradient of a batch's loss against `baseline` (None: the batch's mean reward)."""
        loss, entropies = self.loss(values_batch, rewards, baseline)
        mean_reward = float(np.mean(rewards))
        self.last_update = {"baseline": mean_reward if baseline is None else float(baseline),
                            "reward": mean_reward, "entropy": float(entropies.detach().mean())}
        return gradients(self.policy, loss)

    def loss(self, values_batch: Sequence[tuple], rewards: Sequence[float],
             baseline: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """REINFORCE's loss of a batch, and its children's entropies."""
        log_probs, entropies = self.policy.log_prob(values_batch)
        return reinforce_objective(log_probs, entropies, rewards, baseline, self.entropy_weight), entropies

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.policy.named_parameters()}

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                p.copy_(weights[name])

    def state_dict(self) -> dict[str, Any]:
        """The sampling RNG: the replica's own state (the weights live on the shards, the baseline
        with the ledger)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def replica_seed(seed: int, k: int) -> int:
    """Replica k's own sampling seed, derived from the job's."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
