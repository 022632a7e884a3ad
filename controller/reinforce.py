"""REINFORCE for the controller policy, as plain functions.

The `rl` strategy and the distributed controller replicas share these: a
replica computes `gradients` of `reinforce_loss` and pushes them to the
parameter shards, which apply them; the in-process strategy applies them to
its own optimizer with `apply_gradients`, so both paths run the same math.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from search_spaces.errors import check_number

from workers.threads import torch_threads

from .policy import LSTMPolicy


class EmaBaseline:
    """Zoph & Le's baseline: an exponential moving average of past rewards,
    b <- b - (1 - decay)(b - R) per reward (ENAS's update; ENAS uses decay 0.99).

    `value` is None until the first reward, so the first batch is not measured
    against an arbitrary starting point.
    """

    def __init__(self, decay: float = 0.95):
        self.decay = check_number("baseline_decay", decay, 0, 1, high_open=True)
        self.value: float | None = None

    def update(self, rewards: Sequence[float]) -> None:
        for r in rewards:
            self.value = float(r) if self.value is None else self.value - (1 - self.decay) * (self.value - r)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value, self.decay = state["value"], state["decay"]


def reinforce_loss(policy: LSTMPolicy, values_batch: Sequence[Sequence], rewards: Sequence[float],
                   baseline_value: float | None, entropy_weight: float = 0.0) -> torch.Tensor:
    """The loss whose gradient is REINFORCE's -(R - b) grad log p, averaged over the batch.

    `baseline_value` None (no history yet) uses the batch's mean reward.
    `entropy_weight` w subtracts w * entropy, a bonus that keeps the policy
    from collapsing early (NASNet's form; ENAS adds the entropy to the reward instead).
    """
    rewards_t = torch.tensor([float(r) for r in rewards])
    baseline = rewards_t.mean() if baseline_value is None else baseline_value
    log_probs, entropies = policy.log_prob(values_batch)
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
