"""NAO (workers/nao.py, the nao strategy): the encoder-predictor-decoder learns to rebuild and
rank architectures, its embedding steps improve the prediction, every decoded sequence is an
architecture of the space, the cell augmentation preserves the function, and the strategy
resumes exactly."""

import copy
import io
import zlib

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.strategies import get_strategy
from raynas.search_spaces import get_space
from raynas.search_spaces.cell import CELLS
from raynas.workers.evaluation import EvalResult
from raynas.workers.nao import PRESETS, NAOConfig, NAOController, NAOModel, kendall_tau
from raynas.workers.nets import NetConfig, build_model

SPACES = ("nb201", "darts", "nasnet", "macro", "rnn")
#: A controller small enough to train in a second: what the strategy tests run with.
TINY = {"seed_archs": 4, "new_archs": 3, "top_k": 3, "epochs": 3, "batch_size": 8, "hidden_size": 8,
        "embedding_size": 4, "mlp_layers": 1, "mlp_hidden_size": 8, "expand": 2}


def pool(space_name: str, n: int, seed: int = 1):
    space = get_space(space_name)
    rng = np.random.default_rng(seed)
    archs = list({space.format(a): a for a in (space.sample(rng) for _ in range(n))}.values())
    return space, archs, [float(r) for r in rng.random(len(archs))]


def test_presets_are_nao_pytorchs_settings():
    # ../shared/REFERENCES.md, NAO: V1 1x96 / emb 48 / MLP 3x200 dropout 0.1, seed 600, 300 new;
    # V2 1x64 / 32 / no MLP, seed 1000; all: lambda 0.8, 1000 epochs, batch 100, Adam 1e-3.
    v1, v2 = NAOConfig().resolved(), NAOConfig(preset="v2").resolved()
    assert (v1.hidden_size, v1.embedding_size, v1.mlp_layers, v1.mlp_hidden_size, v1.mlp_dropout, v1.seed_archs,
            v1.new_archs) == (96, 48, 3, 200, 0.1, 600, 300)
    assert (v2.hidden_size, v2.embedding_size, v2.mlp_layers, v2.seed_archs) == (64, 32, 0, 1000)
    assert (v1.trade_off, v1.epochs, v1.batch_size, v1.lr, v1.encoder_layers, v1.decoder_layers) == (
        0.8, 1000, 100, 1e-3, 1, 1)
    assert PRESETS["ws"]["mlp_hidden_size"] == 100
    assert NAOConfig(preset="v2", hidden_size=16).resolved().hidden_size == 16


@pytest.mark.parametrize("name", ["nb201", "darts", "nasnet"])
def test_encoding_then_decoding_reproduces_the_pool_after_training(name):
    space, archs, rewards = pool(name, 16)
    nao = NAOController(space, NAOConfig(preset="v2", epochs=200, lr=0.01, batch_size=16, expand=1), seed=0)
    losses = nao.fit(archs, rewards)
    assert nao.reconstruct(archs) == archs
    assert losses["nll"] < 0.05
    # The predictor learned the pool's ranking too.
    assert kendall_tau(nao.predict(archs), rewards) > 0.9


def test_a_gradient_step_in_the_embedding_raises_the_predicted_score():
    space, archs, rewards = pool("nb201", 16)
    nao = NAOController(space, NAOConfig(preset="v2", epochs=30, lr=0.01, batch_size=16, expand=1), seed=0)
    nao.fit(archs, rewards)
    before, after = nao.step(archs, 0.5)
    assert (after > before).all()
    assert not torch.equal(*nao.step(archs, 0.0))  # 0 moves nothing: only the step raised it
    assert torch.allclose(*nao.step(archs, 0.0))


@pytest.mark.parametrize("name", SPACES)
def test_every_decoded_sequence_is_an_architecture_of_the_space(name):
    """Untrained, trained, from random points of the embedding: the decoder can only pick the
    tokens the space allows at each position."""
    space, archs, rewards = pool(name, 12)
    nao = NAOController(space, NAOConfig(**TINY), seed=0)
    model: NAOModel = nao.model
    for _ in range(2):
        generator = torch.Generator().manual_seed(3)
        outputs = torch.nn.functional.normalize(
            torch.randn(64, model.length // model.group, 8, generator=generator), dim=-1)
        with torch.no_grad():
            decoded = model.greedy(outputs, torch.nn.functional.normalize(outputs.mean(1), dim=-1))
        for tokens in decoded:
            arch = nao.codec.decode(tokens.tolist())
            assert space.validate(arch) == arch
        nao.fit(archs, rewards)
    new, step = nao.propose(archs, 20, {nao.codec.encode(a) for a in archs})
    assert new and step >= 1
    for arch in new:
        assert space.validate(arch) == arch and arch not in archs


def test_token_choices_are_what_encode_uses_and_decode_accepts():
    for name in SPACES:
        space = get_space(name)
        choices = space.token_choices()
        rng = np.random.default_rng(0)
        for _ in range(20):
            tokens = space.encode(space.sample(rng))
            assert len(tokens) == len(choices) and all(t in c for t, c in zip(tokens, choices))
            picked = [int(rng.choice(c)) for c in choices]
            assert space.encode(space.decode(picked)) == picked


@pytest.mark.parametrize("name", ["darts", "nasnet"])
def test_the_augmentation_swaps_a_nodes_inputs_and_keeps_the_function(name):
    space, archs, _ = pool(name, 4)
    nao = NAOController(space, NAOConfig(**TINY), seed=0)
    rng = np.random.default_rng(0)
    for arch in archs:
        tokens = nao.codec.encode(arch)
        swapped = nao.codec.decode(nao.codec.augment(tokens, rng))
        # Same cell as data: each node sums the same two (op, input) terms, same concat.
        for cell in CELLS:
            a, b = getattr(arch, cell), getattr(swapped, cell)
            assert [sorted(a[i:i + 2]) for i in range(0, len(a), 2)] == [
                sorted(b[i:i + 2]) for i in range(0, len(b), 2)]
            assert getattr(arch, f"{cell}_concat") == getattr(swapped, f"{cell}_concat")
        changed = [node for node in range(space.steps) if arch.normal[2 * node:2 * node + 2]
                   != swapped.normal[2 * node:2 * node + 2]]
        assert len(changed) <= 1
        # Same function: the swapped network, given the original's weights with each swapped
        # node's two ops traded, computes the same outputs.
        config = NetConfig(in_channels=1, num_classes=10, image_size=8, channels=4, layers=3)
        torch.manual_seed(0)
        original = build_model(name, arch, config).eval()
        other = build_model(name, swapped, config).eval()
        state = original.state_dict()
        mapped = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "cells" and "ops" in parts:
                at = parts.index("ops") + 1
                reduction = int(parts[1]) in {config.layers // 3, 2 * config.layers // 3}
                pairs = swapped.reduce if reduction else swapped.normal
                mine = arch.reduce if reduction else arch.normal
                op = int(parts[at])
                node = op // 2
                if pairs[2 * node:2 * node + 2] != mine[2 * node:2 * node + 2]:
                    parts[at] = str(2 * node + 1 - op % 2)
            mapped[".".join(parts)] = value
        other.load_state_dict(mapped)
        x = torch.randn(4, 1, 8, 8)
        assert torch.allclose(original(x), other(x), atol=1e-6)


def test_the_controller_never_moves_the_global_rng():
    space, archs, rewards = pool("darts", 8)
    before = torch.get_rng_state()
    nao = NAOController(space, NAOConfig(**TINY), seed=0)
    nao.fit(archs, rewards)
    nao.propose(archs, 4, set())
    nao.predict(archs)
    assert torch.equal(before, torch.get_rng_state())


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 1], [2, 3]) is None


# -- the strategy ------------------------------------------------------------------------------

def result_for(arch) -> EvalResult:
    code = zlib.crc32(str(arch).encode())
    if code % 7 == 0:
        return EvalResult.failure(str(arch), "synthetic failure")
    return EvalResult(str(arch), reward=(code % 1000) / 1000)


def drive(strategy, rng: np.random.Generator, rounds: int, in_flight: list) -> list[str]:
    """An asynchronous executor: 1-3 proposals at a time, a random share of those in flight
    observed in random order."""
    proposed = []
    for _ in range(rounds):
        archs = strategy.propose(int(rng.integers(1, 4)))
        proposed += [str(a) for a in archs]
        in_flight += archs
        rng.shuffle(in_flight)
        done = int(rng.integers(0, len(in_flight)))
        for arch in in_flight[:done]:
            strategy.observe(arch, result_for(arch))
        del in_flight[:done]
    return proposed


def _torch_round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_resume_equals_an_uninterrupted_run(name):
    space = get_space(name)
    original = get_strategy("nao", space, seed=5, **TINY)
    rng, in_flight = np.random.default_rng(0), []
    drive(original, rng, 12, in_flight)
    assert original.signals(), "the first part must already have trained NAO"
    state = _torch_round_trip(original.state_dict())
    rng_copy, in_flight_copy = copy.deepcopy(rng), list(in_flight)
    expected = drive(original, rng, 12, in_flight)
    resumed = get_strategy("nao", space, seed=5, **TINY)
    resumed.load_state_dict(state)
    assert drive(resumed, rng_copy, 12, in_flight_copy) == expected
    assert str(resumed.state_dict()) == str(original.state_dict())
    for key, value in resumed.state_dict()["controller"]["model"].items():
        assert torch.equal(value, original.state_dict()["controller"]["model"][key])


def test_rounds_propose_new_architectures_and_report_their_signals():
    space = get_space("nb201")
    strategy = get_strategy("nao", space, seed=0, **{**TINY, "seed_archs": 10, "new_archs": 5, "epochs": 20})
    before = torch.get_rng_state()
    seen = []
    for _ in range(30):  # one at a time, as a single worker runs them
        (arch,) = strategy.propose(1)
        seen.append(space.format(arch))
        strategy.observe(arch, EvalResult(str(arch), reward=zlib.crc32(str(arch).encode()) % 100 / 100))
    assert torch.equal(before, torch.get_rng_state())
    assert len(set(seen)) == 30  # no architecture twice
    rounds = strategy.signals()
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1)) and len(rounds) == 4
    assert rounds[0]["predictor_mae"] is None  # nothing to predict before the first training
    for r in rounds[1:]:
        assert r["new_results"] == 5 and r["predictor_mae"] >= 0 and -1 <= r["predictor_tau"] <= 1
    for r in rounds:
        assert 0 <= r["reconstruction_acc"] <= 1 and r["new_proposals"] + r["random_fill"] == 5
        assert r["trained_on"] == r["proposed"]


def test_options_are_checked_and_nao_ws_takes_the_darts_space_only():
    with pytest.raises(ConfigError) as bad:
        get_strategy("nao", get_space("nb201"), trade_off=2)
    assert bad.value.field == "strategy_options.trade_off"
    with pytest.raises(ConfigError) as bad:
        get_strategy("nao", get_space("nb201"), preset="v9")
    assert bad.value.field == "strategy_options.preset"
    with pytest.raises(ConfigError) as bad:
        get_strategy("nao-ws", get_space("nb201"))
    assert bad.value.field == "space"
    with pytest.raises(ConfigError) as bad:
        get_strategy("nao-ws", get_space("darts"), **{"nao.epochs": 0})
    assert bad.value.field == "strategy_options.nao.epochs"
    for option in ("nao.epoch", "epoch", "controller"):
        with pytest.raises(ConfigError) as bad:
            get_strategy("nao-ws", get_space("darts"), **{option: 3})
        assert bad.value.field == f"strategy_options.{option}"
    options = get_strategy("nao-ws", get_space("darts"), **{"nao.epochs": 3, "epochs": 6}).options
    assert (options.controller.epochs, options.controller.seed_archs, options.epochs) == (3, 1000, 6)
    ws = get_strategy("nao-ws", get_space("darts")).options.resolved("darts")  # NAO_pytorch's NAO_V1 search
    assert (ws.epochs, ws.eval_every, ws.batch_size, ws.lr, ws.lr_min, ws.momentum, ws.nesterov, ws.weight_decay,
            ws.grad_clip, ws.lr_schedule, ws.channels, ws.layers, ws.train_portion, ws.score_batch_size,
            ws.score_batches) == (150, 30, 64, 0.025, 0.001, 0.9, False, 3e-4, 5.0, "epoch", 20, 11, 0.9, 500, 1)


def test_the_controllers_adam_decays_as_nao_pytorchs():
    # NAO_V1/train_search.py and TF NAO-WS: controller weight decay 1e-4; NAO_V2: 0.
    decays = {p: NAOConfig(preset=p).resolved().weight_decay for p in PRESETS}
    assert decays == {"v1": 1e-4, "v2": 0.0, "ws": 1e-4}
    nao = NAOController(get_space("nb201"), NAOConfig(), seed=0)
    assert nao.optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert NAOConfig(weight_decay=0.0).resolved().weight_decay == 0.0  # an explicit value wins


def test_the_attention_is_luongs_general_score_without_biases():
    # NAO_pytorch's decoder Attention: score = (W_in h) . o with a bias-free input projection, then
    # tanh(W_out [mix; h]), bias-free as well.
    space = get_space("nb201")
    model = NAOModel(NAOController(space, NAOConfig(**TINY), seed=0).codec, NAOConfig(**TINY))
    assert model.attention_in.bias is None and model.attention.bias is None
    torch.manual_seed(0)
    h, outputs = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    weights = torch.softmax(model.attention_in(h) @ outputs.transpose(1, 2), -1)
    expected = torch.tanh(model.attention(torch.cat([weights @ outputs, h], -1)))
    torch.testing.assert_close(model.attend(h, outputs), expected)


def _first_round_at(strategy, budget):
    """How many evaluations the strategy proposes before its first NAO round (None: never, within `budget`)."""
    for k in range(budget):
        (arch,) = strategy.propose(1)
        if strategy.signals():
            return k
        strategy.observe(arch, EvalResult(str(arch), reward=zlib.crc32(str(arch).encode()) % 100 / 100))
    return None


def test_the_seed_phase_is_scaled_to_the_budget():
    """With NAO_pytorch's V1 defaults (600 seeds, then rounds of 300: 1,200 evaluations for the seeds
    and two rounds) a budget of 100 used to stay random search; it now keeps the preset's proportions."""
    from raynas.controller.strategies.nao import NAOStrategy

    small = {k: v for k, v in TINY.items() if k not in ("seed_archs", "new_archs")}
    space = get_space("nb201")
    scaled = NAOStrategy(space, seed=0, options=NAOConfig(**small), budget=100)
    assert (scaled.config.seed_archs, scaled.config.new_archs) == (50, 25)
    assert _first_round_at(scaled, 100) == 50
    # A budget that holds the seeds and two rounds keeps the preset.
    assert NAOStrategy(space, options=NAOConfig(**small), budget=1200).config.seed_archs == 600
    assert NAOStrategy(space, options=NAOConfig(**small), budget=3).config.seed_archs == 1
    # Seeds the user asked for that leave no round are refused, naming the option.
    with pytest.raises(ConfigError) as bad:
        NAOStrategy(space, options=NAOConfig(**{**small, "seed_archs": 100}), budget=100)
    assert bad.value.field == "strategy_options.seed_archs"
