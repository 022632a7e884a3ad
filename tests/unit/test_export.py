"""`nas train` on your own data, and (to come) `nas export` of what it trained."""

import json
import os

import pytest

from raynas.controller import cli
from raynas.workers.datasets import load_dataset
from raynas.workers.export import load_trained

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
#: Small batches, so that a few epochs on 180 images learn something: an untrained network that
#: predicts one class whatever its input would score the same with or without normalisation.
TINY = ["--epochs", "3", "--batch-size", "32", "--channels", "4", "--layers", "1", "--num-threads", "1"]


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


def test_nas_train_records_the_datas_preprocessing(trained):
    root, out = trained
    data = load_dataset("image-folder", root)
    result = json.loads((out / "result.json").read_text())
    assert result["preprocessing"] == load_trained(out)["preprocessing"] == json.loads(
        json.dumps(data.preprocessing()))
    assert result["preprocessing"]["class_names"][:2] == ["airplane", "automobile"]
    assert (result["dataset"], result["data_path"], result["dataset_options"]) == ("image-folder", str(root), {})


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
