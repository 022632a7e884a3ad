"""`nas train` and `nas export`: the evaluation recipe, resumable training, loadable exports."""

import json

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller import cli
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.datasets.arrays import load_digits
from raynas.workers.datasets.images import normalise
from raynas.workers.export import export, load_trained
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.retrain import CELL_RECIPE, recipe, resolve_source, retrain, selection_recipe

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
TINY = dict(epochs=3, channels=4, layers=1, batch_size=64, max_train_batches_per_epoch=3, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_darts_recipe_is_the_papers_evaluation_setting():
    # DARTS (Liu et al., ICLR 2019, sec. A.2), CIFAR eval: 600 ep, batch 96, C36, L20, cutout 16,
    # drop-path 0.2, aux 0.4; SGD 0.025, momentum 0.9, wd 3e-4, clip 5.
    c = recipe("darts")
    assert (c.epochs, c.batch_size, c.channels, c.layers, c.cutout, c.drop_path, c.auxiliary_weight, c.lr,
            c.momentum, c.weight_decay, c.grad_clip, c.nesterov) == (
        600, 96, 36, 20, 16, 0.2, 0.4, 0.025, 0.9, 3e-4, 5.0, False)
    assert recipe("darts", epochs=10, lr=None).epochs == 10 and recipe("nasnet") == recipe("darts")
    assert CELL_RECIPE["cutout"] == 16
    assert recipe("darts", "cifar10").cutout == 16


def test_the_recipes_cutout_is_cifar10s_only():
    # 16 pixels would hide a whole 8x8 digit: other datasets train without cutout unless asked.
    assert recipe("darts", "digits").cutout == 0 and recipe("darts", "digits", cutout=3).cutout == 3
    assert "cutout" not in selection_recipe("darts", "mnist")
    assert selection_recipe("darts", "cifar10")["cutout"] == 16


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_result(digits, tmp_path):
    config = recipe("nb201", **TINY)
    whole = retrain("nb201", ARCH, digits, config, tmp_path / "whole", seed=1, log=lambda _: None)
    partial = tmp_path / "part"

    def stop_after_two(line):  # an interrupt right after epoch 2's checkpoint
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain("nb201", ARCH, digits, config, partial, seed=1, log=stop_after_two)
    assert load_trained(partial)["epoch"] == 1
    resumed = retrain("nb201", ARCH, digits, config, partial, seed=1, resume=True, log=lambda _: None)
    assert resumed["val_curve"] == whole["val_curve"] and resumed["test_acc"] == whole["test_acc"]
    assert json.loads((partial / "result.json").read_text())["test_acc"] == whole["test_acc"]


def test_bad_inputs_name_the_field(digits, tmp_path):
    with pytest.raises(ConfigError) as err:
        retrain("darts", "DARTS_V2", digits, recipe("darts", epochs=1), tmp_path / "x")
    assert err.value.field == "cutout"  # 16 px cutout on 8 px digits
    with pytest.raises(ConfigError) as err:
        retrain("nb201", ARCH, digits, recipe("nb201", **TINY), tmp_path / "y", resume=True)
    assert err.value.field == "resume"
    with pytest.raises(ConfigError) as err:
        resolve_source("DARTS_V2", None)
    assert err.value.field == "space"
    with pytest.raises(ConfigError) as err:
        recipe("nb201", epoch=3)
    assert err.value.field == "epoch"


@pytest.mark.slow
def test_export_json_and_torch_export_from_a_training(digits, tmp_path, capsys):
    out = tmp_path / "train"
    assert cli.main(["train", "--space", "nb201", "--arch", ARCH, "--epochs", "1", "--channels", "4", "--layers", "1",
                     "--max-train-batches-per-epoch", "2", "--out", str(out)]) == 0
    assert cli.main(["export", str(out), "--format", "json", "--out", str(tmp_path / "a.json")]) == 0
    described = json.loads((tmp_path / "a.json").read_text())
    assert (described["space"], described["arch"]) == ("nb201", ARCH)
    assert described["weights"].startswith("none in this file")
    assert described["preprocessing"] == digits.preprocessing()
    assert cli.main(["export", str(out), "--format", "torch-export", "--out", str(tmp_path / "m.pt2")]) == 0
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    trained = load_trained(out)
    eager = build_model("nb201", get_space("nb201").parse(ARCH), NetConfig(**trained["net"])).eval()
    eager.load_state_dict(trained["run"]["model"])
    # Digits as scikit-learn gives them (float 0..16) go in, the training's normalisation inside.
    raw = torch.from_numpy(load_digits()[0][:7]).float()[:, None]
    mean, std = torch.tensor(digits.mean), torch.tensor(digits.std)
    with torch.no_grad():
        assert torch.equal(loaded(raw.permute(0, 2, 3, 1)), eager(normalise(raw, mean, std)))


def test_export_published_architecture_and_onnx_needs_its_exporter(tmp_path):
    info = export("darts", "DARTS_V2", "json", tmp_path / "d.json")
    assert info["params"] > 0 and info["weights"].startswith("none in this file")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError) as err:
            export("nb201", ARCH, "onnx", tmp_path / "m.onnx")
        assert err.value.field == "format" and "pip install onnx" in str(err.value)
    with pytest.raises(ConfigError) as err:
        export("nb201", ARCH, "tflite", tmp_path / "m")
    assert err.value.field == "format"
