"""DARTS' recurrent search and random search with weight sharing on the `rnn` space (PTB)."""

import json

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.spec import SearchSpec
from raynas.search_spaces import get_space
from raynas.search_spaces.types import RNNGenotype
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot import NoisyDartsConfig, OneShotConfig, RSWSConfig, search_config, search_epochs
from raynas.workers.oneshot.rnn import (
    PRIMITIVES,
    RNNSupernet,
    TextFeed,
    Window,
    derive_rnn,
    perplexity,
    rnn_path,
    sample_cell,
)

TINY = {"epochs": 2, "channels": 8, "batch_size": 8, "max_batches_per_epoch": 3, "device": "cpu", "num_threads": 1}


def test_defaults_are_darts_ptb_search_settings():
    cfg = OneShotConfig().resolved("rnn")
    assert (cfg.epochs, cfg.channels, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_schedule,
            cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay, cfg.grad_clip) == (
        50, 300, 256, 20.0, 0.0, 5e-7, "constant", 3e-3, (0.9, 0.999), 1e-3, 0.25)
    rsws = RSWSConfig().resolved("rnn")  # Li & Talwalkar's PTB search
    assert (rsws.epochs, rsws.batch_size, rsws.grad_clip, rsws.archs, rsws.lr) == (50, 64, 0.1, 2000, 20.0)
    assert RSWSConfig().resolved("darts").archs == 5000
    # Proxyless as randomNAS_release's DartsWrapper(config="eval"): 850 wide, wd 8e-7; every sampled
    # cell scored on the whole validation stream, none re-scored.
    assert (rsws.channels, rsws.weight_decay, rsws.score_batches, rsws.rescore_top) == (850, 8e-7, 0, 0)
    assert (RSWSConfig().resolved("darts").score_batches, RSWSConfig().resolved("darts").rescore_top) == (10, 10)
    # The image searches keep theirs.
    darts = OneShotConfig().resolved("darts")
    assert (darts.momentum, darts.arch_lr, darts.arch_betas) == (0.9, 3e-4, (0.5, 0.999))


def test_what_the_rnn_search_cannot_do_is_refused(tiny_ptb):
    with pytest.raises(ConfigError) as err:
        NoisyDartsConfig().resolved("rnn")
    assert err.value.field == "noise_lambda"
    with pytest.raises(ConfigError) as err:
        OneShotConfig(drop_none=True).resolved("rnn")
    assert err.value.field == "drop_none"
    with pytest.raises(ConfigError) as err:
        OneShotConfig(early_stop_skips=2).resolved("rnn")
    assert err.value.field == "early_stop_skips"
    with pytest.raises(ConfigError) as err:
        search_epochs(get_space("rnn"), load_dataset("digits"), OneShotConfig(**TINY), 0)
    assert err.value.field == "dataset"
    with pytest.raises(ConfigError) as err:
        search_epochs(get_space("rnn"), load_dataset("ptb", tiny_ptb), OneShotConfig(train_portion=0.8), 0)
    assert err.value.field == "train_portion"


def test_mixed_cell_with_one_hot_alphas_is_the_discrete_cell():
    torch.manual_seed(0)
    arch = RNNGenotype((("relu", 0), ("sigmoid", 1), ("identity", 1)), (1, 2, 3))
    model = RNNSupernet(vocab_size=20, size=6, steps=3).eval()
    with torch.no_grad():
        alphas = torch.full_like(model.alphas[0], -1e4)
        alphas[:, 0] = 1e4  # every edge `none` ...
        offset = 0
        for i, (act, source) in enumerate(arch.recurrent, start=1):
            alphas[offset + source] = -1e4  # ... but the kept one, with its activation
            alphas[offset + source, PRIMITIVES.index(act)] = 1e4
            offset += i
        model.alphas[0].copy_(alphas)
    tokens = torch.randint(0, 20, (4, 3))
    window = Window(tokens, torch.randn(3, 6), "x")
    torch.testing.assert_close(model(window), model(window, rnn_path(arch)))
    assert derive_rnn(model.arch_weights(), 3) == arch


def test_derivation_keeps_one_predecessor_per_node_by_its_strongest_activation():
    w = torch.zeros(3, len(PRIMITIVES))
    w[0, 0] = 0.9  # node 1 reads node 0: none is strongest, tanh next
    w[0, 1] = 0.05
    w[1, 3] = 0.3  # node 2 from node 0 by sigmoid ...
    w[2, 2] = 0.4  # ... loses to node 1 by relu
    assert derive_rnn([w], 2).recurrent == (("tanh", 0), ("relu", 1))


def _same(report):
    """A report without its timings."""
    return {k: v for k, v in report.items() if k not in ("wall_time_s", "tokens_per_s")}


@pytest.mark.parametrize("algorithm", ["darts", "darts2"])
def test_search_resumes_exactly_from_its_checkpoint(tiny_ptb, tmp_path, algorithm):
    data, space = load_dataset("ptb", tiny_ptb), get_space("rnn", steps=3)
    config = search_config(algorithm)(**TINY)
    straight = list(search_epochs(space, data, config, seed=1))
    checkpoint = str(tmp_path / "search.pt")
    first = next(iter(search_epochs(space, data, config, seed=1, checkpoint=checkpoint)))
    resumed = list(search_epochs(space, data, config, seed=1, checkpoint=checkpoint))

    assert [_same(r) for r in resumed] == [_same(r) for r in straight]
    assert _same(first) == _same(straight[0])
    last = straight[-1]
    assert last["candidates"] == [last["genotype"]] and 1 < last["val_ppl"] < 1e4
    assert {"alpha_entropy", "alpha_entropy_fraction", "alphas", "train_loss"} <= set(last)
    assert get_space("rnn", steps=3).parse(last["genotype"])


def test_rsws_on_rnn_trains_single_paths_then_ranks_by_perplexity(tiny_ptb, tmp_path):
    data, space = load_dataset("ptb", tiny_ptb), get_space("rnn", steps=3)
    config = RSWSConfig(**TINY, archs=6, block=3, rescore_top=2, score_batches=2)
    checkpoint = str(tmp_path / "rsws.pt")
    reports = list(search_epochs(space, data, config, seed=0, checkpoint=checkpoint))
    assert [r["stage"] for r in reports] == ["train", "train", "rank", "rank"]
    ranked = reports[-1]
    assert ranked["val_ppl"] == min(r["block_val_ppl"] for r in reports[2:])
    assert ranked["candidates"] == [ranked["genotype"]]
    assert list(search_epochs(space, data, config, seed=0, checkpoint=checkpoint)) == reports  # replayed
    # Stopped after its first epoch, it continues to the same reports.
    other = str(tmp_path / "stopped.pt")
    next(iter(search_epochs(space, data, config, seed=0, checkpoint=other)))
    resumed = list(search_epochs(space, data, config, seed=0, checkpoint=other))
    assert [_same(r) for r in resumed] == [_same(r) for r in reports]


@pytest.mark.parametrize("strategy", ["darts", "darts2", "rsws"])
def test_nas_search_on_ptb_end_to_end(tiny_ptb, tmp_path, strategy):
    options = {**TINY, "epochs": 1}
    if strategy == "rsws":
        options.update(archs=4, block=2, rescore_top=1, score_batches=1)
    spec = SearchSpec(space="rnn", space_options={"steps": 3}, strategy=strategy, evaluator="train", dataset="ptb",
                      data_path=str(tiny_ptb), evaluations=1, runtime="local", strategy_options=options,
                      evaluator_options={"epochs": 1, "batch_size": 8, "channels": 8, "bptt": 10, "num_threads": 1})
    result = SearchJob(spec, tmp_path / "run", progress=False).run()
    assert result["state"] == "done" and result["failed"] == 0, result
    record = json.loads((tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()[0])
    assert record["metrics"]["one_shot"]["algorithm"] == strategy
    assert record["metrics"]["val_ppl_best"] > 1 and record["reward"] == pytest.approx(
        80 / record["metrics"]["val_ppl_best"] ** 2)
    assert (tmp_path / "run" / "oneshot.jsonl").read_text().strip()


def test_supernet_size_at_darts_search_width():
    from raynas.workers.oneshot import describe_supernet

    # 10k x 300 tied embedding + decoder bias, [x, h] -> 2H for node 0, 8 nodes of H -> 2H; 36 edges x 5 ops.
    assert describe_supernet("rnn") == {"params": 10_000 * 300 + 10_000 + 600 * 600 + 8 * 300 * 600,
                                        "arch_params": 36 * 5}


def test_darts2_on_rnn_clips_its_virtual_step_as_darts_recurrent_architect():
    """quark0/darts rnn/architect.py: the virtual step's gradient is clipped to the weights' clip,
    w' = w - xi (c g + wd w), the validation gradient at w' is clipped too, and the implicit term
    is scaled by the virtual step's clip coefficient c: grad_alpha L_val(w') - xi c H clip(grad_w' L_val).
    Checked against the formula with an exact Hessian-vector product, in float64."""
    from torch.func import functional_call

    from raynas.workers.oneshot.darts import Architect

    torch.manual_seed(0)
    model = RNNSupernet(vocab_size=20, size=6, steps=3).double().eval()
    cfg = search_config("darts2")().resolved("rnn")
    assert cfg.unrolled_clip and cfg.grad_clip == 0.25 and cfg.lr == 20.0
    architect = Architect(model, cfg)
    optimizer = torch.optim.SGD(model.network_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokens = torch.randint(0, 20, (5, 4))
    x_train, y_train = Window(tokens[:-1], torch.zeros(4, 6, dtype=torch.float64), "train"), tokens[1:].reshape(-1)
    tokens = torch.randint(0, 20, (5, 4))
    x_val, y_val = Window(tokens[:-1], torch.zeros(4, 6, dtype=torch.float64), "val"), tokens[1:].reshape(-1)
    xi, clip, wd = cfg.lr, cfg.grad_clip, cfg.weight_decay

    names = [n for n, _ in model.named_network_parameters()]
    weights = [p.detach() for _, p in model.named_network_parameters()]
    alphas = model.arch_parameters()

    def loss(params, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)

    def clipped(tensors):
        norm = torch.sqrt(sum((t ** 2).sum() for t in tensors))
        coef = min(1.0, clip / (float(norm) + 1e-6))
        return [t * coef for t in tensors], coef

    w = [t.clone().requires_grad_() for t in weights]
    g, c = clipped(torch.autograd.grad(loss(w, x_train, y_train), w))
    assert c < 1, "the setting must clip for the test to mean anything"
    virtual = [(t - xi * (gi + wd * t)).detach().requires_grad_() for t, gi in zip(weights, g)]
    grads = torch.autograd.grad(loss(virtual, x_val, y_val), alphas + virtual)
    d_alpha, (v, _) = grads[:len(alphas)], clipped(grads[len(alphas):])
    w = [t.clone().requires_grad_() for t in weights]
    grad_w = torch.autograd.grad(loss(w, x_train, y_train), w, create_graph=True)
    hvp = torch.autograd.grad(sum((gw * vi).sum() for gw, vi in zip(grad_w, v)), alphas)
    expected = [da - xi * c * h for da, h in zip(d_alpha, hvp)]

    actual = architect.gradient(x_train, y_train, x_val, y_val, xi, optimizer)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-9)
    # The image spaces keep the CNN architect (DARTS' cnn/architect.py clips nothing).
    assert not search_config("darts2")().resolved("darts").unrolled_clip


def _feed(data, config, model, seed=0):
    return TextFeed(data, config.resolved("rnn"), model, torch.Generator().manual_seed(seed), torch.device("cpu"))


def test_the_search_reads_ptb_as_both_references_do(tiny_ptb):
    """rnn/train_search.py and randomNAS_release: windows of 35, or int(35 / 2) = 17 with probability
    0.05, one pass per epoch from a zero state; the step's learning rate times the length / 35; the
    alphas' validation window of 35 at the training position, modulo the validation stream's length."""
    data = load_dataset("ptb", tiny_ptb)
    model = RNNSupernet(data.vocab_size, 6, 3).eval()  # eval and no_grad: the forwards only carry states
    config = OneShotConfig(batch_size=16, channels=6, device="cpu")
    feed = _feed(data, config, model)
    draws = torch.Generator().manual_seed(0)  # the feed's seed; its 13th window (second pass) is a 17
    length, at, passes, seen = len(feed.train.data), 0, [], []
    with torch.no_grad():
        for _ in range(2):
            windows = []
            for x, y in feed.batches():
                drawn = 17 if float(torch.rand((), generator=draws)) < 0.05 else 35
                assert (x.drawn, feed.lr_scale(x), len(x.tokens)) == (drawn, drawn / 35, min(drawn, length - 1 - at))
                assert torch.equal(x.tokens, feed.train.data[at:at + len(x.tokens)]) and len(y) == 16 * len(x.tokens)
                if at == 0:
                    assert not x.hidden.any()  # each pass starts from a zero state
                seen.clear()
                feed.arch_batch(lambda window, targets: seen.append(model(window) is not None and window))
                position = at % (len(feed.search.data) - 1)
                assert torch.equal(seen[0].tokens, feed.search.data[position:position + 35][:len(seen[0].tokens)])
                model(x)  # the weight step's forward, whose state the stream carries
                windows.append(drawn)
                at += drawn
            passes.append(windows)
            assert at >= length - 2
            at = 0
    assert all(w in (17, 35) for p in passes for w in p) and 17 in passes[0] + passes[1]


def test_the_weights_loss_adds_temporal_activation_regularisation(tiny_ptb):
    data = load_dataset("ptb", tiny_ptb)
    torch.manual_seed(0)
    model = RNNSupernet(data.vocab_size, 6, 3)
    feed = _feed(data, OneShotConfig(batch_size=4, channels=6, device="cpu"), model)
    x, y = next(iter(feed.batches()))
    logits = model(x)
    out = model.raw_output
    expected = torch.nn.functional.cross_entropy(logits, y) + 1e-3 * (out[1:] - out[:-1]).pow(2).mean()
    torch.testing.assert_close(feed.loss(logits, y), expected)


def test_rsws_shares_the_evaluation_cells_weights_and_scores_on_the_whole_validation_stream(tiny_ptb, tmp_path):
    """Li & Talwalkar's PTB wrapper: DARTS' RNNModel (the evaluation cell, no batch norm, word
    dropout 0.1) with each batch's genotype; every sampled cell's perplexity on all of the
    validation stream (256 x 4 columns; this corpus holds 260), the best of each block a winner."""
    from raynas.workers.oneshot import supernet_for

    data, space = load_dataset("ptb", tiny_ptb), get_space("rnn", steps=3)
    config = RSWSConfig(**{**TINY, "epochs": 1}, archs=4, block=2)
    model = supernet_for("rnn").build(space, config.resolved("rnn"), data)
    assert isinstance(model.norm, torch.nn.Identity) and model.dropouts["dropout_e"] == 0.1
    assert isinstance(supernet_for("rnn").build(space, OneShotConfig(**TINY).resolved("rnn"), data).norm,
                      torch.nn.BatchNorm1d)
    checkpoint = tmp_path / "rsws.pt"
    reports = list(search_epochs(space, data, config, seed=0, checkpoint=str(checkpoint)))
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    scoring = data.batchify("val", 260)
    for report in reports[1:]:
        path = rnn_path(space.parse(report["block_genotype"]))
        assert report["block_val_ppl"] == report["block_minibatch_ppl"] == perplexity(model, scoring, 35, path)
    # Sampled as randomNAS_release samples: a predecessor and one of the four activations per node.
    cell = sample_cell(3, torch.Generator().manual_seed(0))
    assert all(act != "none" and 0 <= j < i for i, (act, j) in enumerate(cell.recurrent, start=1))
