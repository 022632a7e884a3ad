"""NASNet's search (Zoph et al. 2018, "Learning Transferable Architectures"): the same
LSTM controller as `rl`, trained by Proximal Policy Optimization (Schulman et al. 2017).

Each sample carries its behaviour log-probability, the log-probability under the
policy that drew it. The loss is the clipped surrogate
    -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) - w * entropy,
r = exp(log p_now - log p_behaviour), A = reward - baseline (the moving average).

In one process a completed batch is learned from in `passes` Adam steps, each at the
weights the previous step left: the ratio moves away from 1 and the clip bounds how far
one batch can push the policy.

In the distributed scheme a replica's batch gives one gradient (the shards apply it and
answer with weights that already hold other replicas' pushes, so a second pass would be
against a policy the batch never saw). There the ratio is what corrects staleness: the
gradient is taken at the weights the replica last pulled, while its children were drawn
from the version they were sampled with; r weighs each child by how much likelier it is
now, and the clip stops a child that the policy has since moved towards (r > 1 + eps with
A > 0) or away from (r < 1 - eps with A < 0) from pushing further. With nothing stale, r = 1
and the gradient equals REINFORCE's.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from raynas.common import check_int, check_number
from raynas.common.options import option
from raynas.controller.strategies import register
from raynas.controller.strategies.policy import LSTMPolicy
from raynas.controller.strategies.reinforce import PolicyCore, RLOptions, apply_gradients
from raynas.controller.strategies.rl import RLStrategy
from raynas.search_spaces import SearchSpace


@dataclass(frozen=True)
class PPOOptions(RLOptions):
    """The ppo strategy's options: the rl strategy's, with NASNet's controller settings as defaults."""

    lr: float = option(3.5e-4, "Adam learning rate of the policy (NASNet: 3.5e-4)")
    entropy_weight: float = option(1e-5, "weight of the entropy bonus in the loss (NASNet: 1e-5)")
    hidden_size: int = option(100, "units per layer of the controller's LSTM (NASNet: 100)", most=4096)
    num_layers: int = option(1, "layers of the controller's LSTM (NASNet: 1)", most=16)
    init_range: float = option(0.1, "the controller's weights start uniform in +-init_range (NASNet: 0.1)")
    clip: float = option(0.2, "PPO's clip: the ratio of new to behaviour probability counts within 1 +- clip "
                              "(Schulman et al.: 0.2; NASNet does not state its own)")
    passes: int = option(4, "Adam steps per completed batch in one process (the distributed scheme takes one "
                            "per replica batch)", most=1000)

    def __post_init__(self):
        super().__post_init__()
        check_number("clip", self.clip, 0, low_open=True)
        check_int("passes", self.passes)


def ppo_loss(policy: LSTMPolicy, values_batch: Sequence[Sequence], behaviour: Sequence[float],
             rewards: Sequence[float], baseline_value: float | None, clip: float,
             entropy_weight: float = 0.0) -> torch.Tensor:
    """The clipped surrogate loss of a batch. `behaviour`: each row's log-probability under the
    policy that sampled it; `baseline_value` None (no history yet) uses the batch's mean reward."""
    return ppo_objective(*policy.log_prob(values_batch), behaviour, rewards, baseline_value, clip, entropy_weight)


def ppo_objective(log_probs: torch.Tensor, entropies: torch.Tensor, behaviour: Sequence[float],
                  rewards: Sequence[float], baseline_value: float | None, clip: float,
                  entropy_weight: float = 0.0) -> torch.Tensor:
    """`ppo_loss` from the batch's log-probabilities and entropies (`LSTMPolicy.log_prob`)."""
    rewards_t = torch.tensor([float(r) for r in rewards])
    advantages = rewards_t - (rewards_t.mean() if baseline_value is None else baseline_value)
    ratio = torch.exp(log_probs - torch.tensor([float(b) for b in behaviour]))
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -(surrogate + entropy_weight * entropies).mean()


class PPOCore(PolicyCore):
    """`PolicyCore` whose samples carry their behaviour log-probability: a sample's values are
    (decision values, log p), which travel with the child and come back to `gradients`."""

    def __init__(self, space: SearchSpace, seed: int, options: PPOOptions | None = None):
        options = options or PPOOptions()
        super().__init__(space, seed, options)
        self.clip = options.clip

    def sample(self, n: int, first: int) -> list[tuple[Hashable, tuple]]:
        space = self.space_at(first)
        with torch.no_grad():
            values, log_probs, _ = self.policy.sample(n, self.generator)
        return [(space.from_values(v), (v, float(lp))) for v, lp in zip(values, log_probs)]

    def loss(self, values_batch: Sequence[tuple], rewards: Sequence[float],
             baseline: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        values, behaviour = zip(*values_batch)
        log_probs, entropies = self.policy.log_prob(values)
        return ppo_objective(log_probs, entropies, behaviour, rewards, baseline, self.clip,
                             self.entropy_weight), entropies


@register
class PPOStrategy(RLStrategy):
    """Options: `PPOOptions`. Proposals, failures (reward 0), batches and the distributed scheme
    as the `rl` strategy's; only the update differs (see the module's docstring)."""

    name = "ppo"
    summary = "NASNet's LSTM controller trained by PPO (the distributed scheme on Ray)"
    Options = PPOOptions

    @classmethod
    def shared_policy(cls, space: SearchSpace, seed: int, options: PPOOptions) -> PPOCore:
        return PPOCore(space, seed, options)

    def learn(self, values_batch: tuple, rewards: tuple) -> dict[str, float]:
        first = None
        for _ in range(self.options.passes):
            apply_gradients(self.policy, self.optimizer,
                            self.core.gradients(values_batch, rewards, self.baseline.value))
            # The round's figures are of the policy that sampled the batch, before its first step.
            first = first or self.core.last_update
        return first
