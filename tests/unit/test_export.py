"""`nas export`: models that take raw images and carry their preprocessing, checked the way a user
deploys them: PNG files decoded in a fresh process that imports only torch, onnxruntime and PIL."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller import cli
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.export import export, load_trained
from raynas.workers.nets import NetConfig, build_model

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
#: Small batches, so that a few epochs on 180 images learn something: an untrained network that
#: predicts one class whatever its input would score the same with or without normalisation.
TINY = ["--epochs", "3", "--batch-size", "32", "--channels", "4", "--layers", "1", "--num-threads", "1"]

#: What a deployment does: decode the files, stack them as [N, H, W, C] uint8, feed them. Labels
#: come from the folder names through the sidecar's class names, in the order the dataset lists them.
FRESH = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np
    import onnxruntime
    import torch
    from PIL import Image

    root, program_file, onnx_file = map(Path, sys.argv[1:4])
    names = json.loads(Path(f"{onnx_file}.json").read_text())["preprocessing"]["class_names"]
    images, labels = [], []
    for k, name in enumerate(names):
        for file in sorted((root / "test" / name).iterdir()):
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(k)
    images = np.stack(images)
    with torch.no_grad():
        by_torch = torch.export.load(program_file).module()(torch.from_numpy(images)).argmax(1).tolist()
    session = onnxruntime.InferenceSession(str(onnx_file))

    def onnx(batch):
        return np.concatenate([session.run(["logits"], {"images": images[i:i + batch]})[0]
                               for i in range(0, len(images), batch)]).argmax(1).tolist()

    print(json.dumps({"labels": labels, "torch": by_torch, "onnx1": onnx(1), "onnx7": onnx(7),
                      "metadata": session.get_modelmeta().custom_metadata_map,
                      "imported": sorted(m for m in sys.modules if m.split(".")[0] == "raynas")}))
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`nas train` on an image folder of CIFAR-10 PNGs: (the folder, the training's output)."""
    import datafiles

    base = tmp_path_factory.mktemp("export")
    root = datafiles.image_folder(base / "images", n_train=200, n_test=50)
    out = base / "train"
    assert cli.main(["train", "--space", "nb201", "--arch", ARCH, "--dataset", "image-folder", "--data", str(root),
                     *TINY, "--out", str(out)]) == 0
    return root, out


def _eager(out: Path) -> torch.nn.Module:
    checkpoint = load_trained(out)
    model = build_model("nb201", get_space("nb201").parse(ARCH), NetConfig(**checkpoint["net"])).eval()
    model.load_state_dict(checkpoint["run"]["model"])
    return model


@pytest.mark.slow
def test_exports_score_decoded_images_as_the_training_did_in_a_fresh_process(trained, tmp_path):
    root, out = trained
    result = json.loads((out / "result.json").read_text())
    for fmt, name in (("torch-export", "m.pt2"), ("onnx", "m.onnx")):
        assert cli.main(["export", str(out), "--format", fmt, "--out", str(tmp_path / name)]) == 0
    # Outside the repository, so that its folders do not shadow the installed package.
    done = subprocess.run([sys.executable, "-c", FRESH, str(root), str(tmp_path / "m.pt2"), str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["imported"] == []
    # The network the training scored, on the normalised test split, in the dataset's order.
    x, y = load_dataset("image-folder", root).tensors("test")
    with torch.no_grad():
        want = _eager(out)(x).argmax(1).tolist()
    assert seen["labels"] == y.tolist()
    assert seen["torch"] == seen["onnx1"] == seen["onnx7"] == want
    correct = sum(p == label for p, label in zip(want, seen["labels"]))
    assert correct / len(want) == result["test_acc"]
    # The accuracy says something: unnormalised pixels would have scored otherwise.
    with torch.no_grad():
        raw = _eager(out)(x * torch.tensor(result["preprocessing"]["std"])[:, None, None]
                          + torch.tensor(result["preprocessing"]["mean"])[:, None, None]).argmax(1).tolist()
    assert raw != want
    assert json.loads(seen["metadata"]["preprocessing"]) == result["preprocessing"]
    assert seen["metadata"]["arch"] == ARCH


@pytest.mark.slow
def test_nas_train_records_the_datas_preprocessing(trained):
    root, out = trained
    data = load_dataset("image-folder", root)
    result = json.loads((out / "result.json").read_text())
    assert result["preprocessing"] == load_trained(out)["preprocessing"] == json.loads(
        json.dumps(data.preprocessing()))
    assert result["preprocessing"]["class_names"][:2] == ["airplane", "automobile"]
    assert (result["dataset"], result["data_path"], result["dataset_options"]) == ("image-folder", str(root), {})


@pytest.mark.slow
def test_the_sidecar_and_the_json_export_say_what_they_hold(trained, tmp_path):
    root, out = trained
    preprocessing = load_trained(out)["preprocessing"]
    info = export("nb201", ARCH, "torch-export", tmp_path / "m.pt2", checkpoint=out)
    assert info["description"] == f"{tmp_path / 'm.pt2'}.json"
    sidecar = json.loads((tmp_path / "m.pt2.json").read_text())
    assert sidecar == {k: v for k, v in info.items() if k not in ("out", "description")}
    assert sidecar["preprocessing"] == preprocessing and sidecar["weights"].startswith("trained")
    assert sidecar["inputs"] == [{"name": "images", "shape": ["batch", 32, 32, 3], "dtype": "uint8",
                                  "layout": "NHWC"}]
    # The one layout said is the model's: the training's own tensors (NCHW) are not what goes in.
    assert "layout" not in sidecar["preprocessing"]["input"]
    assert sidecar["outputs"] == [{"name": "logits", "shape": ["batch", 10]}]

    assert cli.main(["export", str(out), "--format", "json", "--out", str(tmp_path / "a.json")]) == 0
    described = json.loads((tmp_path / "a.json").read_text())
    assert described["weights"].startswith("none in this file")
    assert str(out / "checkpoint.pt") in described["weights"]
    assert described["preprocessing"] == preprocessing and described["params"] == sidecar["params"]
    assert not (tmp_path / "a.json.json").exists()
    untrained = export("nb201", ARCH, "json", tmp_path / "b.json")
    assert untrained["weights"].startswith("none in this file") and untrained["preprocessing"] is None


def test_an_untrained_export_takes_the_same_layout(tmp_path):
    export("nb201", ARCH, "torch-export", tmp_path / "m.pt2", net=NetConfig(channels=4, layers=1))
    described = json.loads((tmp_path / "m.pt2.json").read_text())
    assert described["weights"].startswith("initialised") and described["preprocessing"] is None
    assert described["inputs"][0]["shape"] == ["batch", 32, 32, 3]
    model = torch.export.load(tmp_path / "m.pt2").module()
    assert model(torch.rand(5, 32, 32, 3)).shape == (5, 10)


def test_a_checkpoint_without_its_preprocessing_is_refused(tmp_path):
    # What nas train wrote before it recorded the preprocessing.
    torch.save({"epoch": 0, "space": "nb201", "arch": ARCH, "net": {}, "run": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        export("nb201", ARCH, "onnx", tmp_path / "m.onnx", checkpoint=tmp_path)
    assert err.value.field == "checkpoint" and "nas train" in str(err.value)


@pytest.mark.slow
def test_nas_train_of_a_run_trains_on_the_runs_data(trained, tmp_path):
    root, _ = trained
    run = tmp_path / "run"
    assert cli.main(["search", "--space", "nb201", "--strategy", "random", "--evaluations", "1", "--runtime", "local",
                     "--dataset", "image-folder", "--data", str(root), "--dataset-option", "max_train=100",
                     "--epochs", "1", "--channels", "4", "--layers", "1", "--evaluator-option", "num_threads=1",
                     "--out", str(run), "--quiet"]) == 0
    short = ["--epochs", "1", "--channels", "4", "--layers", "1", "--max-train-batches-per-epoch", "1"]
    assert cli.main(["train", "--run", str(run), *short, "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert (result["dataset"], result["data_path"], result["dataset_options"]) == (
        "image-folder", str(root), {"max_train": 100})
    # 100 training images and the 20 held out for validation train together; 50 test.
    assert result["train_samples"] == 120 and result["test_split"] == "test"
    assert result["config"]["num_threads"] == len(os.sched_getaffinity(0))
    # A nas train output retrains on its data too.
    assert cli.main(["train", "--run", str(tmp_path / "a"), *short, "--out", str(tmp_path / "d")]) == 0
    again = json.loads((tmp_path / "d" / "result.json").read_text())
    assert (again["dataset"], again["data_path"], again["dataset_options"], again["train_samples"]) == (
        "image-folder", str(root), {"max_train": 100}, 120)

    assert cli.main(["train", "--run", str(run), *short, "--dataset-option", "max_train=50", "--num-threads", "1",
                     "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["dataset_options"] == {"max_train": 50} and result["config"]["num_threads"] == 1
    # Another dataset leaves the run's path and options behind.
    assert cli.main(["train", "--run", str(run), *short, "--dataset", "digits", "--out", str(tmp_path / "c")]) == 0
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    assert (result["dataset"], result["data_path"], result["dataset_options"]) == ("digits", None, {})
