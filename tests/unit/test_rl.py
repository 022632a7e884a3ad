"""The RL strategy: Zoph & Le's controller, REINFORCE, anchor points, depth schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.policy import LSTMPolicy
from raynas.controller.strategies.reinforce import apply_gradients, gradients, reinforce_loss
from raynas.controller.strategies.rewards import EmaBaseline
from raynas.search_spaces import Categorical, SearchSpace, Subset, get_space, space_names
from raynas.workers.evaluation import EvalResult


def policy_for(space: SearchSpace, seed: int = 0, **options) -> LSTMPolicy:
    return LSTMPolicy(space.decisions(), generator=torch.Generator().manual_seed(seed), **options)


def test_controller_is_zoph_and_les():
    s = get_strategy("rl", get_space("nb201"))
    assert len(s.policy.lstm) == 2
    assert all(cell.hidden_size == 35 for cell in s.policy.lstm)
    weights = torch.cat([p.detach().flatten() for p in s.policy.parameters()])
    assert weights.abs().max() <= 0.08
    assert weights.abs().max() > 0.079  # drawn from the whole interval, not a narrower default
    assert isinstance(s.optimizer, torch.optim.Adam)
    assert s.optimizer.param_groups[0]["lr"] == 6e-4


def test_parameters_depend_on_groups_not_depth():
    shallow, deep = (policy_for(get_space("macro", num_layers=n)) for n in (3, 12))
    assert {n: p.shape for n, p in shallow.named_parameters()} == {n: p.shape for n, p in deep.named_parameters()}


def test_construction_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    get_strategy("rl", get_space("macro"), seed=5)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("options", [{}, {"temperature": 5.0, "tanh_constant": 2.5}], ids=["plain", "enas-logits"])
@pytest.mark.parametrize("space", space_names())
def test_teacher_forcing_scores_what_sampling_drew(space, options):
    policy = policy_for(get_space(space), **options)
    values, log_probs, entropies = policy.sample(6, torch.Generator().manual_seed(1))
    forced_log_probs, forced_entropies = policy.log_prob(values)
    torch.testing.assert_close(forced_log_probs, log_probs)
    torch.testing.assert_close(forced_entropies, entropies)
    assert (log_probs < 0).all()


def test_samples_from_a_shallower_depth_are_scored_on_their_own_decisions():
    macro = get_space("macro")
    policy = policy_for(macro)
    values, log_probs, _ = policy.sample(4, torch.Generator().manual_seed(0))
    policy.set_decisions(macro.with_depth(8).decisions())
    deeper, _, _ = policy.sample(2, torch.Generator().manual_seed(0))
    scored, _ = policy.log_prob(values + deeper)
    torch.testing.assert_close(scored[:4], log_probs)


def test_anchor_points_sample_valid_and_varied_skip_connections():
    macro = get_space("macro")
    values, _, _ = policy_for(macro).sample(300, torch.Generator().manual_seed(0))
    archs = [macro.from_values(v) for v in values]  # from_values checks each subset
    # Small initial weights put every connection near P = 0.5.
    links = [j in arch.layers[5].skips for arch in archs for j in range(5)]
    assert 0.4 < sum(links) / len(links) < 0.6


def test_anchor_probability_is_the_papers_sigmoid():
    """Layer 1's only candidate is layer 0: P = sigmoid(v . tanh(W_prev h_0 + W_curr h_1)), where
    h_0, layer 0's anchor, is the output of its own connections step, after its choices."""
    macro = get_space("macro", num_layers=2)
    policy = policy_for(macro)
    (values,), _, _ = policy.sample(1, torch.Generator().manual_seed(0))
    decisions = macro.decisions()
    assert isinstance(decisions[-1], Subset) and decisions[-1].candidates == (0,)
    with torch.no_grad():
        # Replay the LSTM by hand over layer 0 (3 choices, then its empty connections step) and layer 1.
        x, state, outputs = policy.start.unsqueeze(0), [None] * len(policy.lstm), []
        for d, v in zip(decisions, values):
            for i, cell in enumerate(policy.lstm):
                state[i] = cell(x, state[i])
                x = state[i][0]
            outputs.append(x)
            if isinstance(d, Categorical):
                x = policy.heads[d.group].embedding(torch.tensor([d.choices.index(v)]))
            elif not d.candidates:
                x = policy.start.unsqueeze(0)
        skip = policy.heads["skip"]
        assert decisions[3].name == "layer0.skips"
        h0, h1 = outputs[3], outputs[-1]
        p_link = torch.sigmoid(skip.v(torch.tanh(skip.w_prev(h0) + skip.w_curr(h1))))[0, 0]
        with_skip, _ = policy.log_prob([values])
        without_skip, _ = policy.log_prob([values[:-1]])
    expected = p_link if values[-1] == (0,) else 1 - p_link
    torch.testing.assert_close(torch.exp(with_skip - without_skip)[0], expected)


@pytest.mark.parametrize("strategy, lr", [("rl", 0.01), ("ppo", 0.005)])
def test_learns_a_synthetic_reward_on_nb201(strategy, lr):
    """Reward = share of conv3x3 edges (0.2 for uniform sampling); a higher lr than the papers' keeps it short."""
    s = get_strategy(strategy, get_space("nb201"), seed=0, lr=lr)
    rewards = []
    for _ in range(240):
        (arch,) = s.propose(1)
        reward = sum(op == "nor_conv_3x3" for op in arch.ops) / 6
        rewards.append(reward)
        s.observe(arch, EvalResult(str(arch), reward))
    first, last = sum(rewards[:40]) / 40, sum(rewards[-60:]) / 60
    assert first < 0.3 and last > 0.8


class OneChoice(SearchSpace):
    """The smallest space: one decision among three."""

    name = "one-choice"

    def decisions(self):
        return (Categorical("x", ("a", "b", "c"), group="x"),)

    def from_values(self, values):
        return tuple(values)

    def to_values(self, arch):
        return arch

    def parse(self, text):
        return (text,)


def test_reinforce_gradient_matches_hand_computation():
    policy = policy_for(OneChoice())
    values, rewards, baseline = [("a",), ("b",), ("a",), ("c",)], [1.0, 0.0, 0.5, 0.25], 0.3
    with torch.no_grad():
        h = policy.start.unsqueeze(0)
        for cell in policy.lstm:
            h, _ = cell(h)
        probs = torch.softmax(policy.heads["x"].logits(h)[0], dim=0)
    # d(-log p_a)/d logits = p - onehot(a); the loss is the batch mean of (R - b) times that.
    expected = torch.zeros(3)
    for (v,), r in zip(values, rewards):
        expected += (r - baseline) * (probs - torch.nn.functional.one_hot(torch.tensor("abc".index(v)), 3))
    expected /= len(values)
    grads = gradients(policy, reinforce_loss(policy, values, rewards, baseline))
    torch.testing.assert_close(grads["heads.x.logits.bias"], expected)


def test_first_batch_is_measured_against_its_own_mean():
    policy = policy_for(get_space("nb201"))
    values, _, _ = policy.sample(4, torch.Generator().manual_seed(0))
    rewards = [0.1, 0.2, 0.6, 0.3]
    torch.testing.assert_close(reinforce_loss(policy, values, rewards, None),
                               reinforce_loss(policy, values, rewards, 0.3))


def test_ema_baseline_follows_enas_update():
    baseline = EmaBaseline(decay=0.9)
    assert baseline.value is None
    baseline.update([1.0])
    assert baseline.value == 1.0
    baseline.update([0.0, 0.0])
    assert baseline.value == pytest.approx(0.81)


def test_applying_a_gradient_dict_equals_an_optimizer_step():
    nb201 = get_space("nb201")
    stepped, applied = policy_for(nb201, seed=4), policy_for(nb201, seed=4)
    opt_stepped = torch.optim.Adam(stepped.parameters(), lr=0.01)
    opt_applied = torch.optim.Adam(applied.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        values, _, _ = stepped.sample(5, generator)
        rewards = [0.1 * i for i in range(5)]
        opt_stepped.zero_grad()
        reinforce_loss(stepped, values, rewards, 0.2, entropy_weight=0.01).backward()
        opt_stepped.step()
        loss = reinforce_loss(applied, values, rewards, 0.2, entropy_weight=0.01)
        apply_gradients(applied, opt_applied, gradients(applied, loss))
    for (name, a), b in zip(stepped.named_parameters(), applied.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_depth_schedule_grows_the_macro_space():
    s = get_strategy("rl", get_space("macro"), seed=0, depth_every=4, max_depth=10, batch_size=3)
    archs = s.propose(6) + [a for _ in range(8) for a in s.propose(1)]
    assert [len(a.layers) for a in archs] == [6] * 4 + [8] * 4 + [10] * 6
    # Results of the shallower archs arrive after the space grew: one update mixes depths.
    for arch in archs:
        s.observe(arch, EvalResult(str(arch), 0.5))
    assert s.baseline.value == 0.5


def test_depth_options_need_a_space_with_depth():
    with pytest.raises(ConfigError) as err:
        get_strategy("rl", get_space("nb201"), depth_every=10)
    assert err.value.field == "strategy_options.depth_every"


@pytest.mark.parametrize("option,value", [
    ("lr", 0), ("batch_size", 0), ("baseline_decay", 1.0), ("entropy_weight", -1), ("temperature", 0),
    ("tanh_constant", -2.5), ("start_depth", 30),
])
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ConfigError) as err:
        get_strategy("rl", get_space("macro"), **{option: value})
    assert err.value.field == f"strategy_options.{option}"


def test_failed_results_count_as_reward_zero():
    s = get_strategy("rl", get_space("nb201"), batch_size=1)
    (arch,) = s.propose(1)
    s.observe(arch, EvalResult.failure(str(arch), "out of memory"))
    assert s.baseline.value == 0.0


def test_observing_an_unproposed_architecture_is_an_error():
    nb201 = get_space("nb201")
    s = get_strategy("rl", nb201)
    arch = nb201.sample(np.random.default_rng(0))
    with pytest.raises(ConfigError):
        s.observe(arch, EvalResult(str(arch), 0.5))


@pytest.mark.parametrize("strategy, options", [("rl", {}), ("ppo", {"passes": 3})])
def test_each_update_reports_its_baseline_reward_and_entropy(strategy, options):
    """A strategy round's signals: the baseline the batch was measured against (the first batch, its
    own mean), the batch's mean reward, and the policy's entropy at the batch's children before the
    update (PPO: before its first pass). Kept in the state, so a resumed search has them all."""
    space = get_space("nb201")
    s = get_strategy(strategy, space, seed=3, batch_size=4, **options)
    batches = ([0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7])
    entropies = []
    for rewards in batches:
        archs = s.propose(4)
        with torch.no_grad():
            entropies.append(float(s.policy.log_prob([space.to_values(a) for a in archs])[1].mean()))
        for arch, reward in zip(archs, rewards):
            s.observe(arch, EvalResult(str(arch), reward))
    ema = EmaBaseline(s.options.baseline_decay)
    ema.update(batches[0])
    expected = [{"baseline": 0.5, "reward": 0.5, "entropy": entropies[0]},
                {"baseline": ema.value, "reward": 0.4, "entropy": entropies[1]}]
    assert [sorted(u) for u in s.signals()] == [sorted(e) for e in expected]
    for got, want in zip(s.signals(), expected):
        assert got == pytest.approx(want)
    assert entropies[0] > 0 and entropies[1] != entropies[0]  # the policy moved between the batches
    resumed = get_strategy(strategy, space, seed=3, batch_size=4, **options)
    resumed.load_state_dict(s.state_dict())
    assert resumed.signals() == s.signals()
