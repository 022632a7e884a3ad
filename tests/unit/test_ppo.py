"""The ppo strategy: NASNet's controller settings, the clipped surrogate, and its behaviour
log-probabilities in one process and in the distributed scheme's core."""

from __future__ import annotations

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy, strategy_class
from raynas.controller.strategies.policy import LSTMPolicy
from raynas.controller.strategies.ppo import PPOCore, PPOOptions, ppo_loss
from raynas.controller.strategies.reinforce import gradients, reinforce_loss
from raynas.search_spaces import get_space
from raynas.workers.evaluation import EvalResult


def test_controller_has_nasnets_settings():
    s = get_strategy("ppo", get_space("nasnet"))
    assert len(s.policy.lstm) == 1 and s.policy.lstm[0].hidden_size == 100
    weights = torch.cat([p.detach().flatten() for p in s.policy.parameters()])
    assert 0.099 < weights.abs().max() <= 0.1
    assert s.optimizer.param_groups[0]["lr"] == 3.5e-4
    assert (s.options.entropy_weight, s.options.baseline_decay) == (1e-5, 0.95)
    # The rl strategy keeps Zoph & Le's controller.
    rl = get_strategy("rl", get_space("nasnet"))
    assert len(rl.policy.lstm) == 2 and rl.policy.lstm[0].hidden_size == 35


def test_samples_carry_the_log_probability_that_drew_them():
    space = get_space("nb201")
    core = PPOCore(space, seed=3)
    sampled = core.sample(5, 0)
    values = [v for _, (v, _) in sampled]
    with torch.no_grad():
        scored, _ = core.policy.log_prob(values)
    torch.testing.assert_close(torch.tensor([lp for _, (_, lp) in sampled]), scored)
    assert [arch for arch, _ in sampled] == [space.from_values(v) for v in values]


def test_on_policy_gradient_equals_reinforces():
    """r = 1 when nothing moved since sampling: the surrogate's gradient is REINFORCE's."""
    policy = LSTMPolicy(get_space("nb201").decisions(), generator=torch.Generator().manual_seed(0))
    values, log_probs, _ = policy.sample(6, torch.Generator().manual_seed(1))
    rewards = [0.1, 0.9, 0.4, 0.3, 0.8, 0.2]
    ours = gradients(policy, ppo_loss(policy, values, log_probs.tolist(), rewards, 0.45, clip=0.2))
    theirs = gradients(policy, reinforce_loss(policy, values, rewards, 0.45))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name])


@pytest.mark.parametrize("shift, advantage, moves", [
    (0.5, 1.0, False),   # already much likelier (r = e^0.5 > 1.2) and good: clipped, no push
    (0.5, -1.0, True),   # likelier but bad: not clipped, pushed down
    (-0.5, -1.0, False),  # already much less likely (r < 0.8) and bad: clipped
    (-0.5, 1.0, True),   # less likely but good: pushed up
])
def test_the_clip_stops_a_sample_the_policy_already_moved_for(shift, advantage, moves):
    policy = LSTMPolicy(get_space("nb201").decisions(), generator=torch.Generator().manual_seed(0))
    values, log_probs, _ = policy.sample(1, torch.Generator().manual_seed(2))
    # The behaviour policy gave the sample log p - shift: now it is e^shift times as likely.
    behaviour = (log_probs - shift).tolist()
    grads = gradients(policy, ppo_loss(policy, values, behaviour, [advantage], 0.0, clip=0.2))
    norm = sum(float(g.abs().sum()) for g in grads.values())
    assert (norm > 0) == moves


def test_passes_take_several_steps_per_batch():
    space = get_space("nb201")
    one, four = (get_strategy("ppo", space, seed=0, batch_size=4, passes=p, lr=0.01) for p in (1, 4))
    moved = []
    for s in (one, four):
        start = torch.cat([p.detach().flatten().clone() for p in s.policy.parameters()])
        for i, arch in enumerate(s.propose(4)):
            s.observe(arch, EvalResult(str(arch), 0.1 * i))
        moved.append(float((torch.cat([p.detach().flatten() for p in s.policy.parameters()]) - start).norm()))
        assert s.optimizer.state[s.policy.start]["step"] == s.options.passes
    assert moved[1] > 2 * moved[0]


def test_runs_as_the_distributed_scheme():
    cls = strategy_class("ppo")
    assert cls.needs.shared_policy
    options = cls.parse_options(get_space("nb201"), {})
    assert isinstance(cls.shared_policy(get_space("nb201"), 0, options), PPOCore)
    assert cls.scheme(options).lr == 3.5e-4
    with pytest.raises(ConfigError, match="batch_size"):
        cls.scheme(cls.parse_options(get_space("nb201"), {"batch_size": 4}))


@pytest.mark.parametrize("option, value", [("clip", 0), ("passes", 0), ("hidden_size", 0), ("init_range", -1)])
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ConfigError, match=option):
        PPOOptions(**{option: value})


def test_the_distributed_scheme_learns_from_stale_batches():
    """K replicas on the real replica, shard and ledger code (simulated time): every child recorded once,
    every gradient applied, the same search again from the same seed."""
    from raynas.controller.bench.simulate import simulate_scheme
    from raynas.workers.evaluation import get_evaluator

    space = get_space("nb201")
    table = get_evaluator("table", space)
    ledger, figures = simulate_scheme(space, table, budget=64, seed=0, controllers=4, children=4, ps_shards=2,
                                      strategy="ppo")
    assert len({r["id"] for r in ledger.records}) == len(ledger.records) == 64
    # Rolling batches: a gradient every 4 results, and each replica's last, smaller batch.
    assert figures["shard_versions"] == [ledger.updates] * 2 and 64 // 4 <= ledger.updates <= 64 // 4 + 4
    assert figures["staleness_max"] > 0
    again, _ = simulate_scheme(space, table, budget=64, seed=0, controllers=4, children=4, ps_shards=2,
                               strategy="ppo")
    assert [r["arch"] for r in again.records] == [r["arch"] for r in ledger.records]
