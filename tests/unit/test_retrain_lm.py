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
from raynas.workers.training import TrainConfig

#: lr 60 makes the tiny model's validation perplexity rise within a few epochs, so averaged SGD takes over.
TINY = {"epochs": 6, "channels": 8, "batch_size": 8, "bptt": 10, "asgd_nonmono": 1, "max_train_batches_per_epoch": 4,
        "num_threads": 1, "lr": 60.0}


def test_recipe_is_darts_ptb_evaluation():
    c = recipe("rnn", "ptb")
    assert (c.epochs, c.batch_size, c.bptt, c.lr, c.momentum, c.weight_decay, c.grad_clip, c.channels,
            c.lr_schedule, c.asgd_nonmono, c.autocast) == (8000, 64, 35, 20.0, 0.0, 8e-7, 0.25, 850, "constant", 5,
                                                          False)
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
    assert whole["state"] == "done" and 1 < whole["test_ppl"] < 1e4 and len(whole["val_curve"]) == 6
    switched = whole["averaged_from"]
    assert switched is not None and switched < 5
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
