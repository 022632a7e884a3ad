"""`nas train` and `nas export` for language models: DARTS' PTB evaluation recipe, averaged SGD,
checkpoints and exact resume, test perplexity, export with the hidden state in and out."""

import json

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller import cli
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.export import load_trained
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.retrain import LANGUAGE_NET, recipe, retrain
from raynas.workers.training import TrainConfig, TrainingRun

#: lr 60 makes the tiny model's validation perplexity rise within a few epochs, so averaged SGD takes over.
TINY = {"epochs": 7, "channels": 8, "batch_size": 8, "bptt": 10, "asgd_nonmono": 1, "max_train_batches_per_epoch": 4,
        "num_threads": 1, "lr": 60.0}


def test_recipe_is_darts_ptb_evaluation():
    # quark0/darts rnn/train.py: --beta 1e-3 (TAR), variable-length windows, the best epoch's model.pt.
    c = recipe("rnn", "ptb")
    assert (c.epochs, c.batch_size, c.bptt, c.lr, c.momentum, c.weight_decay, c.grad_clip, c.channels,
            c.lr_schedule, c.asgd_nonmono, c.autocast) == (8000, 64, 35, 20.0, 0.0, 8e-7, 0.25, 850, "constant", 5,
                                                          False)
    assert (c.tar, c.bptt_jitter, c.keep_best) == (1e-3, True, True)
    assert recipe("nasrnn", "ptb") == c
    assert LANGUAGE_NET == {"dropout": 0.75, "dropout_h": 0.25, "dropout_x": 0.75, "dropout_i": 0.2, "dropout_e": 0.1}
    with pytest.raises(ConfigError) as err:
        TrainConfig(lr_schedule="step")
    assert err.value.field == "lr_schedule"
    with pytest.raises(ConfigError) as err:
        TrainConfig(asgd_nonmono=2).resolved("classification")
    assert err.value.field == "asgd_nonmono"


def test_a_language_model_needs_text(tmp_path):
    with pytest.raises(ConfigError) as err:
        retrain("rnn", "DARTS_V2", load_dataset("digits"), recipe("rnn", epochs=1), tmp_path / "x")
    assert err.value.field == "dataset"


def test_interrupted_lm_training_resumes_to_the_same_result(tiny_ptb, tmp_path):
    data = load_dataset("ptb", tiny_ptb)
    config = recipe("rnn", "ptb", **TINY)
    whole = retrain("rnn", "DARTS_V2", data, config, tmp_path / "whole", seed=2, log=lambda _: None)
    assert whole["state"] == "done" and 1 < whole["test_ppl"] < 1e4 and len(whole["val_curve"]) == 7
    switched = whole["averaged_from"]
    assert switched is not None and switched < 7  # an epoch at least trains with averaged SGD
    stop = switched + 1

    def interrupt(line):  # right after the checkpoint of the first epoch trained with averaged SGD
        if line.startswith(f"epoch {stop}/"):
            raise KeyboardInterrupt

    partial = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        retrain("rnn", "DARTS_V2", data, config, partial, seed=2, log=interrupt)
    assert load_trained(partial)["epoch"] == stop - 1
    resumed = retrain("rnn", "DARTS_V2", data, config, partial, seed=2, resume=True, log=lambda _: None)
    assert resumed["val_curve"] == whole["val_curve"] and resumed["test_ppl"] == whole["test_ppl"]
    assert resumed["train_loss_curve"] == whole["train_loss_curve"]
    assert json.loads((partial / "result.json").read_text())["test_ppl"] == whole["test_ppl"]


def _train(tiny_ptb, out, space, arch):
    return cli.main(["train", "--space", space, "--arch", arch, "--dataset", "ptb", "--data", str(tiny_ptb),
                     "--epochs", "1", "--channels", "8", "--batch-size", "8", "--bptt", "10",
                     "--max-train-batches-per-epoch", "2", "--num-threads", "1", "--out", str(out)])


def test_nas_train_a_tree_cell_language_model(tiny_ptb, tmp_path, capsys):
    assert _train(tiny_ptb, tmp_path / "train", "nasrnn", "NAS") == 0
    assert "test perplexity" in capsys.readouterr().out
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    assert result["space"] == "nasrnn" and result["test_ppl"] > 1 and result["config"]["asgd_nonmono"] == 5


@pytest.mark.slow  # torch.export unrolls the 35 steps: about a minute on a busy 2-core machine
@pytest.mark.parametrize("space, arch", [("nasrnn", "NAS"), ("rnn", "DARTS_V2")])
def test_nas_train_then_export_with_the_hidden_state_in_and_out(tiny_ptb, tmp_path, space, arch):
    out = tmp_path / "train"
    assert _train(tiny_ptb, out, space, arch) == 0
    assert cli.main(["export", str(out), "--format", "torch-export", "--out", str(tmp_path / "m.pt2")]) == 0
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    trained = load_trained(out)
    described = json.loads((tmp_path / "m.pt2.json").read_text())
    assert described["preprocessing"]["vocab"] == list(load_dataset("ptb", tiny_ptb).vocab)
    assert described["inputs"][0] == {"name": "tokens", "shape": [35, "batch"], "dtype": "int64"}
    eager = build_model(space, get_space(space).parse(arch), NetConfig(**trained["net"])).eval()
    eager.load_state_dict(trained["run"]["model"])
    tokens = torch.randint(0, trained["net"]["vocab_size"], (35, 3))
    hidden = eager.init_hidden(3)
    with torch.no_grad():
        # Two windows in a row: the state the first hands back goes into the second.
        for _ in range(2):
            logits, new_hidden = loaded(tokens, hidden)
            want, want_hidden = eager(tokens, hidden)
            torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(new_hidden, want_hidden, atol=1e-5, rtol=1e-5)
            hidden = new_hidden


def _run(config, size=8, vocab=37, **net):
    torch.manual_seed(0)
    model = build_model("rnn", get_space("rnn").parse("DARTS_V2"), NetConfig(vocab_size=vocab, channels=size, **net))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return TrainingRun(model, optimizer, config, torch.device("cpu"), torch.Generator().manual_seed(0), "tokens")


def test_windows_are_drawn_as_darts_evaluation_draws_them():
    """rnn/train.py: bptt = 35 with probability 0.95, else 17.5; seq_len = max(5, int(N(bptt, 5))),
    at most 35 + 20; the step's learning rate times seq_len / 35; until the stream's end."""
    run = _run(recipe("rnn", "ptb", epochs=1, num_threads=1).resolved("language_model"))
    windows = list(run._windows(5000))
    draws = torch.Generator().manual_seed(0)
    at = 0
    for start, n, scale in windows:
        mean = 35 if float(torch.rand((), generator=draws)) >= 0.05 else 17.5
        drawn = min(max(5, int(mean + 5 * float(torch.randn((), generator=draws)))), 55)
        assert (start, n, scale) == (at, min(drawn, 4999 - at), drawn / 35)
        at += drawn
    assert at >= 4998 > windows[-1][0]
    lengths = [n for _, n, _ in windows[:-1]]
    assert min(lengths) >= 5 and max(lengths) <= 55 and 30 < sum(lengths) / len(lengths) < 36
    plain = _run(TrainConfig(bptt=35).resolved("language_model"))
    assert list(plain._windows(100)) == [(0, 35, 1.0), (35, 35, 1.0), (70, 29, 1.0)]


def test_the_weight_step_adds_tar_to_the_loss(tiny_ptb):
    """AWD-LSTM's TAR as DARTS applies it: beta * mean((h[1:] - h[:-1])^2) over the last layer's
    outputs before the output dropout, added to the cross-entropy of the weight step."""
    data = load_dataset("ptb", tiny_ptb)
    zero = dict.fromkeys(("dropout", "dropout_h", "dropout_x", "dropout_i", "dropout_e"), 0.0)
    config = TrainConfig(epochs=1, batch_size=4, bptt=10, lr=1.0, grad_clip=0.0, tar=0.5, weight_decay=0.0,
                         max_train_batches_per_epoch=1, num_threads=1, lr_schedule="constant")
    run = _run(config.resolved("language_model"), vocab=data.vocab_size, **zero)
    expected = _run(config.resolved("language_model"), vocab=data.vocab_size, **zero).model
    tokens = data.batchify("train", 4)
    logits, _ = expected(tokens[:10], expected.init_hidden(4))
    out = expected.raw_output
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[1:11].reshape(-1))
    (loss + 0.5 * (out[1:] - out[:-1]).pow(2).mean()).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= p.grad
    assert run.fit_text(data) is None
    for mine, theirs in zip(run.model.parameters(), expected.parameters()):
        torch.testing.assert_close(mine, theirs)


def _scripted(run, curve):
    values = iter(curve)
    run._perplexity = lambda valid: next(values)


def test_averaged_sgd_takes_over_as_in_awd_lstm(tiny_ptb):
    """NT-ASGD: switch when this epoch's perplexity is worse than the best of the epochs before
    the last n, counting only the epochs before this one (`len(best_val_loss) > nonmono and
    val_loss > min(best_val_loss[:-nonmono])`, best_val_loss not yet holding this epoch)."""
    data = load_dataset("ptb", tiny_ptb)
    run = _run(TrainConfig(epochs=6, batch_size=4, bptt=10, asgd_nonmono=2, max_train_batches_per_epoch=1,
                           num_threads=1).resolved("language_model"), vocab=data.vocab_size)
    _scripted(run, [5.0, 4.0, 3.0, 4.5, 4.6, 6.0])
    assert run.fit_text(data) is None
    assert run.averaged_from == 5  # at epoch 4 only epoch 1 (5.0) lies before the last two


def test_a_nan_goes_back_to_the_best_epoch_and_the_test_is_scored_there(tiny_ptb):
    """DARTS' evaluation: a NaN loss reloads the best epoch's model.pt and optimizer.pt and goes on
    from the epoch after it; the test perplexity is that model's, in one column."""
    data = load_dataset("ptb", tiny_ptb)
    config = TrainConfig(epochs=5, batch_size=4, bptt=10, keep_best=True, max_train_batches_per_epoch=2,
                         num_threads=1).resolved("language_model")
    run = _run(config, vocab=data.vocab_size)
    _scripted(run, [5.0, 4.0, 4.5, 4.7, 4.8, 4.9])
    best = {}

    def spoil(epoch):
        if epoch == 1:
            best.update({k: v.clone() for k, v in run.model.state_dict().items()})
        if epoch == 2 and not run.rollbacks:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))

    assert run.fit_text(data, on_epoch=spoil) is None
    assert run.rollbacks == 1 and run.best["epoch"] == 1
    assert len(run.val_curve) == 5 and run.val_curve[:2] == [5.0, 4.0]
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    # The test perplexity: the best epoch's weights, one column, whatever the weights are now.
    fresh = _run(config, vocab=data.vocab_size)
    fresh.model.load_state_dict(best)
    assert run.perplexity(data, "test", 1) == fresh._stream_perplexity(data.batchify("test", 1))


def test_retraining_reports_the_best_epochs_test_perplexity(tiny_ptb, tmp_path):
    data = load_dataset("ptb", tiny_ptb)
    result = retrain("rnn", "DARTS_V2", data, recipe("rnn", "ptb", **TINY), tmp_path / "out", seed=2,
                     log=lambda _: None)
    curve = result["val_curve"]
    assert result["best_epoch"] == curve.index(min(curve)) + 1 and result["rollbacks"] == 0
    state = load_trained(tmp_path / "out")["run"]
    model = build_model("rnn", get_space("rnn").parse("DARTS_V2"), NetConfig(**load_trained(tmp_path / "out")["net"]))
    model.load_state_dict(state["best"]["model"])
    run = _run(recipe("rnn", "ptb", **TINY).resolved("language_model"), vocab=data.vocab_size)
    run.model = model
    assert result["test_ppl"] == run._stream_perplexity(data.batchify("test", 1))
